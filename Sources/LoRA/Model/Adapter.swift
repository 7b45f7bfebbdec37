import Foundation

/// The four GPT-2 Conv1D layers LoRA can adapt.
public enum LoraTarget: Int, CaseIterable, Sendable {
    case attnCAttn, attnCProj, mlpCFC, mlpCProj

    /// The module's name inside a block: `attn.c_attn`, ...
    public var suffix: String {
        switch self {
        case .attnCAttn: return "attn.c_attn"
        case .attnCProj: return "attn.c_proj"
        case .mlpCFC: return "mlp.c_fc"
        case .mlpCProj: return "mlp.c_proj"
        }
    }

    /// (in, out) features for a config.
    public func shape(_ c: GPT2Config) -> (inFeatures: Int, outFeatures: Int) {
        switch self {
        case .attnCAttn: return (c.nEmbd, 3 * c.nEmbd)
        case .attnCProj: return (c.nEmbd, c.nEmbd)
        case .mlpCFC: return (c.nEmbd, c.innerSize)
        case .mlpCProj: return (c.innerSize, c.nEmbd)
        }
    }

    public static func moduleName(layer: Int, _ t: LoraTarget) -> String { "transformer.h.\(layer).\(t.suffix)" }
}

/// One adapted module: its place, rank, scaling and where A and B live.
public struct LoraSlot: Sendable, Equatable {
    public let layer: Int
    public let target: LoraTarget
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

/// Which modules a LoraConfig adapts in a GPT-2 model, with PEFT's matching
/// rules (target_modules as names/suffixes or a full-match regex,
/// exclude_modules, layers_to_transform, rank/alpha patterns).
public enum LoraTargeting {
    /// Every module name of GPT2LMHeadModel, as PEFT walks them.
    static func allModuleNames(_ c: GPT2Config) -> [(name: String, kind: String)] {
        var names: [(String, String)] = [("transformer", "GPT2Model"), ("transformer.wte", "Embedding"),
                                          ("transformer.wpe", "Embedding"), ("transformer.drop", "Dropout"),
                                          ("transformer.h", "ModuleList")]
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)"
            names += [(p, "GPT2Block"), (p + ".ln_1", "LayerNorm"), (p + ".attn", "GPT2Attention"),
                      (p + ".attn.c_attn", "Conv1D"), (p + ".attn.c_proj", "Conv1D"),
                      (p + ".attn.attn_dropout", "Dropout"), (p + ".attn.resid_dropout", "Dropout"),
                      (p + ".ln_2", "LayerNorm"), (p + ".mlp", "GPT2MLP"), (p + ".mlp.c_fc", "Conv1D"),
                      (p + ".mlp.c_proj", "Conv1D"), (p + ".mlp.act", "Activation"), (p + ".mlp.dropout", "Dropout")]
        }
        names += [("transformer.ln_f", "LayerNorm"), ("lm_head", "Linear")]
        return names
    }

    static func regex(_ pattern: String) throws -> Regex<AnyRegexOutput> {
        do { return try Regex(pattern) } catch {
            throw LoraError.invalidArgument("invalid regular expression \"\(pattern)\": \(error)")
        }
    }

    static func matches(_ targets: LoraConfig.Targets, _ name: String) throws -> Bool {
        switch targets {
        case .regex(let p): return try regex(p).wholeMatch(in: name) != nil
        case .names(let list): return list.contains { name == $0 || name.hasSuffix("." + $0) }
        }
    }

    /// The layer index PEFT reads from a module name (the first numbered segment).
    static func layerIndex(_ name: String, patterns: [String]?) -> Int? {
        let parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        // ".*?\.[^.]*\.(\d+)\." : a number segment after at least two segments, followed by more.
        for i in 2..<max(2, parts.count) where i + 1 < parts.count {
            guard let n = Int(parts[i]), parts[i].allSatisfy(\.isNumber) else { continue }
            if let patterns, !patterns.isEmpty {
                if patterns.contains(parts[i - 1]) { return n }
            } else {
                return n
            }
        }
        return nil
    }

    /// PEFT's get_pattern_key: the first pattern key k with `(.*\.)?(k)$` matching the name.
    static func patternValue<V>(_ pattern: [(key: String, value: V)], _ name: String) throws -> V? {
        for (k, v) in pattern where try regex("(.*\\.)?(\(k))").wholeMatch(in: name) != nil { return v }
        return nil
    }

    /// The adapted modules, in (layer, target) order.
    public static func resolve(_ config: LoraConfig, model c: GPT2Config) throws -> [(layer: Int, target: LoraTarget, r: Int, alpha: Double)] {
        try config.validate()
        let targets = config.targetModules ?? .names(["c_attn"])
        var out: [(Int, LoraTarget, Int, Double)] = []
        for (name, kind) in allModuleNames(c) {
            if let ex = config.excludeModules, try matches(ex, name) { continue }
            guard try matches(targets, name) else { continue }
            if case .names = targets, let layers = config.layersToTransform, !layers.isEmpty {
                guard let idx = layerIndex(name, patterns: config.layersPattern), layers.contains(idx) else { continue }
            }
            guard kind == "Conv1D",
                  let target = LoraTarget.allCases.first(where: { name.hasSuffix("." + $0.suffix) }),
                  let layer = layerIndex(name, patterns: nil)
            else {
                throw LoraError.unsupported("target module \(name) (\(kind)): LoRA is implemented for attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj")
            }
            let r = try patternValue(config.rankPattern, name) ?? config.r
            let alpha = try patternValue(config.alphaPattern, name) ?? config.loraAlpha
            out.append((layer, target, r, alpha))
        }
        if out.isEmpty {
            let desc: String
            switch targets {
            case .names(let n): desc = n.joined(separator: ", ")
            case .regex(let r): desc = r
            }
            throw LoraError.invalidArgument("target modules {\(desc)} not found in the base model (GPT-2 has attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in layers 0 to \(c.nLayer - 1))")
        }
        return out.sorted { ($0.0, $0.1.rawValue) < ($1.0, $1.1.rawValue) }
    }
}

