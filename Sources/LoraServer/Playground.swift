/// The page served at `/` (the playground comes in its own commit).
enum Playground {
    static let html = #"""
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>lora serve</title></head>
        <body><p>lora serve: POST /v1/completions, GET /v1/models, GET /health, GET /metrics.</p></body></html>
        """#
}
