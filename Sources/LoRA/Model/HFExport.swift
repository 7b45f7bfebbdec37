import Foundation

// Hugging Face export: a model directory transformers loads
// (GPT2LMHeadModel.from_pretrained). Used by `Model.save` (after a merge:
// `lora merge`) and by full fine-tuning checkpoints.

enum HFExport {
    static let weightsFile = "model.safetensors"
    static let configFile = "config.json"
    /// Tokenizer files copied beside the weights when the model has them.
    static let tokenizerFiles = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

    /// Writes config.json + model.safetensors (transformers' key layout; the
    /// matrices in the weights' dtype, see QuantizedLayout) into an existing
    /// directory, each file atomically.
    static func write(_ weights: GPT2Weights, to directory: String) throws {
        var metadata = ["format": "pt"]
        if weights.dtype != .f32 { metadata[QuantizedLayout.dtypeKey] = weights.dtype.rawValue }
        try SafeTensorsWriter.write(weights.tensorsForSaving(), to: directory + "/" + weightsFile, metadata: metadata)
        try AtomicFile.write(weights.config.json(), to: directory + "/" + configFile)
    }
}

extension GPT2Weights {
    /// The state dict as transformers saves it (`transformer.` prefix, no
    /// tied head): F32, the matrices in the weights' dtype.
    package func tensorsForSaving() -> [TensorData] {
        GPT2Layout(config: config).slots.flatMap { slot -> [TensorData] in
            let name = slot.name == "lm_head.weight" ? slot.name : "transformer." + slot.name
            if let own = layout[slot.name] {
                return [
                    TensorData(name: name, shape: slot.shape, floats: UnsafeBufferPointer(start: block.base + own.offset, count: own.count))
                ]
            }
            guard let m = matrices[slot.name] else { return [] }
            return QuantizedLayout.tensors(of: m, name: name)
        }
    }
}

extension Model {
    /// Writes the model (with merged adapters folded in) as a Hugging Face
    /// checkpoint: config.json + model.safetensors in transformers' key
    /// layout, and the tokenizer files it was loaded with. Each file is
    /// written atomically.
    public func save(directory: String) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw LoRAError.io(path: directory, reason: "cannot create directory: \(error.localizedDescription)")
        }
        for i in 0..<weights.block.count where !weights.block.base[i].isFinite {
            throw LoRAError.numerical("the model holds NaN or infinite weights; not saved")
        }
        try HFExport.write(weights, to: directory)
        if let src = self.directory, URL(fileURLWithPath: src).standardized != URL(fileURLWithPath: directory).standardized {
            for name in HFExport.tokenizerFiles {
                if let data = fm.contents(atPath: src + "/" + name) {
                    try AtomicFile.write(Array(data), to: directory + "/" + name)
                }
            }
        }
    }
}
