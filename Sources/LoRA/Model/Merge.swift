import Foundation

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

    /// W += factor·s·Aᵀ·Bᵀ for every slot of the adapter.
    func applyDelta(_ adapter: Adapter, factor: Float, check: Bool) throws {
        if factor == 0 { return }
        if check {
            // Compute into scratch first so a non-finite result leaves the weights untouched.
            for s in adapter.slots {
                let w = weightPointer(layer: s.layer, target: s.target)
                let n = s.inFeatures * s.outFeatures
                let tmp = try FloatBlock(count: n)
                tmp.base.update(from: w, count: n)
                delta(adapter, s, factor: factor, into: tmp.base)
                for i in 0..<n where !tmp.base[i].isFinite {
                    throw LoRAError.numerical("merging adapter \(adapter.name) gives non-finite weights in \(s.moduleName)")
                }
            }
        }
        for s in adapter.slots { delta(adapter, s, factor: factor, into: weightPointer(layer: s.layer, target: s.target)) }
    }

    private func delta(_ adapter: Adapter, _ s: LoRASlot, factor: Float, into w: FloatPtr) {
        gemm(transA: true, transB: true, M: s.inFeatures, N: s.outFeatures, K: s.r, alpha: factor * s.scaling,
             A: adapter.A(s), lda: s.inFeatures, B: adapter.B(s), ldb: s.r, beta: 1, C: w, ldc: s.outFeatures)
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

    /// Writes the model (with merged adapters folded in) as a Hugging Face
    /// checkpoint: config.json + model.safetensors in transformers' key
    /// layout, and the tokenizer files it was loaded with. Each file is
    /// written atomically.
    public func save(directory: String) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        catch { throw LoRAError.io(path: directory, reason: "cannot create directory: \(error.localizedDescription)") }
        for i in 0..<weights.block.count where !weights.block.base[i].isFinite {
            throw LoRAError.numerical("the model holds NaN or infinite weights; not saved")
        }
        try SafeTensorsWriter.write(weights.tensorsForSaving(), to: directory + "/model.safetensors")
        try AtomicFile.write(config.json(), to: directory + "/config.json")
        if let src = self.directory, URL(fileURLWithPath: src).standardized != URL(fileURLWithPath: directory).standardized {
            for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
                if let data = fm.contents(atPath: src + "/" + name) {
                    try AtomicFile.write(Array(data), to: directory + "/" + name)
                }
            }
        }
    }
}
