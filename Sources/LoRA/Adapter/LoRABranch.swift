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
    /// A [r, in] then B [out, r] in the parameter block, then with DoRA the
    /// magnitude m [out] or with lora_bias B's bias [out].
    public let offsetA: Int
    public let offsetB: Int
    /// DoRA's magnitude vector m [out] (`lora_magnitude_vector`); nil without DoRA.
    public let offsetM: Int?
    /// lora_bias: B's bias [out] (`lora_B.bias`), after B; nil without it.
    public var offsetBias: Int? = nil
    public var countA: Int { r * inFeatures }
    public var countB: Int { outFeatures * r }
}

/// LoRA on the token embedding `transformer.wte` (PEFT's `lora.Embedding`):
///
///     x[n, C] += scale · s · B · A[:, id_n],    A [r, vocab] (`lora_embedding_A`), B [C, r] (`lora_embedding_B`)
///
/// on the embedding output, without dropout (as PEFT). GPT-2's LM head is
/// tied to wte; as PEFT by default (ensure_weight_tying false), the head
/// keeps the base weight: only the input side is adapted.
public struct EmbeddingSlot: Sendable, Equatable {
    public let moduleName = "transformer.wte"
    public let r: Int
    public let alpha: Double
    public let scaling: Float
    public let vocabSize: Int
    public let nEmbd: Int
    /// A [r, vocab] then B [n_embd, r] in the parameter block.
    public let offsetA: Int
    public let offsetB: Int
    public var countA: Int { r * vocabSize }
    public var countB: Int { nEmbd * r }
}

/// The branch of one adapted module (PEFT's `lora.Linear`, for GPT-2's
/// Conv1D whose weight is [in, out]):
///
///     y[n, out] += scale · s · ((dropout(x)[n, in] · Aᵀ) · Bᵀ + b),    A [r, in], B [out, r]
///
/// with s = alpha/r (alpha/√r with rsLoRA), `scale` the user's attachment
/// scale and b [out] B's bias with lora_bias (else 0).
struct LoRABranch {
    let slot: LoRASlot
    /// [r, in]
    let A: FloatPtr
    /// [out, r]
    let B: FloatPtr
    /// The slot's index in its adapter (it seeds the dropout mask).
    let index: Int
    /// lora_bias: B's bias [out]; nil without it.
    var bias: FloatPtr? = nil

    /// u[n, r] = x[n, in]·Aᵀ;  y[n, out] += scale·s · (u·Bᵀ + b) (b: lora_bias, else 0).
    /// x is the branch input after dropout; u is kept for backward in training.
    func forward(x: ConstFloatPtr, y: FloatPtr, n: Int, scale: Float, u: FloatPtr) {
        products(x: x, y: y, n: n, scale: scale, u: u)
        if let bias {
            let alpha = scale * slot.scaling
            let out = slot.outFeatures
            for r in 0..<n {
                let yr = y + r * out
                for j in 0..<out { yr[j] += alpha * bias[j] }
            }
        }
    }

