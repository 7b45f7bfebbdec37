import Foundation
import HTTPTypes
import Hummingbird
import LoRA

/// The endpoints. /v1/ routes need the API key when one is set; /, /health
/// and /metrics do not.
enum Routes {
    static func router(_ state: ServerState) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: CountingMiddleware(metrics: state.metrics))
        router.add(middleware: ErrorMiddleware())
        if let key = state.options.apiKey { router.add(middleware: APIKeyMiddleware(key: key)) }

        router.get("/") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-cache"],
                body: .init(byteBuffer: ByteBuffer(string: Playground.html)))
        }
        router.get("/health") { _, _ in
            if state.scheduler.isDraining {
                throw APIError(.serviceUnavailable, "the server is shutting down", type: "server_error", code: "shutting_down")
            }
            return jsonResponse(.object(JSONObject([("status", .string("ok"))])))
        }
        router.get("/metrics") { _, _ in
            state.metrics.adaptersLoaded.record(state.registry.count)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: state.metrics.text())))
        }
        router.get("/v1/models") { _, _ in jsonResponse(models(state)) }
        router.post("/v1/completions") { request, _ in try await CompletionResponder(state: state).respond(request) }
        router.post("/v1/chat/completions") { request, _ -> Response in
            var request = request
            _ = try await state.collectBody(&request)
            throw APIError(
                .badRequest,
                "chat completions are not supported: GPT-2 has no chat template; use /v1/completions with a prompt",
                code: "chat_template_missing")
        }
        router.post("/v1/load_lora_adapter") { request, _ in try await load(request, state) }
        router.post("/v1/unload_lora_adapter") { request, _ in try await unload(request, state) }
        return router
    }

    /// vLLM's list: the base, then each adapter with `root` its directory and `parent` the base.
    static func models(_ state: ServerState) -> JSONValue {
        func entry(_ id: String, created: Int, root: String, parent: String?) -> JSONValue {
            .object(
                JSONObject([
                    ("id", .string(id)), ("object", .string("model")), ("created", .number(JSONNumber(created))),
                    ("owned_by", .string("lora")), ("root", .string(root)), ("parent", parent.map { .string($0) } ?? .null),
                    ("max_model_len", .number(JSONNumber(state.context))),
                ]))
        }
        let r = state.registry
        var list = [entry(r.baseName, created: r.created, root: r.modelPath, parent: nil)]
        for a in r.adapters { list.append(entry(a.name, created: a.created, root: a.path, parent: r.baseName)) }
        return .object(JSONObject([("object", .string("list")), ("data", .array(list))]))
    }

    static func checkLoading(_ state: ServerState) throws(APIError) {
        guard state.options.allowAdapterLoading else {
            throw APIError(
                .notFound, "adapter loading is disabled: start the server with --allow-adapter-loading --adapter-dir DIR",
                code: "not_found")
        }
    }

    static func load(_ request: Request, _ state: ServerState) async throws -> Response {
        try checkLoading(state)
        var request = request
        let o = try JSONBody.object(try await state.collectBody(&request))
        let name = try o.string("lora_name", required: true) ?? ""
        let path = try o.string("lora_path", required: true) ?? ""
        try AdapterRegistry.checkName(name, param: "lora_name")
        let dir = try state.registry.resolveInside(path)
        let model = state.model
        // File reading off the event loop.
        let adapter: Adapter = try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async {
                c.resume(
                    with: Result {
                        do { return try Adapter.load(directory: dir, modelConfig: model.config, name: name) } catch {
                            throw APIError(.badRequest, "cannot load the adapter: \(error)", param: "lora_path", code: "invalid_adapter")
                        }
                    })
            }
        }
        try state.registry.add(name: name, adapter: adapter, path: dir)
        state.metrics.adaptersLoaded.record(state.registry.count)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
    }

    static func unload(_ request: Request, _ state: ServerState) async throws -> Response {
        try checkLoading(state)
        var request = request
        let o = try JSONBody.object(try await state.collectBody(&request))
        let name = try o.string("lora_name", required: true) ?? ""
        try state.registry.remove(name: name)
        state.metrics.adaptersLoaded.record(state.registry.count)
        return Response(
            status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
    }
}

/// `Authorization: Bearer KEY` on /v1/ routes (compared in constant time).
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path.hasPrefix("/v1/") || request.uri.path == "/v1" {
            let given = Array((request.headers[.authorization] ?? "").utf8)
            let wanted = Array(("Bearer " + key).utf8)
            var diff = given.count ^ wanted.count
            for i in 0..<wanted.count { diff |= Int(wanted[i] ^ (i < given.count ? given[i] : 0)) }
            guard diff == 0 else {
                throw APIError(
                    .unauthorized, "a valid API key is required: Authorization: Bearer <key>", code: "invalid_api_key")
            }
        }
        return try await next(request, context)
    }
}

/// Counts answered requests by route (the matched route's pattern, so
/// unknown paths cannot grow the label set) and status.
struct CountingMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let response = try await next(request, context)
        metrics.countRequest(endpoint: context.endpointPath ?? "unmatched", status: response.status.code)
        return response
    }
}
