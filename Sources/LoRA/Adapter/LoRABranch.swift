// The LoRA branch beside a frozen GPT-2 Conv1D, and what runs it in a
// forward or backward pass. Everything a branch computes lives in
// `LoRABranch`: forward, backward, the dropout mask and ΔW for merging. A
// new variant (DoRA's magnitude, per-row batched adapters) extends that type.

/// One adapted module: its place, rank, scaling and where A and B live.
public struct LoRASlot: Sendable, Equatable {
    public let layer: Int
    public let target: LoRATarget
    /// PEFT's module name, e.g. `transformer.h.0.attn.c_attn`.
    public let moduleName: String
    public let r: Int
    public let alpha: Double
    /// alpha / r, or alpha / √r with rsLoRA.
    public let scaling: Float
    public let inFeatures: Int
    public let outFeatures: Int
    /// A [r, in] then B [out, r] in the parameter block.
    public let offsetA: Int
    public let offsetB: Int
    public var countA: Int { r * inFeatures }
    public var countB: Int { outFeatures * r }
}

/// The branch of one adapted module (PEFT's `lora.Linear`, for GPT-2's
/// Conv1D whose weight is [in, out]):
///
///     y[n, out] += scale · s · (dropout(x)[n, in] · Aᵀ) · Bᵀ,    A [r, in], B [out, r]
///
/// with s = alpha/r (alpha/√r with rsLoRA) and `scale` the user's attachment scale.
struct LoRABranch {
    let slot: LoRASlot
    /// [r, in]
    let A: FloatPtr
    /// [out, r]
    let B: FloatPtr
    /// The slot's index in its adapter (it seeds the dropout mask).
    let index: Int

    /// u[n, r] = x[n, in]·Aᵀ;  y[n, out] += scale·s · u·Bᵀ.
    /// x is the branch input after dropout; u is kept for backward in training.
    func forward(x: ConstFloatPtr, y: FloatPtr, n: Int, scale: Float, u: FloatPtr) {
        let s = slot
        if n == 1 {
            // One row (decode, and each sequence of the engine's segments of
            // one): two matrix–vector products, cheaper than sgemm at M = 1
            // (see matmulForward); the engine runs ~1,500 of these a step with
            // 16 distinct adapters.
            // The scale goes on u (r values), so both products run on
            // liblora's kernels, which take alpha = 1 only.
            gemv(transA: false, rows: s.r, cols: s.inFeatures, alpha: 1, A: A, lda: s.inFeatures, x: x, beta: 0, y: u)
            let alpha = scale * s.scaling
            withUnsafeTemporaryAllocation(of: Float.self, capacity: s.r) { su in
                for i in 0..<s.r { su[i] = alpha * u[i] }
                gemv(transA: false, rows: s.outFeatures, cols: s.r, alpha: 1, A: B, lda: s.r, x: su.baseAddress!, beta: 1, y: y)
            }
            return
        }
        gemm(
            transA: false, transB: true, M: n, N: s.r, K: s.inFeatures, alpha: 1,
            A: x, lda: s.inFeatures, B: A, ldb: s.inFeatures, beta: 0, C: u, ldc: s.r)
        gemm(
            transA: false, transB: true, M: n, N: s.outFeatures, K: s.r, alpha: scale * s.scaling,
            A: u, lda: s.r, B: B, ldb: s.r, beta: 1, C: y, ldc: s.outFeatures)
    }

    /// Backward of a frozen branch: dx[n, in] += scale·s · dy·B·A (du [n, r] is scratch).
    func backwardInput(dy: ConstFloatPtr, dx: FloatPtr, n: Int, scale: Float, du: FloatPtr) {
        let s = slot
        gemm(
            transA: false, transB: false, M: n, N: s.r, K: s.outFeatures, alpha: scale * s.scaling, A: dy, lda: s.outFeatures,
            B: B, ldb: s.r, beta: 0, C: du, ldc: s.r)
        gemm(
            transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
            B: A, ldb: s.inFeatures, beta: 1, C: dx, ldc: s.inFeatures)
    }