    private func products(x: ConstFloatPtr, y: FloatPtr, n: Int, scale: Float, u: FloatPtr) {
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
    ///     db += scale·s · Σ_n dy  [out]    (lora_bias)
    ///     dA += duᵀ·x̃            [r, in]
    ///     dx += (du·A) ⊙ mask     [n, in]  (when dx is given; mask = 1 without dropout)
    ///
    /// `throughWeight` (DoRA with dropout): x̃ also feeds the base product
    /// x̃·W, so dx̃ gains dyW·Wᵀ (W [in, out] the frozen weight) before the mask.
    func backward(
        dy: ConstFloatPtr, x: ConstFloatPtr, u: ConstFloatPtr, n: Int, scale: Float, du: FloatPtr,
        dA: FloatPtr, dB: FloatPtr, dBias: FloatPtr? = nil, dx: FloatPtr?, dropout: LoRADropout?,
        throughWeight: (dy: ConstFloatPtr, weight: BaseMatrix)? = nil
    ) {
        let s = slot
        let alpha = scale * s.scaling
        if let dBias {
            let out = s.outFeatures
            var acc = [Double](repeating: 0, count: out)
            for r in 0..<n {
                let dr = dy + r * out
                for j in 0..<out { acc[j] += Double(dr[j]) }
            }
            for j in 0..<out { dBias[j] += alpha * Float(acc[j]) }
        }
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
            if let (dyW, w) = throughWeight {
                baseMatmul(
                    transW: true, M: n, N: s.inFeatures, K: s.outFeatures, A: dyW, lda: s.outFeatures, W: w, beta: 1, C: t,
                    ldc: s.inFeatures)
            }
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

// MARK: DoRA

/// DoRA (PEFT 0.21.2's DoraLinearLayer and DoraLinearVariant,
/// tuners/lora/dora.py, variants.py), for one pass of one adapter applied
/// with user scale `scale` (σ = scale·s):
///
///     wn[out] = ‖W + σ·(B·A)ᵀ‖ per output feature (a column of the Conv1D weight W [in, out]),
///               a constant: no gradient flows through it (DoRA paper §4.3, PEFT's .detach())
///     k[out]  = m / wn
///
/// and the branch's forward, on the module output y[n, out] (the base
/// product plus bias plus the adapters before this one: PEFT's `result`):
///
///     no dropout:   v = (y − bias) + σ·x·Aᵀ·Bᵀ,   y ← k ⊙ v + bias
///     dropout p:    v = x̃·W + σ·x̃·Aᵀ·Bᵀ,          y ← y + k ⊙ v − x̃·W
///
/// (PEFT: `(k − 1)·base + k·σ·lora`, base = result − bias, or F.linear(x̃, Wᵀ)
/// when dropout is active). Backward, g = ∂L/∂y after the branch:
///
///     dm += Σ_n g ⊙ v / wn
///     the LoRA path gets g ⊙ k (as a plain branch with dy = g ⊙ k)
///     no dropout:   the module's input side (base product, earlier adapters) gets g ⊙ k
///     dropout:      it gets g, and dx̃ gains ((k − 1) ⊙ g)·Wᵀ
final class DoRAFactors {
    private let store: FloatBlock
    /// Per slot of the adapter (by index): wn [out] and k [out].
    let norm: [FloatPtr]
    let k: [FloatPtr]
    /// The module's frozen weight [in, out] (in the model's dtype) and bias [out].
    let weight: [BaseMatrix]
    let bias: [ConstFloatPtr]

    init(adapter: Adapter, scale: Float, model: Model) throws {
        let total = adapter.slots.reduce(0) { $0 + 2 * $1.outFeatures }
        store = try FloatBlock(count: total)
        var p = store.base
        var norm: [FloatPtr] = []
        var k: [FloatPtr] = []
        var weight: [BaseMatrix] = []
        var bias: [ConstFloatPtr] = []
        for s in adapter.slots {
            let out = s.outFeatures
            let w = model.weightMatrix(layer: s.layer, target: s.target)
            let wn = DoRAFactors.columnNorms(adapter.branch(s), weight: w, factor: scale)
            let m = adapter.magnitude(s)!
            p.update(from: wn, count: out)
            for j in 0..<out { p[out + j] = m[j] / wn[j] }
            norm.append(p)
            k.append(p + out)
            weight.append(w)
            bias.append(UnsafePointer(model.biasPointer(layer: s.layer, target: s.target)))
            p += 2 * out
        }
        self.norm = norm
        self.k = k
        self.weight = weight
        self.bias = bias
    }

    /// `columnNorms` of a base weight in any dtype, read as its F32 values
    /// (a reduced-precision base: the rounded values, as PEFT on those values).
    static func columnNorms(_ b: LoRABranch, weight: BaseMatrix, factor: Float) -> [Float] {
        weight.dequantized().withUnsafeBufferPointer { columnNorms(b, weight: $0.baseAddress!, factor: factor) }
    }

    /// ‖W + σ·(B·A)ᵀ‖ per output feature j, σ = factor·s (each column of the
    /// Conv1D weight W [in, out]; PEFT: torch.linalg.norm(Wᵀ + s·B·A, dim=1)),
    /// expanded so that W is read once and never copied:
    ///
    ///     ‖W_j‖² + 2σ·Σ_k B[j,k]·(A·W)[k,j] + σ²·B_jᵀ·(A·Aᵀ)·B_j
    ///
    /// (sums in double; A·W [r, out] by sgemm). A fresh adapter (B = 0) gives
    /// ‖W_j‖ exactly. Before: W + σ·ΔW formed in full, 0.45 s for an r=8
    /// adapter on four module types of GPT-2 124M, paid per training step and
    /// per new adapter set in the engine.
    static func columnNorms(_ b: LoRABranch, weight: ConstFloatPtr, factor: Float) -> [Float] {
        let s = b.slot
        let inF = s.inFeatures
        let out = s.outFeatures
        let r = s.r
        let sigma = Double(factor * s.scaling)
        var acc = [Double](repeating: 0, count: out)
        acc.withUnsafeMutableBufferPointer { a in
            let a = a.baseAddress!
            // Columns split across the workers (each sums its own, in the same order).
            parallelChunks(out, minChunk: 256, align: 16) { _, cols in
                for i in 0..<inF {
                    let row = weight + i * out
                    for j in cols {
                        let x = Double(row[j])
                        a[j] += x * x
                    }
                }
            }
        }
        if sigma == 0 { return acc.map { Float($0.squareRoot()) } }
        var aw = [Float](repeating: 0, count: r * out)
        aw.withUnsafeMutableBufferPointer { t in
            gemm(
                transA: false, transB: false, M: r, N: out, K: inF, alpha: 1, A: b.A, lda: inF, B: weight, ldb: out,
                beta: 0, C: t.baseAddress!, ldc: out)
        }
        // G = A·Aᵀ [r, r].
        var g = [Double](repeating: 0, count: r * r)
        for k in 0..<r {
            for l in k..<r {
                var d = 0.0
                let ak = b.A + k * inF
                let al = b.A + l * inF
                for i in 0..<inF { d += Double(ak[i]) * Double(al[i]) }
                g[k * r + l] = d
                g[l * r + k] = d
            }
        }
        var norms = [Float](repeating: 0, count: out)
        for j in 0..<out {
            let bj = b.B + j * r
            var cross = 0.0
            var quad = 0.0
            for k in 0..<r {
                let bk = Double(bj[k])
                cross += bk * Double(aw[k * out + j])
                var gb = 0.0
                for l in 0..<r { gb += g[k * r + l] * Double(bj[l]) }
                quad += bk * gb
            }
            norms[j] = Float(max(0, acc[j] + 2 * sigma * cross + sigma * sigma * quad).squareRoot())
        }
        return norms
    }
}

extension Adapter {
    /// The branch of one adapted module, if the adapter adapts it.
    func branch(layer: Int, target: LoRATarget) -> LoRABranch? {
        slotIndex[layer * 4 + target.rawValue].map { i in
            let s = slots[i]
            return LoRABranch(
                slot: s, A: params.base + s.offsetA, B: params.base + s.offsetB, index: i,
                bias: s.offsetBias.map { params.base + $0 })
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
    /// DoRA adapters: this pass's norms and factors (see `DoRAFactors`).
    var dora: DoRAFactors? = nil
}

/// What the adapter being trained needs in a training pass: where each
/// branch keeps u, where its gradients go, and its dropout.
struct LoRATrainingBuffers {
    let adapter: Adapter
    /// u [n, r] per slot of the adapter.
    let u: [FloatPtr]
    /// dA, dB (and DoRA's dm) at the slots' offsets (laid out like `adapter.params`).
    let gradients: FloatPtr
    let dropout: LoRADropout?
    /// DoRA: v [n, out] per slot, kept for dm (see `DoRAFactors`); empty without DoRA.
    var v: [FloatPtr] = []
}

/// Rows of a batched pass that share one adapter set (the engine: each
/// sequence brings its own adapters; rows are grouped so that sequences with
/// the same set form one segment, and each branch runs once per segment, as
/// Punica's SGMV does).
struct LoRASegment {
    var start: Int
    var count: Int
    /// Its adapters, DoRA ones with their factors.
    var active: [ActiveLoRA]
    /// The modules_to_save of `active` (see `LayerNormOverride.overrides`).
    var layerNorms: [SavedModule.Kind: LayerNormOverride] = [:]
}

/// A LayerNorm of an adapter's modules_to_save, used instead of the model's.
struct LayerNormOverride {
    let weight: ConstFloatPtr
    let bias: ConstFloatPtr
    /// Training that adapter: its gradients.
    let dWeight: FloatPtr?
    let dBias: FloatPtr?

    /// The saved modules of `active` (two adapters saving one module are an
    /// error: PEFT's wrapper runs one adapter's copy), gradients for `training`'s.
    static func overrides(_ active: [ActiveLoRA], training: LoRATrainingBuffers?) throws -> [SavedModule.Kind: LayerNormOverride] {
        var out: [SavedModule.Kind: LayerNormOverride] = [:]
        var owner: [SavedModule.Kind: String] = [:]
        for a in active {
            let trained = training.flatMap { $0.adapter === a.adapter ? $0.gradients : nil }
            for m in a.adapter.savedModules {
                if let other = owner[m.kind] {
                    throw LoRAError.unsupported(
                        "adapters \(other) and \(a.adapter.name) both save \(m.moduleName) (modules_to_save); enable one of them")
                }
                owner[m.kind] = a.adapter.name
                let p = a.adapter.params.base + m.offset
                out[m.kind] = LayerNormOverride(
                    weight: UnsafePointer(p), bias: UnsafePointer(p + m.count), dWeight: trained.map { $0 + m.offset },
                    dBias: trained.map { $0 + m.offset + m.count })
            }
        }
        return out
    }
}

/// The LoRA branches that run in a pass: every enabled adapter, and in
/// training the trained one's buffers. With `segments` (inference only),
/// each segment's rows get that segment's adapters and saved LayerNorms
/// instead of `active` and `layerNorms`.
struct LoRAContext {
    var active: [ActiveLoRA]
    /// [n, maxRank] scratch for u of frozen branches and for du.
    var scratch: FloatPtr?
    var training: LoRATrainingBuffers?
    var segments: [LoRASegment]? = nil
    /// With segments: floats of scratch per row (at least every segment's largest rank).
    var segmentScratchStride = 0
    /// DoRA: (active.count + 2) areas of [n, maxOut]: two temporaries, then
    /// per active adapter the gradient it passes down (g ⊙ k); nil without DoRA.
    var doraScratch: FloatPtr? = nil
    /// Floats per area of `doraScratch`.
    var doraArea = 0
    /// modules_to_save of the enabled adapters: LayerNorms whose parameters
    /// replace the model's in this pass (and, for the trained adapter, where
    /// their gradients go).
    var layerNorms: [SavedModule.Kind: LayerNormOverride] = [:]

    static var none: LoRAContext { LoRAContext(active: [], scratch: nil, training: nil) }

    /// Scratch floats a pass of n rows needs for these adapters' DoRA branches (0 without DoRA).
    static func doraScratchCount(_ active: [ActiveLoRA], rows n: Int, maxOut: Int) -> Int {
        active.contains { $0.dora != nil } ? (active.count + 2) * n * maxOut : 0
    }

    /// x[n, C] += every active adapter's embedding branch for token ids [n] (see `EmbeddingSlot`).
    func embeddingForward(ids: UnsafePointer<TokenID>, x: FloatPtr, n: Int) {
        guard let u = scratch else { return }
        if let segments {
            for seg in segments {
                LoRAContext.embeddingForward(
                    seg.active, ids: ids + seg.start, x: x, xRows: seg.start, n: seg.count,
                    u: u + seg.start * segmentScratchStride)
            }
            return
        }
        LoRAContext.embeddingForward(active, ids: ids, x: x, xRows: 0, n: n, u: u)
    }

    private static func embeddingForward(
        _ active: [ActiveLoRA], ids: UnsafePointer<TokenID>, x: FloatPtr, xRows: Int, n: Int, u: FloatPtr
    ) {
        for a in active {
            guard let e = a.adapter.embedding else { continue }
            let A = a.adapter.params.base + e.offsetA
            let B = a.adapter.params.base + e.offsetB
            // u[n, r] = A[:, id_n]
            for row in 0..<n {
                let id = Int(ids[row])
                for k in 0..<e.r { u[row * e.r + k] = A[k * e.vocabSize + id] }
            }
            gemm(
                transA: false, transB: true, M: n, N: e.nEmbd, K: e.r, alpha: a.scale * e.scaling, A: u, lda: e.r,
                B: B, ldb: e.r, beta: 1, C: x + xRows * e.nEmbd, ldc: e.nEmbd)
        }
    }

    /// LayerNorm `kind` over n rows with the model's parameters, or where
    /// an enabled adapter (with segments: the segment's adapter set) saves
    /// that module, with the adapter's.
    func layerNorm(
        _ kind: SavedModule.Kind, out: FloatPtr, mean: FloatPtr?, rstd: FloatPtr?, inp: ConstFloatPtr,
        weight: ConstFloatPtr, bias: ConstFloatPtr, rows n: Int, C: Int, eps: Float
    ) {
        if let segments, segments.contains(where: { $0.layerNorms[kind] != nil }) {
            for seg in segments {
                let o = seg.layerNorms[kind]
                layerNormForward(
                    out: out + seg.start * C, mean: mean.map { $0 + seg.start }, rstd: rstd.map { $0 + seg.start },
                    inp: inp + seg.start * C, weight: o?.weight ?? weight, bias: o?.bias ?? bias, rows: seg.count, C: C,
                    eps: eps)
            }
            return
        }
        let o = layerNorms[kind]
        layerNormForward(
            out: out, mean: mean, rstd: rstd, inp: inp, weight: o?.weight ?? weight, bias: o?.bias ?? bias, rows: n, C: C,
            eps: eps)
    }

    /// The trained adapter's embedding branch backward, dx [n, C] = ∂L/∂(embedding output):
    ///
    ///     dB += scale·s · dxᵀ·u      u[n, r] = A[:, id_n]
    ///     dA[:, id_n] += scale·s · (dx·B)[n, :]
    func embeddingBackward(ids: UnsafePointer<TokenID>, dx: ConstFloatPtr, n: Int) {
        guard let t = training, let e = t.adapter.embedding, let u = scratch,
            let a = active.first(where: { $0.adapter === t.adapter })
        else { return }
        let A = t.adapter.params.base + e.offsetA
        let B = t.adapter.params.base + e.offsetB
        let sigma = a.scale * e.scaling
        for row in 0..<n {
            let id = Int(ids[row])
            for k in 0..<e.r { u[row * e.r + k] = A[k * e.vocabSize + id] }
        }
        gemm(
            transA: true, transB: false, M: e.nEmbd, N: e.r, K: n, alpha: sigma, A: dx, lda: e.nEmbd, B: u, ldb: e.r,
            beta: 1, C: t.gradients + e.offsetB, ldc: e.r)
        // du = σ·dx·B into u (no longer needed), then scattered into dA's columns.
        gemm(
            transA: false, transB: false, M: n, N: e.r, K: e.nEmbd, alpha: sigma, A: dx, lda: e.nEmbd, B: B, ldb: e.r,
            beta: 0, C: u, ldc: e.r)
        let dA = t.gradients + e.offsetA
        for row in 0..<n {
            let id = Int(ids[row])
            for k in 0..<e.r { dA[k * e.vocabSize + id] += u[row * e.r + k] }
        }
    }

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
                        let out = b.slot.outFeatures
                        let ys = y + seg.start * out
                        guard let d = a.dora else {
                            b.forward(
                                x: x + seg.start * b.slot.inFeatures, y: ys, n: seg.count, scale: a.scale,
                                u: u + seg.start * stride)
                            continue
                        }
                        // DoRA without dropout, in place (see `DoRAFactors`):
                        // y ← k ⊙ ((y − bias) + σ·x·Aᵀ·Bᵀ) + bias.
                        let k = d.k[b.index]
                        let bias = d.bias[b.index]
                        for r in 0..<seg.count {
                            let yr = ys + r * out
                            for j in 0..<out { yr[j] -= bias[j] }
                        }
                        b.forward(
                            x: x + seg.start * b.slot.inFeatures, y: ys, n: seg.count, scale: a.scale,
                            u: u + seg.start * stride)
                        for r in 0..<seg.count {
                            let yr = ys + r * out
                            for j in 0..<out { yr[j] = k[j] * yr[j] + bias[j] }
                        }
                    }
                }
            }
            return
        }
        for a in active {
            guard let b = a.adapter.branch(layer: layer, target: target) else { continue }
            if let d = a.dora {
                doraForward(b, d, scale: a.scale, x: x, y: y, n: n, trained: training.flatMap { $0.adapter === a.adapter ? $0 : nil })
            } else if let t = training, t.adapter === a.adapter {
                let xin = t.dropout.map { b.applyDropout($0, x: x, n: n) } ?? x
                b.forward(x: xin, y: y, n: n, scale: a.scale, u: t.u[b.index])
            } else if let u = scratch {
                b.forward(x: x, y: y, n: n, scale: a.scale, u: u)
            }
        }
    }

