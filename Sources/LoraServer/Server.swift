import Foundation
import HTTPTypes
import Hummingbird
import LoRA
import Logging
import NIOCore
import ServiceLifecycle

/// How `lora serve` runs (its command-line options).
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    /// 0 picks a free port (printed on the listening line).
    public var port = 8080
    /// The base model's name in `model` fields and `/v1/models`.
    public var modelName = "base"
    public var modelPath = ""
    /// NAME=DIR adapters loaded at start.
    public var adapters: [(name: String, path: String)] = []
    public var engine = EngineParams()
    public var limits = ServerLimits()
    /// Required as `Authorization: Bearer KEY` on /v1/ routes when set.
    public var apiKey: String?
    /// Enables /v1/load_lora_adapter and /v1/unload_lora_adapter.
    public var allowAdapterLoading = false
    /// Run-time loads resolve inside this directory only.
    public var adapterDirectory: String?
    /// On SIGINT/SIGTERM: seconds running requests may take to finish before they are cancelled.
    public var drainSeconds = 10.0

    public init() {}
}

/// What every handler shares.
final class ServerState: Sendable {
    let model: Model
    let options: ServerOptions
    let registry: AdapterRegistry
    let scheduler: Scheduler
    let metrics: ServerMetrics
    let context: Int
    var limits: ServerLimits { options.limits }

    init(model: Model, options: ServerOptions, registry: AdapterRegistry, scheduler: Scheduler, metrics: ServerMetrics) {
        self.model = model
        self.options = options
        self.registry = registry
        self.scheduler = scheduler
        self.metrics = metrics
        context = scheduler.engine.context
    }

    /// The request body, at most `maxBodyBytes` (413 beyond).
    func collectBody(_ request: inout Request) async throws -> ByteBuffer {
        do { return try await request.collectBody(upTo: limits.maxBodyBytes) } catch is NIOTooManyBytesError {
            throw APIError(
                .contentTooLarge, "the request body is larger than \(limits.maxBodyBytes) bytes", code: "body_too_large")
        }
    }
}

public enum LoraServer {
    /// Loads the adapters, starts the engine's scheduler thread and serves
    /// until SIGINT or SIGTERM; then refuses new requests (503), lets running
    /// ones finish for `drainSeconds`, cancels the rest, closes and returns.
    /// `onListening(host, port)` is called once the socket is bound.
    public static func run(model: Model, options: ServerOptions, onListening: @escaping @Sendable (String, Int) -> Void) async throws {
        let metrics = ServerMetrics()
        let registry = AdapterRegistry(
            model: model, baseName: options.modelName, modelPath: options.modelPath,
            adapterDirectory: options.adapterDirectory)
        for a in options.adapters {
            let adapter = try Adapter.load(directory: a.path, modelConfig: model.config, name: a.name)
            do { try registry.add(name: a.name, adapter: adapter, path: a.path) } catch {
                throw LoRAError.invalidArgument("--adapter \(a.name)=\(a.path): \(error.message)")
            }
        }
        metrics.adaptersLoaded.record(registry.count)
        let engine = try Engine(model: model, params: options.engine)
        let scheduler = Scheduler(engine: engine, maxQueued: options.limits.maxQueued, metrics: metrics)
        scheduler.start()
        defer { scheduler.stop() }
        let state = ServerState(model: model, options: options, registry: registry, scheduler: scheduler, metrics: metrics)

        var logger = Logger(label: "lora-serve")
        logger.logLevel = .warning
        let app = Application(
            router: Routes.router(state),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "lora"),
            onServerRunning: { channel in
                onListening(options.host, channel.localAddress?.port ?? options.port)
            },
            logger: logger)
        let drain = DrainService(scheduler: scheduler, seconds: options.drainSeconds)
        // Shutdown runs in reverse order: the drain first, then the HTTP server.
        let group = ServiceGroup(
            configuration: .init(services: [app, drain], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

/// On graceful shutdown: new requests get 503, running ones have `seconds`
/// to finish, then the rest are cancelled (their streams end with
/// finish_reason "abort"); then the HTTP server stops.
struct DrainService: Service {
    let scheduler: Scheduler
    let seconds: Double

    func run() async throws {
        try? await gracefulShutdown()
        scheduler.beginDrain()
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while scheduler.pending > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if scheduler.pending > 0 { scheduler.cancelAll() }
        // The cancelled ones end at the next step; give their handlers a moment to answer.
        let end = ContinuousClock.now + .seconds(2)
        while scheduler.pending > 0, ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(10)) }
    }
}