    /// Backward of the trained branch, given the forward's input x (before
    /// dropout) and u = x̃·Aᵀ:
    ///
    ///     du = scale·s · dy·B     [n, r]   (scratch)
    ///     dB += scale·s · dyᵀ·u   [out, r]
    ///     dA += duᵀ·x̃            [r, in]
    ///     dx += (du·A) ⊙ mask     [n, in]  (when dx is given; mask = 1 without dropout)
    func backward(
        dy: ConstFloatPtr, x: ConstFloatPtr, u: ConstFloatPtr, n: Int, scale: Float, du: FloatPtr,
        dA: FloatPtr, dB: FloatPtr, dx: FloatPtr?, dropout: LoRADropout?
    ) {
        let s = slot
        let alpha = scale * s.scaling
        gemm(
            transA: false, transB: false, M: n, N: s.r, K: s.outFeatures, alpha: alpha, A: dy, lda: s.outFeatures,
            B: B, ldb: s.r, beta: 0, C: du, ldc: s.r)
        gemm(
            transA: true, transB: false, M: s.outFeatures, N: s.r, K: n, alpha: alpha, A: dy, lda: s.outFeatures,
            B: u, ldb: s.r, beta: 1, C: dB, ldc: s.r)
        guard let dropout else {
            gemm(
                transA: true, transB: false, M: s.r, N: s.inFeatures, K: n, alpha: 1, A: du, lda: s.r,
                B: x, ldb: s.inFeatures, beta: 1, C: dA, ldc: s.inFeatures)
            if let dx {
                gemm(
                    transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
                    B: A, ldb: s.inFeatures, beta: 1, C: dx, ldc: s.inFeatures)
            }
            return
        }
        // The forward's mask and x̃, regenerated from the same seed.
        let xt = applyDropout(dropout, x: x, n: n)
        gemm(
            transA: true, transB: false, M: s.r, N: s.inFeatures, K: n, alpha: 1, A: du, lda: s.r,
            B: xt, ldb: s.inFeatures, beta: 1, C: dA, ldc: s.inFeatures)
        if let dx {
            // du·A into the x̃ scratch (no longer needed), then masked into dx.
            let t = dropout.input
            let f = dropout.mask
            let count = n * s.inFeatures
            gemm(
                transA: false, transB: false, M: n, N: s.inFeatures, K: s.r, alpha: 1, A: du, lda: s.r,
                B: A, ldb: s.inFeatures, beta: 0, C: t, ldc: s.inFeatures)
            for i in 0..<count { dx[i] += t[i] * f[i] }
        }
    }

    /// Inverted dropout on the branch input: fills `dropout.mask` [n, in] with
    /// keep factors (0 with probability p, else 1/(1−p)) from a generator
    /// seeded by the pass and the slot, and `dropout.input` with x̃ = x ⊙ mask;
    /// returns x̃. Forward and backward call it with the same seed and get the
    /// same mask.
    /// Element i of token t of example b is draw ((b + rowOffset)·block + t)·in + i
    /// of the slot's SplitMix64 stream (counter-based: a draw is reached by
    /// adding to the state), so the mask does not depend on padding or on how
    /// a batch is split across data-parallel ranks.
    func applyDropout(_ dropout: LoRADropout, x: ConstFloatPtr, n: Int) -> ConstFloatPtr {
        let inF = slot.inFeatures
        let count = n * inF
        let start = dropout.seed ^ (UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15)
        let f = dropout.mask
        let xt = dropout.input
        let p = dropout.p
        let keep = 1 / (1 - p)
        let T = max(dropout.T, 1)
        for row in 0..<n {
            let b = row / T
            let t = row % T
            let draw = UInt64((b + dropout.rowOffset) * dropout.block + t) &* UInt64(inF)
            var rng = SplitMix64(seed: start &+ draw &* 0x9E37_79B9_7F4A_7C15)
            let fr = f + row * inF
            for i in 0..<inF { fr[i] = rng.nextFloat() < p ? 0 : keep }
        }
        for i in 0..<count { xt[i] = x[i] * f[i] }
        return UnsafePointer(xt)
    }

    /// ΔW: w[in, out] += factor·s · Aᵀ·Bᵀ (a Conv1D weight, [in, out]).
    func addDelta(to w: FloatPtr, factor: Float) {
        let s = slot
        gemm(
            transA: true, transB: true, M: s.inFeatures, N: s.outFeatures, K: s.r, alpha: factor * s.scaling,
            A: A, lda: s.inFeatures, B: B, ldb: s.r, beta: 1, C: w, ldc: s.outFeatures)
    }
}

/// LoRA dropout of the adapter being trained, for one pass.
struct LoRADropout {
    /// Drop probability, in (0, 1).
    let p: Float
    /// Seed of this pass's masks.
    let seed: UInt64
    /// Scratch [n, maxIn]: keep factors.
    let mask: FloatPtr
    /// Scratch [n, maxIn]: x̃ (and du·A in backward).
    let input: FloatPtr
    /// Tokens per example in this pass, and the block size masks are indexed by.
    let T: Int
    let block: Int
    /// Index of this pass's first example in the global micro-batch (data-parallel ranks; 0 in one process).
    let rowOffset: Int
}

