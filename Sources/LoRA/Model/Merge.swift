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
    func applyDelta(_ adapter: Adapter, factor: Float, check: Bool) throws {
        if factor == 0 { return }
        if check {
            // Compute into scratch first so a non-finite result leaves the weights untouched.
            for s in adapter.slots {
                let w = weightPointer(layer: s.layer, target: s.target)
                let n = s.inFeatures * s.outFeatures
                let tmp = try FloatBlock(count: n)
                tmp.base.update(from: w, count: n)
                adapter.branch(s).addDelta(to: tmp.base, factor: factor)
                for i in 0..<n where !tmp.base[i].isFinite {
                    throw LoRAError.numerical("merging adapter \(adapter.name) gives non-finite weights in \(s.moduleName)")
                }
            }
        }
        for s in adapter.slots { adapter.branch(s).addDelta(to: weightPointer(layer: s.layer, target: s.target), factor: factor) }
    }

    func weightPointer(layer: Int, target: LoRATarget) -> FloatPtr {
        let lw = weights.layers[layer]
        switch target {
        case .attnCAttn: return lw.attnW
        case .attnCProj: return lw.attnProjW
        case .mlpCFC: return lw.fcW
        case .mlpCProj: return lw.mlpProjW
        }
    }
}
