import Foundation
import LoRA

/// What this machine can do on GPT-2's products, measured by the same
/// kernels liblora runs, so that every benchmark figure can also be given as
/// a fraction of its bound:
/// - prefill: the time of one forward pass's products (the four Conv1D
///   shapes × layers and the LM head) at M = the prompt's tokens;
/// - LoRA training: those products plus the backward data-gradient
///   products (dX = dY·Wᵀ, same FLOPs), at M = batch × block;
/// - causal attention in both: 2 products of 2·(T/2)·C FLOPs per token and
///   layer forward, 4 more backward (dP, dV, dQ, dK), at the mean rate of
///   the measured products (attention's 64-wide heads run slower, so the
///   bound stays optimistic); the LoRA products are left out (≈ 1%);
/// - decode: one sweep of every weight matrix by the decode GEMV (bytes
///   read per token / time), i.e. the memory bandwidth as decode sees it.
struct MachineBound {
    struct Shape { let name: String; let K: Int; let N: Int; let perModel: Int }

    static func shapes(_ c: GPT2Config) -> [Shape] {
        [
            Shape(name: "c_attn", K: c.nEmbd, N: 3 * c.nEmbd, perModel: c.nLayer),
            Shape(name: "attn.c_proj", K: c.nEmbd, N: c.nEmbd, perModel: c.nLayer),
            Shape(name: "mlp.c_fc", K: c.nEmbd, N: c.innerSize, perModel: c.nLayer),
            Shape(name: "mlp.c_proj", K: c.innerSize, N: c.nEmbd, perModel: c.nLayer),
            Shape(name: "lm_head", K: c.nEmbd, N: c.vocabSize, perModel: 1),
        ]
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

    /// Best of `repeats` timings of `body`.
    static func best(_ repeats: Int, _ body: () -> Void) -> Double {
        body()  // warm-up (first touch, code paths)
        var t = Double.infinity
        for _ in 0..<repeats { let t0 = now(); body(); t = min(t, now() - t0) }
        return t
    }

    /// Seconds of each shape's product at M rows (forward [M,K]·[K,N], and
    /// with `backward` also the data gradient [M,N]·[K,N]ᵀ), on `threads` workers.
    static func productTimes(_ c: GPT2Config, M: Int, threads: Int, backward: Bool) throws -> [(Shape, Double, Double)] {
        let saved = BLAS.threads
        BLAS.threads = threads
        defer { BLAS.threads = saved }
        var out: [(Shape, Double, Double)] = []
        for s in shapes(c) {
            let a = try FloatBlock(count: M * max(s.K, s.N))
            let w = try FloatBlock(count: s.K * s.N)
            let y = try FloatBlock(count: M * max(s.K, s.N))
            for i in 0..<a.count { a.base[i] = Float(i % 7) * 0.01 }
            for i in 0..<w.count { w.base[i] = Float(i % 5) * 0.01 }
            let fwd = best(3) {
                gemm(
                    transA: false, transB: false, M: M, N: s.N, K: s.K, alpha: 1, A: a.base, lda: s.K,
                    B: w.base, ldb: s.N, beta: 0, C: y.base, ldc: s.N)
            }
            let bwd =
                backward
                ? best(3) {
                    gemm(
                        transA: false, transB: true, M: M, N: s.K, K: s.N, alpha: 1, A: a.base, lda: s.N,
                        B: w.base, ldb: s.N, beta: 0, C: y.base, ldc: s.K)
                } : 0
            out.append((s, fwd, bwd))
        }
        return out
    }

    /// Causal attention FLOPs of M tokens in sequences of T: `products`
    /// products of 2·(T/2)·C per token and layer.
    static func attentionFLOPs(_ c: GPT2Config, M: Int, T: Int, products: Int) -> Double {
        Double(products) * 2 * Double(T) / 2 * Double(c.nEmbd) * Double(c.nLayer) * Double(M)
    }

    /// Seconds of `flops` at the mean rate of the measured products.
    static func atMeanRate(_ flops: Double, _ times: [(Shape, Double, Double)], M: Int, backward: Bool) -> Double {
        let f = times.reduce(0.0) { $0 + 2 * Double(M * $1.0.K * $1.0.N * $1.0.perModel) * (backward ? 2 : 1) }
        let t = times.reduce(0.0) { $0 + ($1.1 + $1.2) * Double($1.0.perModel) }
        return flops / (f / t)
    }

    /// Prefill bound in tokens/s for one sequence of M tokens, with per-shape GFLOP/s.
    static func prefill(_ c: GPT2Config, M: Int, threads: Int) throws -> (tokensPerS: Double, shapes: [String: Double]) {
        let times = try productTimes(c, M: M, threads: threads, backward: false)
        let total =
            times.reduce(0.0) { $0 + $1.1 * Double($1.0.perModel) }
            + atMeanRate(attentionFLOPs(c, M: M, T: M, products: 2), times, M: M, backward: false)
        var rates: [String: Double] = [:]
        for (s, t, _) in times { rates[s.name] = 2 * Double(M * s.K * s.N) / t / 1e9 }
        return (Double(M) / total, rates)
    }

    /// LoRA training bound in tokens/s for a step of `batch` sequences of `block` tokens.
    static func training(_ c: GPT2Config, batch: Int, block: Int, threads: Int) throws -> Double {
        let M = batch * block
        let times = try productTimes(c, M: M, threads: threads, backward: true)
        let total =
            times.reduce(0.0) { $0 + ($1.1 + $1.2) * Double($1.0.perModel) }
            + atMeanRate(attentionFLOPs(c, M: M, T: block, products: 6), times, M: M, backward: true)
        return Double(M) / total
    }

    /// Decode bound: one GEMV sweep of every weight matrix of `model` (the
    /// bytes a token reads). Returns tokens/s and GB/s.
    static func decode(_ model: Model) throws -> (tokensPerS: Double, gbPerS: Double) {
        let c = model.config
        let w = model.weights
        let x = try FloatBlock(count: max(c.nEmbd, c.innerSize))
        let y = try FloatBlock(count: max(c.vocabSize, c.innerSize, 3 * c.nEmbd))
        for i in 0..<x.count { x.base[i] = 0.01 }
        let t = best(5) {
            for l in w.layers {
                for m in [l.attnW, l.attnProjW, l.fcW, l.mlpProjW] {
                    baseMatmul(transW: false, M: 1, N: m.cols, K: m.rows, A: x.base, lda: m.rows, W: m, beta: 0, C: y.base, ldc: m.cols)
                }
            }
            let h = w.lmHead
            baseMatmul(transW: true, M: 1, N: h.rows, K: h.cols, A: x.base, lda: h.cols, W: h, beta: 0, C: y.base, ldc: h.rows)
        }
        // Bytes a token reads: the weights' and, for Q8_0, the scales'.
        let matrices = w.layers.flatMap { [$0.attnW, $0.attnProjW, $0.fcW, $0.mlpProjW] } + [w.lmHead]
        let bytes = Double(matrices.reduce(0) { $0 + $1.dataBytes + 2 * $1.scaleCount })
        return (1 / t, bytes / t / 1e9)
    }
}
