import CLoraSupport
import Foundation
import Testing

@testable import LoRA

/// The kernels split products, element-wise work and attention heads across
/// worker threads (OpenBLAS itself runs single-threaded). Splits follow
/// outputs only, never a reduction, so results must not depend on the thread
/// count. These tests change the process-wide thread count: serialized.
///
/// One exception, measured on an AMD EPYC Zen 2 (2026-12-03): OpenBLAS
/// 0.3.21's AVX2 sgemm kernels ("Zen", "Haswell") give different bits for
/// the same output when a product is split by rows or by columns (every
/// split of GPT-2-like shapes tried differed, relative ~1e-6), so with
/// OpenBLAS running the products (LORA_SGEMM=openblas, or no libdnnl2) on
/// a CPU without AVX-512, products of more than 128 rows depend on the
/// thread count at that level. oneDNN's sgemm (the default) and OpenBLAS's
/// AVX-512 kernels do not; the model-level checks below run where one of
/// them runs the products.
@Suite(.serialized) struct ParallelTests {
    static let sgemmSplitInvariant = lb_sgemm_is_onednn() != 0 || lb_cpu_has_avx512() != 0

    /// Runs `body` with `n` worker threads, restoring the previous count.
    func withThreads<T>(_ n: Int, _ body: () throws -> T) rethrows -> T {
        let before = BLAS.threads
        BLAS.threads = n
        defer { BLAS.threads = before }
        return try body()
    }

    @Test(arguments: [false, true], [false, true])
    func splitProductsMatchDoublePrecision(transA: Bool, transB: Bool) {
        // Large enough to be split (M·N·K ≥ 2^20), split along M then along N, odd sizes.
        for (M, N, K) in [(300, 45, 97), (37, 333, 101), (129, 129, 65)] {
            var rng = SplitMix64(seed: UInt64(M * N))
            let a = (0..<M * K).map { _ in rng.nextFloat() - 0.5 }
            let b = (0..<K * N).map { _ in rng.nextFloat() - 0.5 }
            var c = (0..<M * N).map { _ in rng.nextFloat() - 0.5 }
            let c0 = c
            let lda = transA ? M : K
            let ldb = transB ? K : N
            withThreads(3) {
                gemm(
                    transA: transA, transB: transB, M: M, N: N, K: K, alpha: 0.75, A: a, lda: lda, B: b, ldb: ldb,
                    beta: 0.5, C: &c, ldc: N)
            }
            var worst = 0.0
            for m in 0..<M {
                for n in 0..<N {
                    var s = 0.0
                    for k in 0..<K {
                        let x = Double(transA ? a[k * M + m] : a[m * K + k])
                        let y = Double(transB ? b[n * K + k] : b[k * N + n])
                        s += x * y
                    }
                    worst = max(worst, abs(0.75 * s + 0.5 * Double(c0[m * N + n]) - Double(c[m * N + n])))
                }
            }
            #expect(worst < 1e-4, "M \(M) N \(N) K \(K): max error \(worst)")
        }
    }

    @Test func splitMatrixVectorProductsMatchDoublePrecision() {
        let rows = 513
        let cols = 401
        var rng = SplitMix64(seed: 9)
        let a = (0..<rows * cols).map { _ in rng.nextFloat() - 0.5 }
        let x = (0..<max(rows, cols)).map { _ in rng.nextFloat() - 0.5 }
        for transA in [false, true] {
            let outCount = transA ? cols : rows
            var y = [Float](repeating: 1, count: outCount)
            withThreads(2) { gemv(transA: transA, rows: rows, cols: cols, alpha: 2, A: a, lda: cols, x: x, beta: 0.25, y: &y) }
            var worst = 0.0
            for o in 0..<outCount {
                var s = 0.0
                for i in 0..<(transA ? rows : cols) {
                    s += Double(transA ? a[i * cols + o] : a[o * cols + i]) * Double(x[i])
                }
                worst = max(worst, abs(2 * s + 0.25 - Double(y[o])))
            }
            #expect(worst < 1e-4, "transA \(transA): max error \(worst)")
        }
    }

    /// A model big enough that every kernel splits: n_embd 256, 5 heads of 51 (odd), 130 tokens.
    func mediumModel(dtype: WeightDType = .f32) throws -> Model {
        var c = GPT2Config()
        c.nEmbd = 255; c.nHead = 5; c.nLayer = 2; c.vocabSize = 1000; c.nPositions = 160
        return try Model.random(config: c, seed: 5, std: 0.15, dtype: dtype)
    }

    /// Also on reduced-precision bases: their products of many rows run the
    /// packed GEMM (OpenBLAS) or converted panels (oneDNN, where it runs).
    @Test(.enabled(if: sgemmSplitInvariant), arguments: [WeightDType.f32, .bf16, .f16, .q8_0])
    func logitsDoNotDependOnTheThreadCount(dtype: WeightDType) throws {
        let model = try mediumModel(dtype: dtype)
        var rng = SplitMix64(seed: 1)
        let ids = (0..<130).map { _ in TokenID(rng.next() % 1000) }
        let one = try withThreads(1) { try model.logits(ids) }
        for n in [2, 3] {
            let many = try withThreads(n) { try model.logits(ids) }
            let worst = zip(one, many).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= 1e-5, "\(n) threads: max difference \(worst)")
        }
    }

    /// Also with GPT-2's dropouts: their masks are drawn per element from a hash.
    @Test(.enabled(if: sgemmSplitInvariant), arguments: [(WeightDType.f32, false), (.bf16, false), (.f32, true)])
    func trainingDoesNotDependOnTheThreadCount(dtype: WeightDType, modelDropout: Bool) throws {
        let model = try mediumModel(dtype: dtype)
        var rng = SplitMix64(seed: 2)
        let batch = (0..<3).map { _ in (0..<64).map { _ in TokenID(rng.next() % 1000) } }
        func run(threads: Int) throws -> (losses: [Double], weights: [Float]) {
            try withThreads(threads) {
                var lc = LoRAConfig()
                lc.r = 4; lc.targetModules = .names(["c_attn", "c_proj", "c_fc"])
                let adapter = try Adapter(config: lc, modelConfig: model.config)
                var r = SplitMix64(seed: 3)
                for i in 0..<adapter.params.count { adapter.params.base[i] = (r.nextFloat() - 0.5) * 0.2 }
                var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 64; cfg.learningRate = 1e-2
                cfg.modelDropout = modelDropout
                let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
                let losses = try (0..<3).map { _ in try trainer.step(ids: batch) }
                return (losses, Array(adapter.params.buffer))
            }
        }
        let one = try run(threads: 1)
        let two = try run(threads: 2)
        for (a, b) in zip(one.losses, two.losses) { #expect(abs(a - b) <= 1e-5 * abs(a), "loss \(a) vs \(b)") }
        let worst = zip(one.weights, two.weights).map { abs($0 - $1) }.max() ?? 0
        #expect(worst <= 1e-6, "adapter weights differ by \(worst)")
    }
}