/// A LoRA adapter for a GPT-2 shape: the config, the adapted modules and all
/// A/B matrices in one parameter block.
public final class Adapter: @unchecked Sendable {
    public let config: LoraConfig
    public let modelConfig: GPT2Config
    public let slots: [LoraSlot]
    /// All A and B matrices.
    public let params: FloatBlock
    public var name: String
    /// A0 and B0 as PiSSA/OLoRA set them (laid out like `params`), kept by
    /// `initialize(from:seed:)` for `convertedForOriginalBase()`; nil otherwise.
    public internal(set) var initialParams: FloatBlock?
    /// slotIndex[layer * 4 + target] → index into slots.
    let slotIndex: [Int?]

    /// An adapter with zeroed A and B for `modelConfig`.
    public init(config: LoraConfig, modelConfig: GPT2Config, name: String = "default") throws {
        let resolved = try LoraTargeting.resolve(config, model: modelConfig)
        var slots: [LoraSlot] = []
        var off = 0
        for (layer, target, r, alpha) in resolved {
            let (fin, fout) = target.shape(modelConfig)
            let scaling = config.useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)
            let slot = LoraSlot(layer: layer, target: target, moduleName: LoraTarget.moduleName(layer: layer, target),
                                r: r, alpha: alpha, scaling: Float(scaling), inFeatures: fin, outFeatures: fout,
                                offsetA: off, offsetB: off + r * fin)
            off += r * fin + fout * r
            slots.append(slot)
        }
        self.config = config
        self.modelConfig = modelConfig
        self.slots = slots
        self.params = try FloatBlock(count: off)
        self.name = name
        var idx = [Int?](repeating: nil, count: modelConfig.nLayer * 4)
        for (i, s) in slots.enumerated() { idx[s.layer * 4 + s.target.rawValue] = i }
        self.slotIndex = idx
    }

    public func slot(layer: Int, target: LoraTarget) -> LoraSlot? {
        slotIndex[layer * 4 + target.rawValue].map { slots[$0] }
    }

    public func A(_ s: LoraSlot) -> FloatPtr { params.base + s.offsetA }
    public func B(_ s: LoraSlot) -> FloatPtr { params.base + s.offsetB }
    public var parameterCount: Int { params.count }

    /// Fresh weights as PEFT initialises them (`init_lora_weights` true,
    /// "gaussian" or false), from a seeded generator. PiSSA and OLoRA read
    /// and change the base weights: use `initialize(from:seed:)` for them.
    public func initialize(seed: UInt64) throws {
        switch config.initLoraWeights {
        case .pissa, .olora:
            throw LoraError.invalidArgument("init_lora_weights \(JSON.compact(config.initLoraWeights.json)) needs the base model: use initialize(from:seed:)")
        default: break
        }
        initialParams = nil
        var rng = SplitMix64(seed: seed)
        for s in slots {
            let a = A(s), b = B(s)
            switch config.initLoraWeights {
            case .kaiming, .pissa, .olora:
                // kaiming_uniform_(a=√5): U(-1/√in, 1/√in); B = 0.
                let bound = 1 / Float(s.inFeatures).squareRoot()
                for i in 0..<s.countA { a[i] = (2 * rng.nextFloat() - 1) * bound }
                b.update(repeating: 0, count: s.countB)
            case .gaussian:
                let std = 1 / Float(s.r)
                for i in 0..<s.countA { a[i] = rng.nextGaussian() * std }
                b.update(repeating: 0, count: s.countB)
            case .random:
                // nn.Linear's default: U(-1/√fan_in, 1/√fan_in) for both.
                let ba = 1 / Float(s.inFeatures).squareRoot(), bb = 1 / Float(s.r).squareRoot()
                for i in 0..<s.countA { a[i] = (2 * rng.nextFloat() - 1) * ba }
                for i in 0..<s.countB { b[i] = (2 * rng.nextFloat() - 1) * bb }
            }
        }
    }

    // MARK: PEFT files

    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    static let keyPrefix = "base_model.model."

    /// The tensors PEFT writes: `base_model.model.<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r].
    public func tensors() -> [TensorData] {
        var out: [TensorData] = []
        for s in slots {
            out.append(TensorData(name: Adapter.keyPrefix + s.moduleName + ".lora_A.weight", shape: [s.r, s.inFeatures],
                                  floats: UnsafeBufferPointer(start: A(s), count: s.countA)))
            out.append(TensorData(name: Adapter.keyPrefix + s.moduleName + ".lora_B.weight", shape: [s.outFeatures, s.r],
                                  floats: UnsafeBufferPointer(start: B(s), count: s.countB)))
        }
        return out
    }

    /// Saves `adapter_config.json` + `adapter_model.safetensors` into `directory`
    /// (created if needed), each written atomically.
    public func save(directory: String, config override: LoraConfig? = nil) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw LoraError.io(path: directory, reason: "cannot create directory: \(error.localizedDescription)")
        }
        for i in 0..<params.count where !params.base[i].isFinite {
            throw LoraError.numerical("adapter \(name) holds NaN or infinite weights; not saved")
        }
        try SafeTensorsWriter.write(tensors(), to: directory + "/" + Adapter.weightsFile)
        try AtomicFile.write((override ?? config).json(), to: directory + "/" + Adapter.configFile)
    }

    /// Loads a PEFT adapter directory for a model of shape `modelConfig`.
    public static func load(directory: String, modelConfig: GPT2Config, name: String = "default") throws -> Adapter {
        let cfgPath = directory + "/" + configFile
        let config = try LoraConfig.load(path: cfgPath)
        let wPath = directory + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: wPath) else {
            if FileManager.default.fileExists(atPath: directory + "/adapter_model.bin") {
                throw LoraError.unsupported("\(directory)/adapter_model.bin: pickle weights; save the adapter with safe_serialization=True")
            }
            throw LoraError.io(path: wPath, reason: "file not found")
        }
        let file = try SafeTensorsFile(path: wPath)
        let adapter: Adapter
        do { adapter = try Adapter(config: config, modelConfig: modelConfig, name: name) }
        catch let LoraError.invalidArgument(m) { throw LoraError.invalidFile(path: cfgPath, reason: m) }
        var expected: [String: (LoraSlot, Bool)] = [:]
        for s in adapter.slots {
            expected[keyPrefix + s.moduleName + ".lora_A.weight"] = (s, true)
            expected[keyPrefix + s.moduleName + ".lora_B.weight"] = (s, false)
        }
        var seen = Set<String>()
        for info in file.tensors {
            guard info.name.hasPrefix(keyPrefix) else {
                throw LoraError.invalidFile(path: wPath, reason: "tensor \(info.name) lacks the base_model.model. prefix PEFT writes (PEFT would silently skip it)")
            }
            if info.name.hasSuffix(".lora_magnitude_vector") || info.name.contains(".lora_magnitude_vector.") {
                throw LoraError.unsupported("\(wPath): \(info.name) is a DoRA magnitude (use_dora)")
            }
            if info.name.hasSuffix(".lora_B.bias") { throw LoraError.unsupported("\(wPath): \(info.name) (lora_bias)") }
            guard let (slot, isA) = expected[info.name] else {
                throw LoraError.invalidFile(path: wPath, reason: "tensor \(info.name) does not belong to a module the config targets")
            }
            let shape = isA ? [slot.r, slot.inFeatures] : [slot.outFeatures, slot.r]
            guard info.shape == shape else {
                throw LoraError.invalidFile(path: wPath, reason: "tensor \(info.name) has shape \(info.shape), the base model needs \(shape)")
            }
            try file.copyFloats(info, into: isA ? adapter.A(slot) : adapter.B(slot))
            seen.insert(info.name)
        }
        if let missing = expected.keys.sorted().first(where: { !seen.contains($0) }) {
            throw LoraError.invalidFile(path: wPath, reason: "missing tensor \(missing)")
        }
        return adapter
    }
}