    /// One DoRA branch forward (see `DoRAFactors`).
    private func doraForward(
        _ b: LoRABranch, _ d: DoRAFactors, scale: Float, x: ConstFloatPtr, y: FloatPtr, n: Int, trained: LoRATrainingBuffers?
    ) {
        guard let area = doraScratch, let scratch else { return }
        let i = b.index
        let inF = b.slot.inFeatures
        let out = b.slot.outFeatures
        let k = d.k[i]
        let bias = d.bias[i]
        let u = trained?.u[i] ?? scratch
        let v = trained?.v[i] ?? area
        if let t = trained, let dropout = t.dropout {
            // v = x̃·W + σ·x̃·Aᵀ·Bᵀ;  y += k ⊙ v − x̃·W.
            let xt = b.applyDropout(dropout, x: x, n: n)
            let base = area + doraArea
            baseMatmul(transW: false, M: n, N: out, K: inF, A: xt, lda: inF, W: d.weight[i], beta: 0, C: base, ldc: out)
            v.update(from: base, count: n * out)
            b.forward(x: xt, y: v, n: n, scale: scale, u: u)
            for r in 0..<n {
                let yr = y + r * out
                let vr = v + r * out
                let br = base + r * out
                for j in 0..<out { yr[j] += k[j] * vr[j] - br[j] }
            }
            return
        }
        // v = (y − bias) + σ·x·Aᵀ·Bᵀ;  y = k ⊙ v + bias.
        for r in 0..<n {
            let yr = y + r * out
            let vr = v + r * out
            for j in 0..<out { vr[j] = yr[j] - bias[j] }
        }
        b.forward(x: x, y: v, n: n, scale: scale, u: u)
        for r in 0..<n {
            let yr = y + r * out
            let vr = v + r * out
            for j in 0..<out { yr[j] = k[j] * vr[j] + bias[j] }
        }
    }

