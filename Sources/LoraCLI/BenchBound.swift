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
///   layer forward (S = Q·Kᵀ, O = P·V), 4 more backward (dV, dP, dQ, dK), at
///   the rate sgemm reaches on one head's products over the whole sequence
///   ([T, 64]·[64, T] and [T, T]·[T, 64], a head per worker; liblora's own
///   blocks of 64 query rows, its softmax and its recomputed scores are not
///   counted, so the bound stays optimistic); the LoRA products are left
///   out (≈ 1%);
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

    /// One head's buffers for a worker: q, k, v, o, dO, dq, dk, dv [T, 64],
    /// lse [T], and two [T, T] score areas (S, dS).
    struct HeadBuffers {
        let vectors: FloatBlock
        let squares: FloatBlock
        let T: Int
        let hd: Int
        init(T: Int, hd: Int) throws {
            vectors = try FloatBlock(count: 8 * T * hd + T)
            squares = try FloatBlock(count: max(2 * T * T, attentionBackwardScratch(T: T, L: T, hd: hd)))
            for b in [vectors, squares] { for i in 0..<b.count { b.base[i] = Float(i % 7) * 0.01 } }
            self.T = T
            self.hd = hd
        }
        func at(_ i: Int) -> FloatPtr { vectors.base + i * T * hd }
        var q: FloatPtr { at(0) }
        var k: FloatPtr { at(1) }
        var v: FloatPtr { at(2) }
        var o: FloatPtr { at(3) }
        var dO: FloatPtr { at(4) }
        var dq: FloatPtr { at(5) }
        var dk: FloatPtr { at(6) }
        var dv: FloatPtr { at(7) }
        var lse: FloatPtr { at(8) }
        var S: FloatPtr { squares.base }
        var dS: FloatPtr { squares.base + T * T }
    }

    /// Best time of `body` run on `threads` workers at once, each on its own HeadBuffers.
    static func perHead(_ c: GPT2Config, T: Int, threads: Int, _ body: (HeadBuffers) -> Void) throws -> (seconds: Double, workers: Int) {
        let saved = BLAS.threads
        BLAS.threads = threads
        defer { BLAS.threads = saved }
        let workers = max(1, min(threads, BLAS.threads))
        let buffers = try (0..<workers).map { _ in try HeadBuffers(T: T, hd: c.headDim) }
        return (best(3) { parallelChunks(workers) { w, _ in body(buffers[w]) } }, workers)
    }

    /// sgemm's FLOP/s on attention's shapes: each worker runs one head's
    /// full products over T positions — S = Q·Kᵀ and O = P·V, with
    /// `backward` also dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K and dK = dSᵀ·Q —
    /// single-threaded, as liblora spreads heads over the workers.
    static func attentionRate(_ c: GPT2Config, T: Int, threads: Int, backward: Bool) throws -> Double {
        let hd = c.headDim
        func product(_ tA: Bool, _ tB: Bool, _ M: Int, _ N: Int, _ K: Int, _ A: FloatPtr, _ B: FloatPtr, _ C: FloatPtr, _ beta: Float) {
            gemm(
                transA: tA, transB: tB, M: M, N: N, K: K, alpha: 1, A: A, lda: tA ? M : K, B: B, ldb: tB ? K : N, beta: beta,
                C: C, ldc: N, fewRows: false)
        }
        let (t, workers) = try perHead(c, T: T, threads: threads) { h in
            product(false, true, T, T, hd, h.q, h.k, h.S, 0)
            product(false, false, T, hd, T, h.S, h.v, h.o, 0)
            if backward {
                product(true, false, T, hd, T, h.S, h.dO, h.dv, 1)
                product(false, true, T, T, hd, h.dO, h.v, h.dS, 0)
                product(false, false, T, hd, T, h.dS, h.k, h.dq, 1)
                product(true, false, T, hd, T, h.dS, h.q, h.dk, 1)
            }
        }
        return Double(workers * (backward ? 6 : 2)) * 2 * Double(T * T * hd) / t
    }

    /// liblora's own causal attention (attentionForward, then
    /// attentionBackward) on one head per worker over T positions, in
    /// FLOP/s of the causal work the bound counts (6 products of
    /// 2·(T/2)·T·64; its recomputed scores not counted): how far attention
    /// sits below sgemm's rate on its shapes.
    static func libloraAttentionRate(_ c: GPT2Config, T: Int, threads: Int) throws -> Double {
        let hd = c.headDim
        let (t, workers) = try perHead(c, T: T, threads: threads) { h in
            attentionForward(
                out: h.o, ldo: hd, probs: h.S, q: h.q, ldq: hd, k: h.k, ldk: hd, v: h.v, ldv: hd, T: T, L: T, past: 0, hd: hd,
                scale: 0.125, keyMask: nil, lse: h.lse)
            attentionBackward(
                dq: h.dq, ldq: hd, dk: h.dk, dv: h.dv, ldk: hd, scratch: h.S, dout: h.dO, ldo: hd, lse: h.lse, q: h.q, k: h.k,
                v: h.v, T: T, L: T, past: 0, hd: hd, scale: 0.125, keyMask: nil)
        }
        return Double(workers * 6) * Double(T * T * hd) / t
    }

    /// Prefill bound in tokens/s for one sequence of M tokens, with per-shape
    /// GFLOP/s (and "attention": sgemm's rate on its head products).
    static func prefill(_ c: GPT2Config, M: Int, threads: Int) throws -> (tokensPerS: Double, shapes: [String: Double]) {
        let times = try productTimes(c, M: M, threads: threads, backward: false)
        let attention = try attentionRate(c, T: M, threads: threads, backward: false)
        let total =
            times.reduce(0.0) { $0 + $1.1 * Double($1.0.perModel) }
            + attentionFLOPs(c, M: M, T: M, products: 2) / attention
        var rates: [String: Double] = [:]
        for (s, t, _) in times { rates[s.name] = 2 * Double(M * s.K * s.N) / t / 1e9 }
        rates["attention"] = attention / 1e9
        return (Double(M) / total, rates)
    }

    /// LoRA training bound in tokens/s for a step of `batch` sequences of
    /// `block` tokens, and sgemm's FLOP/s on attention's head products.
    static func training(_ c: GPT2Config, batch: Int, block: Int, threads: Int) throws -> (tokensPerS: Double, attention: Double) {
        let M = batch * block
        let times = try productTimes(c, M: M, threads: threads, backward: true)
        let attention = try attentionRate(c, T: block, threads: threads, backward: true)
        let total =
            times.reduce(0.0) { $0 + ($1.1 + $1.2) * Double($1.0.perModel) }
            + attentionFLOPs(c, M: M, T: block, products: 6) / attention
        return (Double(M) / total, attention)
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
