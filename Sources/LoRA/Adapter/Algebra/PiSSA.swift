import Foundation

// PiSSA and OLoRA: adapters initialised from the base weights. Each moves a
// rank-r part of W into s·B·A and leaves the residual W − s·B·A in the base,
// so the model computes the same function at step 0 but trains the part that
// matters most. PEFT's definitions (tuners/lora/layer.py pissa_init and
// olora_init) act on W as [out, in]; GPT-2's Conv1D weights are [in, out] and
// are transposed on the way in and out.

extension Adapter {
    /// PiSSA / OLoRA initialisation from the base weights (see `initialize(from:seed:)`).
    func initializeFromBase(_ model: Model, seed: UInt64) throws {
        let niter: Int?
        switch config.initLoraWeights {
        case .kaiming, .gaussian, .random: return try initialize(seed: seed)
        case .pissa(let n): niter = n
        case .olora: niter = nil
        }
        let isPiSSA = config.initLoraWeights != .olora
        try checkFits(model.config)
        if model.attachments.contains(where: { $0.adapter === self && $0.merged }) {
            throw LoRAError.wrongState("adapter \(name) is merged into the model; unmerge it before initialising it")
        }
        var rng = SplitMix64(seed: seed)
        var factors: [(a: [Float], b: [Float])] = []
        for s in slots {
            let r = s.r
            let inF = s.inFeatures
            let outF = s.outFeatures
            guard r <= min(inF, outF) else {
                throw LoRAError.invalidArgument(
                    "\(s.moduleName): r = \(r) exceeds min(in, out) = \(min(inF, outF)); \(isPiSSA ? "PiSSA takes r singular vectors" : "OLoRA takes r columns of Q") of its [\(outF), \(inF)] weight"
                )
            }
            if isPiSSA {
                guard s.scaling.isFinite, s.scaling > 0 else {
                    throw LoRAError.invalidArgument("\(s.moduleName): PiSSA needs a positive scaling (lora_alpha > 0), got \(s.scaling)")
                }
            }
            // W [out, in] from the Conv1D weight [in, out].
            let conv = model.weightMatrix(layer: s.layer, target: s.target).dequantized()
            var w = [Float](repeating: 0, count: outF * inF)
            for i in 0..<inF {
                for o in 0..<outF { w[o * inF + i] = conv[i * outF + o] }
            }
            if w.contains(where: { !$0.isFinite }) {
                throw LoRAError.numerical("\(s.moduleName): the base weight holds NaN or infinite values")
            }
            var a = [Float](repeating: 0, count: r * inF)
            var b = [Float](repeating: 0, count: outF * r)
            if isPiSSA {
                let d =
                    try niter.map { try Linalg.svdLowRank(w, m: outF, n: inF, rank: r, niter: $0, rng: &rng) }
                    ?? Linalg.svd(w, m: outF, n: inF)
                for j in 0..<r {
                    let root = (d.s[j] / s.scaling).squareRoot()
                    for i in 0..<inF { a[j * inF + i] = root * d.vt[j * inF + i] }
                    for o in 0..<outF { b[o * r + j] = d.u[o * d.k + j] * root }
                }
            } else {
                let (q, rr) = try Linalg.qr(w, m: outF, n: inF)
                let k = min(outF, inF)
                for j in 0..<r {
                    for i in 0..<inF { a[j * inF + i] = rr[j * inF + i] }
                    for o in 0..<outF { b[o * r + j] = q[o * k + j] }
                }
            }
            if a.contains(where: { !$0.isFinite }) || b.contains(where: { !$0.isFinite }) {
                throw LoRAError.numerical("\(s.moduleName): the \(isPiSSA ? "SVD" : "QR") of the base weight gave non-finite factors")
            }
            factors.append((a, b))
        }
        // Commit: A, B, their copies A0, B0, and the residual W − s·B·A in the model.
        let initial = try FloatBlock(count: params.count)
        for (s, f) in zip(slots, factors) {
            A(s).update(from: f.a, count: s.countA)
            B(s).update(from: f.b, count: s.countB)
        }
        initial.base.update(from: params.base, count: params.count)
        try model.applyDelta(self, factor: -1, check: false)
        initialParams = initial
    }

