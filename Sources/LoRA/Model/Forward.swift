// One transformer block's forward pass, shared by inference (one set of
// scratch buffers for every layer, residual stream updated in place, K/V
// copied into a cache) and training (per-layer buffers kept for backward,
// K/V read straight from qkv).

/// Pointers for one block's forward pass. Buffers may alias where the
/// comment allows it (inference does; training does not).
struct LayerActs {
    /// Residual stream in [n, C].
    var input: FloatPtr
    var ln1: FloatPtr
    var ln1Mean: FloatPtr?
    var ln1Rstd: FloatPtr?
    /// [n, 3C]
    var qkv: FloatPtr
    /// Attention output before c_proj [n, C].
    var att: FloatPtr
    /// probsSlots scratch areas of [T, L] for the attention weights, one per attention worker.
    var probs: FloatPtr
    var probsSlots: Int
    /// Training: [B, H, T] log-sum-exp of each attention row, kept for backward.
    var lse: FloatPtr?
    /// input + attention projection [n, C] (may alias input).
    var res2: FloatPtr
    var ln2: FloatPtr
    var ln2Mean: FloatPtr?
    var ln2Rstd: FloatPtr?
    /// c_fc output before the activation [n, F].
    var fcPre: FloatPtr
    /// After the activation [n, F] (may alias fcPre).
    var fcAct: FloatPtr
    /// Block output [n, C] (may alias res2).
    var res3: FloatPtr
    /// Scratch [n, C].
    var proj: FloatPtr
}

/// Where attention reads keys and values.
enum KVPlacement {
    /// From qkv itself (training, no cache).
    case inline
    /// From a cache [B, H, capacity, hd] for this layer, after appending this call's K/V at `past`.
    case cache(k: FloatPtr, v: FloatPtr, capacity: Int)
}

/// An enabled adapter with its user scale.
struct ActiveLoRA {
    let adapter: Adapter
    let scale: Float
}

/// What LoRA needs in a forward pass beyond the adapters: a scratch for
/// u = x·Aᵀ, and in training, where to keep u and how to drop inputs out.
struct LoRAContext {
    var active: [ActiveLoRA]
    /// [n, maxRank] scratch when u is not kept.
    var scratch: FloatPtr?
    /// Training hook: the buffer that keeps u for a trainable slot (nil: use scratch).
    var saveU: ((LoRASlot) -> FloatPtr?)?
    /// Training hook: dropout applied to the LoRA input of a trainable slot,
    /// writing x̃ into a scratch and returning it (nil: no dropout).
    var dropout: ((LoRASlot, ConstFloatPtr, Int) -> ConstFloatPtr)?
    /// The adapter being trained (dropout and saved u apply to it only).
    var trainable: Adapter?

    static var none: LoRAContext { LoRAContext(active: [], scratch: nil, saveU: nil, dropout: nil, trainable: nil) }

    /// y[n, out] += Σ scale·s · (x̃·Aᵀ)·Bᵀ over the adapters that adapt (layer, target).
    func apply(layer: Int, target: LoRATarget, x: ConstFloatPtr, y: FloatPtr, n: Int) {
        for a in active {
            guard let s = a.adapter.slot(layer: layer, target: target) else { continue }
            let isTrainable = trainable === a.adapter
            let xin = isTrainable ? (dropout?(s, x, n) ?? x) : x
            guard let u = (isTrainable ? saveU?(s) : nil) ?? scratch else { continue }
            gemm(transA: false, transB: true, M: n, N: s.r, K: s.inFeatures, alpha: 1,
                 A: xin, lda: s.inFeatures, B: a.adapter.A(s), ldb: s.inFeatures, beta: 0, C: u, ldc: s.r)
            gemm(transA: false, transB: true, M: n, N: s.outFeatures, K: s.r, alpha: a.scale * s.scaling,
                 A: u, lda: s.r, B: a.adapter.B(s), ldb: s.r, beta: 1, C: y, ldc: s.outFeatures)
        }
    }
}

