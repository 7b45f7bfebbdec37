import CoreMetrics
import Foundation
import Metrics
import Prometheus

/// The server's metrics, recorded through swift-metrics into one
/// swift-prometheus registry that `GET /metrics` prints in Prometheus text
/// format. Names follow Prometheus' conventions (`_total`, `_seconds`).
final class ServerMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory

    let promptTokens: CoreMetrics.Counter
    let generatedTokens: CoreMetrics.Counter
    let running: CoreMetrics.Gauge
    let waiting: CoreMetrics.Gauge
    let adaptersLoaded: CoreMetrics.Gauge
    let kvSlotsUsed: CoreMetrics.Gauge
    let kvSlotsTotal: CoreMetrics.Gauge
    let cancelled: CoreMetrics.Counter
    let rejected: CoreMetrics.Counter
    let timeToFirstToken: CoreMetrics.Timer
    let timePerOutputToken: CoreMetrics.Timer

    init() {
        registry = PrometheusCollectorRegistry()
        var f = PrometheusMetricsFactory(registry: registry)
        // Latencies of a small CPU model: 1 ms to 30 s.
        let buckets: [Duration] = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
            .milliseconds(100), .milliseconds(200), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5),
            .seconds(10), .seconds(30),
        ]
        f.defaultDurationHistogramBuckets = buckets
        factory = f
        promptTokens = CoreMetrics.Counter(label: "lora_prompt_tokens_total", factory: f)
        generatedTokens = CoreMetrics.Counter(label: "lora_generated_tokens_total", factory: f)
        running = CoreMetrics.Gauge(label: "lora_requests_running", factory: f)
        waiting = CoreMetrics.Gauge(label: "lora_requests_waiting", factory: f)
        adaptersLoaded = CoreMetrics.Gauge(label: "lora_adapters_loaded", factory: f)
        kvSlotsUsed = CoreMetrics.Gauge(label: "lora_kv_slots_used", factory: f)
        kvSlotsTotal = CoreMetrics.Gauge(label: "lora_kv_slots_total", factory: f)
        cancelled = CoreMetrics.Counter(label: "lora_sequences_cancelled_total", factory: f)
        rejected = CoreMetrics.Counter(label: "lora_requests_rejected_total", dimensions: [("reason", "queue_full")], factory: f)
        timeToFirstToken = CoreMetrics.Timer(label: "lora_time_to_first_token_seconds", factory: f)
        timePerOutputToken = CoreMetrics.Timer(label: "lora_time_per_output_token_seconds", factory: f)
    }

    /// Counts one answered HTTP request by route and status.
    func countRequest(endpoint: String, status: Int) {
        CoreMetrics.Counter(
            label: "lora_http_requests_total", dimensions: [("endpoint", endpoint), ("status", String(status))],
            factory: factory
        ).increment()
    }

    func text() -> String { registry.emitToString() }
}