    /// The adapter as a plain LoRA for the unmodified base model (PEFT's
    /// `save_pretrained(path_initial_model_for_weight_conversion=...)`):
    /// ΔW = s·(B·A − B0·A0) = s·B'·A' with A' = cat([A, A0], dim 0) [2r, in]
    /// and B' = cat([B, −B0], dim 1) [out, 2r]. The config doubles r and the
    /// rank_pattern values, and multiplies lora_alpha and the alpha_pattern
    /// values by 2 (by √2 with rsLoRA) so every module keeps its scaling;
    /// init_lora_weights becomes true. (PEFT refuses rsLoRA together with
    /// patterns; the √2 rule handles them.)
    ///
    /// A0, B0 come from `initial` (e.g. the adapter saved right after
    /// initialisation, loaded back) or else from `initialParams`.
    public func convertedForOriginalBase(initial: Adapter? = nil, name newName: String? = nil) throws -> Adapter {
        // A0, B0 of slot i.
        let start: (Int) -> (a: FloatPtr, b: FloatPtr)
        if let initial {
            let same =
                initial.slots.count == slots.count
                && zip(initial.slots, slots).allSatisfy { p, q in
                    p.moduleName == q.moduleName && p.r == q.r && p.inFeatures == q.inFeatures && p.outFeatures == q.outFeatures
                        && abs(p.scaling - q.scaling) <= 1e-6 * abs(q.scaling)
                }
            guard same else {
                throw LoRAError.invalidArgument(
                    "the initial adapter \(initial.name) does not have the modules, ranks and scalings of \(name)")
            }
            start = { i in (initial.A(initial.slots[i]), initial.B(initial.slots[i])) }
        } else if let p = initialParams {
            start = { [slots] i in (p.base + slots[i].offsetA, p.base + slots[i].offsetB) }
        } else {
            throw LoRAError.wrongState(
                "adapter \(name) has no initial weights: it was not initialised by initialize(from:seed:) with PiSSA or OLoRA; pass the initial adapter"
            )
        }
        for block in [params, initial?.params ?? initialParams] {
            guard let block else { continue }
            for i in 0..<block.count where !block.base[i].isFinite {
                throw LoRAError.numerical("adapter \(name) or its initial weights hold NaN or infinite values")
            }
        }
        var c = config
        let alphaFactor = config.useRSLoRA ? 2.0.squareRoot() : 2
        c.r = config.r * 2
        c.loraAlpha = config.loraAlpha * alphaFactor
        c.rankPattern = config.rankPattern.map { ($0.key, $0.value * 2) }
        c.alphaPattern = config.alphaPattern.map { ($0.key, $0.value * alphaFactor) }
        c.initLoraWeights = .kaiming
        let out = try Adapter(config: c, modelConfig: modelConfig, name: newName ?? name)
        for (index, s) in slots.enumerated() {
            guard let ns = out.slot(layer: s.layer, target: s.target), ns.r == 2 * s.r,
                abs(ns.scaling - s.scaling) <= 1e-6 * abs(s.scaling)
            else {
                throw LoRAError.invalidArgument(
                    "internal: converted module \(s.moduleName) did not get rank \(2 * s.r) and scaling \(s.scaling)")
            }
            let (a0, b0) = start(index)
            let r = s.r
            let inF = s.inFeatures
            let na = out.A(ns)
            let nb = out.B(ns)
            na.update(from: A(s), count: s.countA)
            (na + r * inF).update(from: a0, count: s.countA)
            for o in 0..<s.outFeatures {
                for j in 0..<r {
                    nb[o * 2 * r + j] = B(s)[o * r + j]
                    nb[o * 2 * r + r + j] = -b0[o * r + j]
                }
            }
        }
        return out
    }
}