    /// Whether active adapter `a` is a DoRA branch of (layer, target) that
    /// scales the gradient of everything before it (no dropout path).
    private func scalesInput(_ a: ActiveLoRA, layer: Int, target: LoRATarget) -> Bool {
        guard a.dora != nil, a.adapter.slot(layer: layer, target: target) != nil else { return false }
        if let t = training, t.adapter === a.adapter, t.dropout != nil { return false }
        return true
    }

    /// The gradient active adapter `index` sees at its output: dy, or the
    /// g ⊙ k of the nearest later DoRA branch that scales its input.
    private func outputGradient(_ index: Int, layer: Int, target: LoRATarget, dy: ConstFloatPtr, n: Int) -> ConstFloatPtr {
        for j in (index + 1)..<max(index + 1, active.count) where scalesInput(active[j], layer: layer, target: target) {
            return UnsafePointer(doraScratch! + (2 + j) * doraArea)
        }
        return dy
    }

    /// The gradient of the module's base product (and bias) given dy [n, out]
    /// at its output: dy itself, unless DoRA branches scale it (then their
    /// g ⊙ k chain is computed here, in scratch that `backward` reads next).
    /// Call it before the base product's backward and `backward`.
    func baseGradient(layer: Int, target: LoRATarget, dy: ConstFloatPtr, n: Int) -> ConstFloatPtr {
        guard let area = doraScratch else { return dy }
        var g = dy
        for j in stride(from: active.count - 1, through: 0, by: -1) where scalesInput(active[j], layer: layer, target: target) {
            let b = active[j].adapter.branch(layer: layer, target: target)!
            let k = active[j].dora!.k[b.index]
            let out = b.slot.outFeatures
            let gk = area + (2 + j) * doraArea
            for r in 0..<n {
                let src = g + r * out
                let dst = gk + r * out
                for c in 0..<out { dst[c] = src[c] * k[c] }
            }
            g = UnsafePointer(gk)
        }
        return g
    }

