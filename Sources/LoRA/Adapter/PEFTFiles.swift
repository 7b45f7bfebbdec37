import Foundation

// PEFT's adapter files: adapter_config.json (LoRAConfig, AdapterConfig.swift)
// and adapter_model.safetensors with `base_model.model.<module>.lora_A.weight`
// [r, in] and `lora_B.weight` [out, r] per adapted module, and with DoRA
// `base_model.model.<module>.lora_magnitude_vector` [out] (PEFT drops the
// in-memory `.default.weight` suffix when saving), and for modules_to_save
// `base_model.model.<module>.weight` / `.bias`, and for LoRA on wte
// `base_model.model.transformer.wte.lora_embedding_A` [r, vocab] / `_B` [n_embd, r].

extension Adapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    static let keyPrefix = "base_model.model."

    /// The tensors PEFT writes: `base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r].
    package func tensors() -> [TensorData] {
        var out: [TensorData] = []
        for s in slots {
            out.append(
                TensorData(
                    name: Adapter.keyPrefix + s.moduleName + ".lora_A.weight", shape: [s.r, s.inFeatures],
                    floats: UnsafeBufferPointer(start: A(s), count: s.countA)))
            out.append(
                TensorData(
                    name: Adapter.keyPrefix + s.moduleName + ".lora_B.weight", shape: [s.outFeatures, s.r],
                    floats: UnsafeBufferPointer(start: B(s), count: s.countB)))
            if let b = loraBias(s) {
                out.append(
                    TensorData(
                        name: Adapter.keyPrefix + s.moduleName + ".lora_B.bias", shape: [s.outFeatures],
                        floats: UnsafeBufferPointer(start: b, count: s.outFeatures)))
            }
            if let m = magnitude(s) {
                out.append(
                    TensorData(
                        name: Adapter.keyPrefix + s.moduleName + ".lora_magnitude_vector", shape: [s.outFeatures],
                        floats: UnsafeBufferPointer(start: m, count: s.outFeatures)))
            }
        }
        if let e = embedding {
            out.append(
                TensorData(
                    name: Adapter.keyPrefix + e.moduleName + ".lora_embedding_A", shape: [e.r, e.vocabSize],
                    floats: UnsafeBufferPointer(start: params.base + e.offsetA, count: e.countA)))
            out.append(
                TensorData(
                    name: Adapter.keyPrefix + e.moduleName + ".lora_embedding_B", shape: [e.nEmbd, e.r],
                    floats: UnsafeBufferPointer(start: params.base + e.offsetB, count: e.countB)))
        }
        for m in savedModules {
            for (suffix, off) in [("weight", m.offset), ("bias", m.offset + m.count)] {
                out.append(
                    TensorData(
                        name: Adapter.keyPrefix + m.moduleName + "." + suffix, shape: [m.count],
                        floats: UnsafeBufferPointer(start: params.base + off, count: m.count)))
            }
        }
        return out
    }

    /// Saves `adapter_config.json` + `adapter_model.safetensors` into `directory`
    /// (created if needed), each written atomically.
    public func save(directory: String, config override: LoRAConfig? = nil) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw LoRAError.io(path: directory, reason: "cannot create directory: \(error.localizedDescription)")
        }
        for i in 0..<params.count where !params.base[i].isFinite {
            throw LoRAError.numerical("adapter \(name) holds NaN or infinite weights; not saved")
        }
        try SafeTensorsWriter.write(tensors(), to: directory + "/" + Adapter.weightsFile)
        try AtomicFile.write((override ?? config).json(), to: directory + "/" + Adapter.configFile)
    }

    /// Loads a PEFT adapter directory for a model of shape `modelConfig`.
    public static func load(directory: String, modelConfig: GPT2Config, name: String = "default") throws -> Adapter {
        let cfgPath = directory + "/" + configFile
        let config = try LoRAConfig.load(path: cfgPath)
        let wPath = directory + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: wPath) else {
            if FileManager.default.fileExists(atPath: directory + "/adapter_model.bin") {
                throw LoRAError.unsupported("\(directory)/adapter_model.bin: pickle weights; save the adapter with safe_serialization=True")
            }
            throw LoRAError.io(path: wPath, reason: "file not found")
        }
        let file = try SafeTensorsFile(path: wPath)
        let adapter: Adapter
        do { adapter = try Adapter(config: config, modelConfig: modelConfig, name: name) } catch let LoRAError.invalidArgument(m) {
            throw LoRAError.invalidFile(path: cfgPath, reason: m)
        }
        var expected: [String: (shape: [Int], into: FloatPtr)] = [:]
        for s in adapter.slots {
            expected[keyPrefix + s.moduleName + ".lora_A.weight"] = ([s.r, s.inFeatures], adapter.A(s))
            expected[keyPrefix + s.moduleName + ".lora_B.weight"] = ([s.outFeatures, s.r], adapter.B(s))
            if let m = adapter.magnitude(s) { expected[keyPrefix + s.moduleName + ".lora_magnitude_vector"] = ([s.outFeatures], m) }
            if let b = adapter.loraBias(s) { expected[keyPrefix + s.moduleName + ".lora_B.bias"] = ([s.outFeatures], b) }
        }
        // modules_to_save: PEFT saves the trained copy under the module's own
        // name (`...<module>.weight`, without `.modules_to_save.default`).
        if let e = adapter.embedding {
            expected[keyPrefix + e.moduleName + ".lora_embedding_A"] = ([e.r, e.vocabSize], adapter.params.base + e.offsetA)
            expected[keyPrefix + e.moduleName + ".lora_embedding_B"] = ([e.nEmbd, e.r], adapter.params.base + e.offsetB)
        }
        for m in adapter.savedModules {
            expected[keyPrefix + m.moduleName + ".weight"] = ([m.count], adapter.params.base + m.offset)
            expected[keyPrefix + m.moduleName + ".bias"] = ([m.count], adapter.params.base + m.offset + m.count)
        }
        var seen = Set<String>()
        for info in file.tensors {
            guard info.name.hasPrefix(keyPrefix) else {
                throw LoRAError.invalidFile(
                    path: wPath, reason: "tensor \(info.name) lacks the base_model.model. prefix PEFT writes (PEFT would silently skip it)")
            }
            if !config.useDoRA, info.name.hasSuffix(".lora_magnitude_vector") || info.name.contains(".lora_magnitude_vector.") {
                throw LoRAError.invalidFile(
                    path: wPath, reason: "tensor \(info.name) is a DoRA magnitude but \(configFile) does not set use_dora")
            }
            if !config.loraBias, info.name.hasSuffix(".lora_B.bias") {
                throw LoRAError.invalidFile(
                    path: wPath, reason: "tensor \(info.name) is a lora_bias but \(configFile) does not set lora_bias")
            }
            guard let (shape, into) = expected[info.name] else {
                throw LoRAError.invalidFile(path: wPath, reason: "tensor \(info.name) does not belong to a module the config targets")
            }
            guard info.shape == shape else {
                throw LoRAError.invalidFile(
                    path: wPath, reason: "tensor \(info.name) has shape \(info.shape), the base model needs \(shape)")
            }
            try file.copyFloats(info, into: into)
            seen.insert(info.name)
        }
        if let missing = expected.keys.sorted().first(where: { !seen.contains($0) }) {
            throw LoRAError.invalidFile(path: wPath, reason: "missing tensor \(missing)")
        }
        return adapter
    }
}
