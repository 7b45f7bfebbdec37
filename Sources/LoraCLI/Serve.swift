import ArgumentParser
import Foundation
import LoRA
import LoraServer

/// `lora serve`: the OpenAI-compatible HTTP server (Sources/LoraServer).
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the model and its adapters over an OpenAI-compatible HTTP API.",
        discussion: """
            Endpoints: POST /v1/completions (model = the base's name or an adapter's; the extension field
            "adapters": [{"name", "scale"}] mixes several), GET /v1/models, GET /health, GET /metrics (Prometheus),
            POST /v1/load_lora_adapter and /v1/unload_lora_adapter (with --allow-adapter-loading), and a
            playground page at /. /v1/chat/completions answers 400: GPT-2 has no chat template.
            Every request of every adapter runs in one batched engine. SIGINT/SIGTERM: new requests get 503,
            running ones have --drain-timeout seconds to finish, then the server exits 0.
            """)

    @Option(help: "Model directory (default: the embedded model).") var model: String?
    @Option(help: "The base model's name in requests and /v1/models (default: the model directory's name).")
    var modelName: String?
    @Option(name: .customLong("adapter"), help: "An adapter to serve: NAME=DIR (a PEFT directory). Repeatable.")
    var adapters: [String] = []
    @Option(help: "Address to listen on (loopback by default).") var host = "127.0.0.1"
    @Option(help: "Port (0: a free one, printed on the listening line).") var port = 8080
    @Option(help: "Sequences generated at once (KV-cache slots).") var maxSequences = 8
    @Option(help: "New tokens per engine step (prompt chunks plus decode tokens).") var maxTokensPerStep = 256
    @Option(help: "Positions per sequence (0: the model's n_positions).") var context = 0
    @Option(help: "Sequences waiting for a slot; beyond them requests get 429 with Retry-After.") var maxQueue = 64
    @Option(help: "Request body limit in bytes (413 beyond).") var maxBodyBytes = 1 << 20
    @Option(help: "Tokens of one prompt at most (0: the context minus one).") var maxPromptTokens = 0
    @Option(help: "max_tokens at most (0: the context minus one).") var maxTokens = 0
    @Option(help: "n (choices per prompt) at most.") var maxN = 8
    @Option(help: "Require this key as 'Authorization: Bearer KEY' on /v1/ routes (default: $LORA_API_KEY, else none).")
    var apiKey: String?
    @Flag(help: "Enable /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --adapter-dir).")
    var allowAdapterLoading = false
    @Option(help: "The directory run-time loads resolve in; nothing outside it is read.") var adapterDir: String?
    @Option(help: "Seconds running requests may take to finish on SIGINT/SIGTERM before they are cancelled.")
    var drainTimeout = 10.0
    @OptionGroup var dtype: DTypeOption
    @OptionGroup var kvCache: KVCacheOption
    @OptionGroup var threads: ThreadOptions

    func parsedAdapters() throws -> [(name: String, path: String)] {
        try adapters.map { spec in
            guard let eq = spec.firstIndex(of: "="), eq != spec.startIndex, spec.index(after: eq) != spec.endIndex else {
                throw ValidationError("--adapter \(spec): expected NAME=DIR")
            }
            return (String(spec[..<eq]), String(spec[spec.index(after: eq)...]))
        }
    }

    func validate() throws {
        _ = try parsedAdapters()
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535 (got \(port))") }
        guard (1...1024).contains(maxSequences) else { throw ValidationError("--max-sequences must be in 1...1024 (got \(maxSequences))") }
        guard (1...65536).contains(maxTokensPerStep) else {
            throw ValidationError("--max-tokens-per-step must be in 1...65536 (got \(maxTokensPerStep))")
        }
        guard context >= 0 else { throw ValidationError("--context must be at least 0 (got \(context))") }
        guard (0...100_000).contains(maxQueue) else { throw ValidationError("--max-queue must be in 0...100000 (got \(maxQueue))") }
        guard (1024...(1 << 30)).contains(maxBodyBytes) else {
            throw ValidationError("--max-body-bytes must be in 1024...\(1 << 30) (got \(maxBodyBytes))")
        }
        guard maxPromptTokens >= 0 else { throw ValidationError("--max-prompt-tokens must be at least 0 (got \(maxPromptTokens))") }
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be at least 0 (got \(maxTokens))") }
        guard (1...128).contains(maxN) else { throw ValidationError("--max-n must be in 1...128 (got \(maxN))") }
        guard drainTimeout.isFinite, (0...3600).contains(drainTimeout) else {
            throw ValidationError("--drain-timeout must be in 0...3600 seconds (got \(drainTimeout))")
        }
        if allowAdapterLoading, adapterDir == nil {
            throw ValidationError("--allow-adapter-loading needs --adapter-dir DIR (loads resolve only inside it)")
        }
        if let key = apiKey, key.isEmpty { throw ValidationError("--api-key must not be empty") }
    }

    func run() throws {
        try LoRACommand.run {
            let dir = model ?? Defaults.modelDirectory
            let m = try loadModel(dir, dtype: dtype.dtype)
            try kvCache.apply(to: m)
            threads.apply()
            var o = ServerOptions()
            o.host = host
            o.port = port
            o.modelPath = dir
            o.modelName = modelName ?? URL(fileURLWithPath: dir).standardizedFileURL.lastPathComponent
            o.adapters = try parsedAdapters()
            o.engine.maxSequences = maxSequences
            o.engine.maxTokensPerStep = max(maxTokensPerStep, maxSequences)
            o.engine.contextPerSequence = context
            o.limits.maxQueued = maxQueue
            o.limits.maxBodyBytes = maxBodyBytes
            o.limits.maxPromptTokens = maxPromptTokens
            o.limits.maxTokens = maxTokens
            o.limits.maxN = maxN
            o.apiKey = apiKey ?? ProcessInfo.processInfo.environment["LORA_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
            o.allowAdapterLoading = allowAdapterLoading
            o.adapterDirectory = adapterDir
            o.drainSeconds = drainTimeout
            let options = o
            let done = DispatchSemaphore(value: 0)
            let failure = FailureBox()
            Task {
                do {
                    try await LoraServer.run(model: m, options: options) { host, port in
                        say("lora serve: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(port)")
                    }
                } catch { failure.error = error }
                done.signal()
            }
            done.wait()
            if let e = failure.error {
                if let e = e as? LoRAError { throw e }
                throw LoRAError.invalidArgument("\(e)")
            }
            say("lora serve: stopped")
        }
    }
}

final class FailureBox: @unchecked Sendable { var error: Error? }