    /// Backward through the branches of (layer, target): dx += ∂L/∂x (dx nil:
    /// not needed), and the trained adapter's dA, dB (and dm) accumulate. dy
    /// is ∂L/∂(module output); with DoRA branches `baseGradient` must have run first.
    func backward(layer: Int, target: LoRATarget, x: ConstFloatPtr, dy: ConstFloatPtr, dx: FloatPtr?, n: Int) {
        guard let du = scratch else { return }
        for (index, a) in active.enumerated() {
            guard let b = a.adapter.branch(layer: layer, target: target) else { continue }
            let g = doraScratch == nil ? dy : outputGradient(index, layer: layer, target: target, dy: dy, n: n)
            let trained = training.flatMap { $0.adapter === a.adapter ? $0 : nil }
            if let d = a.dora {
                doraBackward(b, d, index: index, scale: a.scale, x: x, g: g, dx: dx, n: n, du: du, trained: trained)
            } else if let t = trained {
                b.backward(
                    dy: g, x: x, u: t.u[b.index], n: n, scale: a.scale, du: du,
                    dA: t.gradients + b.slot.offsetA, dB: t.gradients + b.slot.offsetB,
                    dBias: b.slot.offsetBias.map { t.gradients + $0 }, dx: dx, dropout: t.dropout)
            } else if let dx {
                b.backwardInput(dy: g, dx: dx, n: n, scale: a.scale, du: du)
            }
        }
    }

