import Foundation

// Merging an adapter into the base weights and taking it back out. The
// merged model is written by Model.save (HFExport.swift).

extension Model {
    /// Folds an adapter into the base weights: W += scale·s·(B·A)ᵀ per module
    /// (Conv1D weights are [in, out]). The adapter stays attached but is no
    /// longer applied on the fly. Not attached yet: it is attached merged.
    /// Refuses (and changes nothing) if the result would not be finite.
    ///
    /// DoRA (PEFT's DoraLinearVariant.merge): W' = (W + ΔW) ⊙ m / ‖W + ΔW‖,
    /// the norm per output feature (a column of W [in, out]); it is kept for
    /// `unmerge`. A DoRA adapter merges only into weights that hold no other
    /// merged adapter (PEFT takes the norm of the unmerged base), and while
    /// one is merged no other adapter is merged or unmerged.
    public func merge(_ adapter: Adapter) throws {
        if let i = attachments.firstIndex(where: { $0.adapter === adapter }) {
            guard !attachments[i].merged else { throw LoRAError.wrongState("adapter \(adapter.name) is already merged") }
            if adapter.embedding != nil, config.tieWordEmbeddings {
                // PEFT merges into the shared weight, which changes the LM head too
                // (its warning, peft#2777): the merged model would not be the adapter's.
                throw LoRAError.unsupported(
                    "merging adapter \(adapter.name): its LoRA on wte would also change GPT-2's tied LM head (see huggingface/peft#2777)")
            }
            try checkDoRAMergeOrder(adapter, merging: true)
            let scale = attachments[i].enabled ? attachments[i].scale : 0
            for m in adapter.savedModules {
                if let o = attachments.first(where: { $0.merged && $0.adapter.savedModules.contains { $0.kind == m.kind } }) {
                    throw LoRAError.wrongState("adapter \(o.adapter.name), merged, also saves \(m.moduleName); unmerge it first")
                }
            }
            if adapter.config.useDoRA {
                setDoRAMergeNorms(i, try mergeDoRA(adapter, scale: scale))
            } else {
                try applyDelta(adapter, factor: scale, check: true)
            }
            // modules_to_save: the trained copies replace the model's (PEFT's merge_and_unload).
            if scale != 0, !adapter.savedModules.isEmpty {
                var backup: [[Float]] = []
                for m in adapter.savedModules {
                    let (w, b) = layerNormPointers(m.kind)
                    backup.append(
                        Array(UnsafeBufferPointer(start: w, count: m.count)) + Array(UnsafeBufferPointer(start: b, count: m.count)))
                    w.update(from: adapter.params.base + m.offset, count: m.count)
                    b.update(from: adapter.params.base + m.offset + m.count, count: m.count)
                }
                setSavedModulesBackup(i, backup)
            }
            setMerged(i, true)
        } else {
            try attach(adapter)
            do { try merge(adapter) } catch { try? detach(adapter); throw error }
        }
    }

    /// Takes a merged adapter back out of the base weights (to float rounding)
    /// and applies it on the fly again.
    public func unmerge(_ adapter: Adapter) throws {
        guard let i = attachments.firstIndex(where: { $0.adapter === adapter }), attachments[i].merged else {
            throw LoRAError.wrongState("adapter \(adapter.name) is not merged")
        }
        try checkDoRAMergeOrder(adapter, merging: false)
        let scale = attachments[i].enabled ? attachments[i].scale : 0
        if adapter.config.useDoRA {
            if let norms = attachments[i].doraMergeNorms { try unmergeDoRA(adapter, scale: scale, norms: norms) }
            setDoRAMergeNorms(i, nil)
        } else {
            try applyDelta(adapter, factor: -scale, check: false)
        }
        if let backup = attachments[i].savedModulesBackup {
            for (m, old) in zip(adapter.savedModules, backup) {
                let (w, b) = layerNormPointers(m.kind)
                w.update(from: old, count: m.count)
                b.update(from: Array(old[m.count...]), count: m.count)
            }
            setSavedModulesBackup(i, nil)
        }
        setMerged(i, false)
    }