extension Model {
    /// One block: x → LN1 → c_attn → attention → c_proj → +x → LN2 → c_fc → act → c_proj → +.
    func layerForward(_ l: Int, _ a: LayerActs, B: Int, T: Int, past: Int, kv: KVPlacement,
                      keyMask: ((Int) -> ConstFloatPtr?)?, lora: LoRAContext) {
        let c = config
        let lw = weights.layers[l]
        let C = c.nEmbd, F = c.innerSize, H = c.nHead, hd = c.headDim
        let n = B * T, L = past + T
        let eps = Float(c.layerNormEpsilon)

        layerNormForward(out: a.ln1, mean: a.ln1Mean, rstd: a.ln1Rstd, inp: a.input, weight: lw.ln1W, bias: lw.ln1B, rows: n, C: C, eps: eps)
        matmulForward(out: a.qkv, inp: a.ln1, weight: lw.attnW, bias: lw.attnB, M: n, K: C, N: 3 * C)
        lora.apply(layer: l, target: .attnCAttn, x: a.ln1, y: a.qkv, n: n)

        var scale: Float = c.scaleAttnWeights ? 1 / Float(hd).squareRoot() : 1
        if c.scaleAttnByInverseLayerIdx { scale /= Float(l + 1) }
        if case .cache(let kc, let vc, let capacity) = kv {
            for b in 0..<B {
                for t in 0..<T {
                    let src = a.qkv + (b * T + t) * 3 * C
                    for h in 0..<H {
                        let dst = (b * H + h) * capacity * hd + (past + t) * hd
                        (kc + dst).update(from: src + C + h * hd, count: hd)
                        (vc + dst).update(from: src + 2 * C + h * hd, count: hd)
                    }
                }
            }
        }
        // Heads run in parallel, each single-threaded.
        let slotSize = T * L
        parallelChunks(B * H, maxWorkers: a.probsSlots) { worker, heads in
            for bh in heads {
                let b = bh / H, h = bh % H
                let k: FloatPtr, v: FloatPtr, ldk: Int
                switch kv {
                case .inline:
                    let base: FloatPtr = a.qkv + b * T * 3 * C
                    k = base + (C + h * hd)
                    v = base + (2 * C + h * hd)
                    ldk = 3 * C
                case .cache(let kc, let vc, let capacity):
                    let off: Int = (b * H + h) * capacity * hd
                    k = kc + off
                    v = vc + off
                    ldk = hd
                }
                attentionForward(out: a.att + b * T * C + h * hd, ldo: C,
                                 probs: a.probs + worker * slotSize,
                                 q: a.qkv + b * T * 3 * C + h * hd, ldq: 3 * C,
                                 k: k, ldk: ldk, v: v, ldv: ldk,
                                 T: T, L: L, past: past, hd: hd, scale: scale, keyMask: keyMask?(b),
                                 lse: a.lse.map { $0 + bh * T })
            }
        }
        matmulForward(out: a.proj, inp: a.att, weight: lw.attnProjW, bias: lw.attnProjB, M: n, K: C, N: C)
        lora.apply(layer: l, target: .attnCProj, x: a.att, y: a.proj, n: n)
        addForward(out: a.res2, a: a.input, b: a.proj, n: n * C)

        layerNormForward(out: a.ln2, mean: a.ln2Mean, rstd: a.ln2Rstd, inp: a.res2, weight: lw.ln2W, bias: lw.ln2B, rows: n, C: C, eps: eps)
        matmulForward(out: a.fcPre, inp: a.ln2, weight: lw.fcW, bias: lw.fcB, M: n, K: C, N: F)
        lora.apply(layer: l, target: .mlpCFC, x: a.ln2, y: a.fcPre, n: n)
        activationForward(c.activation, out: a.fcAct, inp: a.fcPre, n: n * F)
        matmulForward(out: a.proj, inp: a.fcAct, weight: lw.mlpProjW, bias: lw.mlpProjB, M: n, K: F, N: C)
        lora.apply(layer: l, target: .mlpCProj, x: a.fcAct, y: a.proj, n: n)
        addForward(out: a.res3, a: a.res2, b: a.proj, n: n * C)
    }
}