    /// One DoRA branch backward, g = ∂L/∂(its output) (see `DoRAFactors`).
    private func doraBackward(
        _ b: LoRABranch, _ d: DoRAFactors, index: Int, scale: Float, x: ConstFloatPtr, g: ConstFloatPtr, dx: FloatPtr?,
        n: Int, du: FloatPtr, trained: LoRATrainingBuffers?
    ) {
        guard let area = doraScratch else { return }
        let i = b.index
        let out = b.slot.outFeatures
        let k = d.k[i]
        let dropout = trained?.dropout
        // g ⊙ k: computed by baseGradient without dropout, here with it.
        let gk: ConstFloatPtr
        if dropout == nil {
            gk = UnsafePointer(area + (2 + index) * doraArea)
        } else {
            let t = area
            for r in 0..<n {
                for c in 0..<out { t[r * out + c] = g[r * out + c] * k[c] }
            }
            gk = UnsafePointer(t)
        }
        guard let t = trained else {
            if let dx { b.backwardInput(dy: gk, dx: dx, n: n, scale: scale, du: du) }
            return
        }
        // dm[j] += Σ_n g[n, j]·v[n, j] / wn[j].
        let v = t.v[i]
        let dm = t.gradients + b.slot.offsetM!
        let wn = d.norm[i]
        var acc = [Double](repeating: 0, count: out)
        for r in 0..<n {
            let gr = g + r * out
            let vr = v + r * out
            for c in 0..<out { acc[c] += Double(gr[c] * vr[c]) }
        }
        for c in 0..<out { dm[c] += Float(acc[c]) / wn[c] }
        var through: (dy: ConstFloatPtr, weight: BaseMatrix)? = nil
        if dropout != nil, dx != nil {
            // ((k − 1) ⊙ g) for the base product x̃·W inside the branch.
            let e = area + doraArea
            for r in 0..<n {
                for c in 0..<out { e[r * out + c] = g[r * out + c] * (k[c] - 1) }
            }
            through = (UnsafePointer(e), d.weight[i])
        }
        b.backward(
            dy: gk, x: x, u: t.u[i], n: n, scale: scale, du: du,
            dA: t.gradients + b.slot.offsetA, dB: t.gradients + b.slot.offsetB, dx: dx, dropout: dropout,
            throughWeight: through)
    }
}