    /// Refuses what would mix a merged DoRA adapter with other merged ones.
    private func checkDoRAMergeOrder(_ adapter: Adapter, merging: Bool) throws {
        let others = attachments.filter { $0.merged && $0.adapter !== adapter }
        if let d = others.first(where: { $0.adapter.config.useDoRA }) {
            throw LoRAError.wrongState(
                "DoRA adapter \(d.adapter.name) is merged into the weights; unmerge it before \(merging ? "merging" : "unmerging") \(adapter.name)"
            )
        }
        if merging, adapter.config.useDoRA, let o = others.first {
            throw LoRAError.wrongState(
                "adapter \(o.adapter.name) is merged into the weights; a DoRA adapter (\(adapter.name)) merges only into the unmerged base")
        }
    }

    /// W ← (W + ΔW) ⊙ m / ‖W + ΔW‖ per slot; returns the norms. Computed
    /// into scratch first: a non-finite result leaves the weights untouched.
    /// A reduced-precision base is changed in F32 and stored again in its dtype.
    private func mergeDoRA(_ adapter: Adapter, scale: Float) throws -> [[Float]]? {
        if scale == 0 { return nil }
        var results: [(m: BaseMatrix, name: String, merged: [Float])] = []
        var norms: [[Float]] = []
        for s in adapter.slots {
            let m = weightMatrix(layer: s.layer, target: s.target)
            var t = m.dequantized()
            let out = s.outFeatures
            let b = adapter.branch(s)
            let wn = t.withUnsafeBufferPointer { DoRAFactors.columnNorms(b, weight: $0.baseAddress!, factor: scale) }
            let mag = adapter.magnitude(s)!
            t.withUnsafeMutableBufferPointer { b.addDelta(to: $0.baseAddress!, factor: scale) }
            for i in 0..<s.inFeatures {
                for j in 0..<out { t[i * out + j] *= mag[j] / wn[j] }
            }
            guard t.allSatisfy(\.isFinite) else {
                throw LoRAError.numerical("merging DoRA adapter \(adapter.name) gives non-finite weights in \(s.moduleName)")
            }
            try m.validate(t, name: s.moduleName)
            results.append((m, s.moduleName, t))
            norms.append(wn)
        }
        for r in results { try r.m.store(r.merged, name: r.name) }
        return norms
    }

    /// The inverse of mergeDoRA with its norms: W ← W' / (m / norm) − ΔW.
    private func unmergeDoRA(_ adapter: Adapter, scale: Float, norms: [[Float]]) throws {
        for (s, wn) in zip(adapter.slots, norms) {
            let m = weightMatrix(layer: s.layer, target: s.target)
            var w = m.dequantized()
            let out = s.outFeatures
            let mag = adapter.magnitude(s)!
            for i in 0..<s.inFeatures {
                for j in 0..<out { w[i * out + j] /= mag[j] / wn[j] }
            }
            w.withUnsafeMutableBufferPointer { adapter.branch(s).addDelta(to: $0.baseAddress!, factor: -scale) }
            try m.store(w, name: s.moduleName)
        }
    }

