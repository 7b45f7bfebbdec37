import Foundation

// Merging an adapter into the base weights and taking it back out. The
// merged model is written by Model.save (HFExport.swift).

extension Model {
    /// Folds an adapter into the base weights: W += scale·s·(B·A)ᵀ per module
    /// (Conv1D weights are [in, out]). The adapter stays attached but is no
    /// longer applied on the fly. Not attached yet: it is attached merged.
    /// Refuses (and changes nothing) if the result would not be finite.
    public func merge(_ adapter: Adapter) throws {
        if let i = attachments.firstIndex(where: { $0.adapter === adapter }) {
            guard !attachments[i].merged else { throw LoRAError.wrongState("adapter \(adapter.name) is already merged") }
            let scale = attachments[i].enabled ? attachments[i].scale : 0
            try applyDelta(adapter, factor: scale, check: true)
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
        let scale = attachments[i].enabled ? attachments[i].scale : 0
        try applyDelta(adapter, factor: -scale, check: false)
        setMerged(i, false)
    }

    /// W += factor·ΔW for every slot of the adapter (LoRABranch.addDelta).
    /// A reduced-precision base is changed in F32 and stored again in its
    /// dtype: merging re-rounds the weights (Q8_0 re-quantizes the blocks), so
    /// an unmerge restores them only within the dtype's rounding.
    func applyDelta(_ adapter: Adapter, factor: Float, check: Bool) throws {
        if factor == 0 { return }
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