extension Adapter {
    /// The branch of one adapted module, if the adapter adapts it.
    func branch(layer: Int, target: LoRATarget) -> LoRABranch? {
        slotIndex[layer * 4 + target.rawValue].map { i in
            let s = slots[i]
            return LoRABranch(slot: s, A: params.base + s.offsetA, B: params.base + s.offsetB, index: i)
        }
    }

    /// The branch of one of this adapter's slots.
    func branch(_ s: LoRASlot) -> LoRABranch {
        branch(layer: s.layer, target: s.target)!
    }
}

/// An enabled adapter with its user scale.
struct ActiveLoRA {
    let adapter: Adapter
    let scale: Float
}

/// What the adapter being trained needs in a training pass: where each
/// branch keeps u, where its gradients go, and its dropout.
struct LoRATrainingBuffers {
    let adapter: Adapter
    /// u [n, r] per slot of the adapter.
    let u: [FloatPtr]
    /// dA, dB at the slots' offsets (laid out like `adapter.params`).
    let gradients: FloatPtr
    let dropout: LoRADropout?
}

/// Rows of a batched pass that share one adapter set (the engine: each
/// sequence brings its own adapters; rows are grouped so that sequences with
/// the same set form one segment, and each branch runs once per segment, as
/// Punica's SGMV does).
struct LoRASegment {
    var start: Int
    var count: Int
    var active: [ActiveLoRA]
}

/// The LoRA branches that run in a pass: every enabled adapter, and in
/// training the trained one's buffers. With `segments`, each segment's rows
/// get that segment's adapters instead of `active`.
struct LoRAContext {
    var active: [ActiveLoRA]
    /// [n, maxRank] scratch for u of frozen branches and for du.
    var scratch: FloatPtr?
    var training: LoRATrainingBuffers?
    var segments: [LoRASegment]? = nil
    /// With segments: floats of scratch per row (at least every segment's largest rank).
    var segmentScratchStride = 0

    static var none: LoRAContext { LoRAContext(active: [], scratch: nil, training: nil) }

    /// y[n, out] += every active branch of (layer, target) applied to x.
    func forward(layer: Int, target: LoRATarget, x: ConstFloatPtr, y: FloatPtr, n: Int) {
        if let segments, let u = scratch {
            // Segments write disjoint rows of y and of the scratch: split
            // across the workers (16 distinct adapters: 16 segments of one row).
            let stride = segmentScratchStride
            parallelChunks(segments.count) { _, range in
                for i in range {
                    let seg = segments[i]
                    for a in seg.active {
                        guard let b = a.adapter.branch(layer: layer, target: target) else { continue }
                        b.forward(
                            x: x + seg.start * b.slot.inFeatures, y: y + seg.start * b.slot.outFeatures,
                            n: seg.count, scale: a.scale, u: u + seg.start * stride)
                    }
                }
            }
            return
        }
        for a in active {
            guard let b = a.adapter.branch(layer: layer, target: target) else { continue }
            if let t = training, t.adapter === a.adapter {
                let xin = t.dropout.map { b.applyDropout($0, x: x, n: n) } ?? x
                b.forward(x: xin, y: y, n: n, scale: a.scale, u: t.u[b.index])
            } else if let u = scratch {
                b.forward(x: x, y: y, n: n, scale: a.scale, u: u)
            }
        }
    }

    /// Backward through the branches of (layer, target): dx += ∂L/∂x (dx nil:
    /// not needed), and the trained adapter's dA, dB accumulate.
    func backward(layer: Int, target: LoRATarget, x: ConstFloatPtr, dy: ConstFloatPtr, dx: FloatPtr?, n: Int) {
        guard let du = scratch else { return }
        for a in active {
            guard let b = a.adapter.branch(layer: layer, target: target) else { continue }
            if let t = training, t.adapter === a.adapter {
                b.backward(
                    dy: dy, x: x, u: t.u[b.index], n: n, scale: a.scale, du: du,
                    dA: t.gradients + b.slot.offsetA, dB: t.gradients + b.slot.offsetB, dx: dx, dropout: t.dropout)
            } else if let dx {
                b.backwardInput(dy: dy, dx: dx, n: n, scale: a.scale, du: du)
            }
        }
    }
}