    /// W += factor·ΔW for every slot of the adapter (LoRABranch.addDelta),
    /// the module's bias += factor·s·b with lora_bias,
    /// and wte[vocab, C] += factor·s·Aᵀ·Bᵀ for LoRA on the (untied) embedding.
    /// A reduced-precision base is changed in F32 and stored again in its
    /// dtype: merging re-rounds the weights (Q8_0 re-quantizes the blocks), so
    /// an unmerge restores them only within the dtype's rounding.
    func applyDelta(_ adapter: Adapter, factor: Float, check: Bool) throws {
        if factor == 0 { return }
        var embedded: [Float]? = nil
        if let e = adapter.embedding {
            var t = weights.wte.dequantized()
            t.withUnsafeMutableBufferPointer { tp in
                gemm(
                    transA: true, transB: true, M: e.vocabSize, N: e.nEmbd, K: e.r, alpha: factor * e.scaling,
                    A: adapter.params.base + e.offsetA, lda: e.vocabSize, B: adapter.params.base + e.offsetB, ldb: e.r,
                    beta: 1, C: tp.baseAddress!, ldc: e.nEmbd)
            }
            if check, t.contains(where: { !$0.isFinite }) {
                throw LoRAError.numerical("merging adapter \(adapter.name) gives non-finite weights in transformer.wte")
            }
            try weights.wte.validate(t, name: "transformer.wte")
            embedded = t
        }
        if check || weights.dtype != .f32 {
            // Compute into scratch first so a refused result leaves the weights untouched.
            for s in adapter.slots {
                let m = weightMatrix(layer: s.layer, target: s.target)
                var w = m.dequantized()
                w.withUnsafeMutableBufferPointer { adapter.branch(s).addDelta(to: $0.baseAddress!, factor: factor) }
                if w.contains(where: { !$0.isFinite }) {
                    throw LoRAError.numerical("merging adapter \(adapter.name) gives non-finite weights in \(s.moduleName)")
                }
                try m.validate(w, name: s.moduleName)
            }
        }
        if check {
            for s in adapter.slots {
                guard let b = adapter.loraBias(s) else { continue }
                let bias = biasPointer(layer: s.layer, target: s.target)
                let alpha = factor * s.scaling
                if (0..<s.outFeatures).contains(where: { !(bias[$0] + alpha * b[$0]).isFinite }) {
                    throw LoRAError.numerical("merging adapter \(adapter.name) gives a non-finite bias in \(s.moduleName)")
                }
            }
        }
        for s in adapter.slots {
            let m = weightMatrix(layer: s.layer, target: s.target)
            if let p = m.f32 {
                adapter.branch(s).addDelta(to: p, factor: factor)
            } else {
                var w = m.dequantized()
                w.withUnsafeMutableBufferPointer { adapter.branch(s).addDelta(to: $0.baseAddress!, factor: factor) }
                try m.store(w, name: s.moduleName)
            }
        }
        // lora_bias: the module's bias += factor·s·b (PEFT's merge).
        for s in adapter.slots {
            guard let b = adapter.loraBias(s) else { continue }
            let bias = biasPointer(layer: s.layer, target: s.target)
            let alpha = factor * s.scaling
            for j in 0..<s.outFeatures { bias[j] += alpha * b[j] }
        }
        // wte last, after every check has passed.
        if let t = embedded { try weights.wte.store(t, name: "transformer.wte") }
    }

    /// A LayerNorm's weight and bias [n_embd] in the model.
    func layerNormPointers(_ kind: SavedModule.Kind) -> (weight: FloatPtr, bias: FloatPtr) {
        switch kind {
        case .ln1(let l): return (weights.layers[l].ln1W, weights.layers[l].ln1B)
        case .ln2(let l): return (weights.layers[l].ln2W, weights.layers[l].ln2B)
        case .lnf: return (weights.lnfW, weights.lnfB)
        }
    }

    func biasPointer(layer: Int, target: LoRATarget) -> FloatPtr {
        let lw = weights.layers[layer]
        switch target {
        case .attnCAttn: return lw.attnB
        case .attnCProj: return lw.attnProjB
        case .mlpCFC: return lw.fcB
        case .mlpCProj: return lw.mlpProjB
        }
    }

    /// The base weight a LoRA target adapts, in the model's dtype.
    func weightMatrix(layer: Int, target: LoRATarget) -> BaseMatrix {
        let lw = weights.layers[layer]
        switch target {
        case .attnCAttn: return lw.attnW
        case .attnCProj: return lw.attnProjW
        case .mlpCFC: return lw.fcW
        case .mlpCProj: return lw.mlpProjW
        }
    }
}
