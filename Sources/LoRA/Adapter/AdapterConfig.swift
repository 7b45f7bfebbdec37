import Foundation

/// PEFT's `LoRAConfig` as stored in `adapter_config.json` (the fields this
/// engine implements; the others must hold their defaults).
public struct LoRAConfig: Sendable, Equatable {
    public enum Targets: Sendable, Equatable {
        /// Module names or name suffixes (`c_attn`, `attn.c_proj`, `transformer.h.0.mlp.c_fc`).
        case names([String])
        /// A regular expression that must match the full module name.
        case regex(String)
    }

    /// How fresh adapters are initialised (`init_lora_weights`).
    public enum Initialization: Sendable, Equatable {
        /// `true`: A kaiming-uniform (a = √5), B zeros.
        case kaiming
        /// `"gaussian"`: A ~ N(0, 1/r²), B zeros.
        case gaussian
        /// `false`: A and B random (nn.Linear's init): the adapter is not a no-op.
        case random
        /// `"pissa"` / `"pissa_niter_N"`: principal singular triplets of W.
        case pissa(niter: Int?)
        /// `"olora"`: from the QR decomposition of W.
        case olora

        /// PEFT's string values: "gaussian", "pissa", "pissa_niter_N" (N ≥ 0), "olora"; nil for any other.
        public init?(peftName s: String) {
            switch s {
            case "gaussian": self = .gaussian
            case "pissa": self = .pissa(niter: nil)
            case "olora": self = .olora
            default:
                guard s.hasPrefix("pissa_niter_"), let n = Int(s.dropFirst("pissa_niter_".count)), n >= 0 else { return nil }
                self = .pissa(niter: n)
            }
        }

        package var json: JSONValue {
            switch self {
            case .kaiming: return .bool(true)
            case .random: return .bool(false)
            case .gaussian: return .string("gaussian")
            case .pissa(nil): return .string("pissa")
            case .pissa(let n?): return .string("pissa_niter_\(n)")
            case .olora: return .string("olora")
            }
        }
    }

    public var r = 8
    public var loraAlpha: Double = 8
    public var loraDropout: Double = 0
    /// nil: PEFT's default for GPT-2 (`["c_attn"]`).
    public var targetModules: Targets? = nil
    public var excludeModules: Targets? = nil
    public var layersToTransform: [Int]? = nil
    public var layersPattern: [String]? = nil
    public var useRSLoRA = false
    /// Ordered: the first key that matches a module wins (PEFT's get_pattern_key).
    public var rankPattern: [(key: String, value: Int)] = []
    public var alphaPattern: [(key: String, value: Double)] = []
    public var initLoraWeights: Initialization = .kaiming
    /// DoRA (`use_dora`): each adapted module also learns a magnitude per
    /// output feature (see `LoRABranch`'s DoRA section).
    public var useDoRA = false
    /// `lora_bias`: B has a bias [out] (PEFT's `lora_B` as `nn.Linear(r, out,
    /// bias=True)`), added as s·b after x·Aᵀ·Bᵀ and merged into the module's
    /// bias; starts at zero (`.random`: nn.Linear's random init). PEFT's use:
    /// an adapter extracted from a full fine-tune keeps that fine-tune's bias change.
    public var loraBias = false
    /// `modules_to_save`: modules trained in full beside the adapter and saved
    /// with it (PEFT's ModulesToSaveWrapper); matched as PEFT does, by the end
    /// of the module name. LayerNorms (ln_1, ln_2, ln_f) are implemented.
    public var modulesToSave: [String]? = nil
    public var baseModelNameOrPath: String? = nil
    public var revision: String? = nil
    public var taskType: String? = "CAUSAL_LM"

    public init() {}

    public static func == (a: LoRAConfig, b: LoRAConfig) -> Bool {
        a.r == b.r && a.loraAlpha == b.loraAlpha && a.loraDropout == b.loraDropout
            && a.targetModules == b.targetModules && a.excludeModules == b.excludeModules
            && a.layersToTransform == b.layersToTransform && a.layersPattern == b.layersPattern
            && a.useRSLoRA == b.useRSLoRA
            && a.rankPattern.map(\.key) == b.rankPattern.map(\.key) && a.rankPattern.map(\.value) == b.rankPattern.map(\.value)
            && a.alphaPattern.map(\.key) == b.alphaPattern.map(\.key) && a.alphaPattern.map(\.value) == b.alphaPattern.map(\.value)
            && a.initLoraWeights == b.initLoraWeights && a.baseModelNameOrPath == b.baseModelNameOrPath
            && a.revision == b.revision && a.taskType == b.taskType && a.useDoRA == b.useDoRA
            && a.modulesToSave == b.modulesToSave && a.loraBias == b.loraBias
    }

    /// The range checks PEFT and this engine need.
    public func validate() throws {
        guard r >= 1, r <= 1 << 16 else { throw LoRAError.invalidArgument("r must be in 1...65536, got \(r)") }
        guard loraAlpha.isFinite else { throw LoRAError.invalidArgument("lora_alpha must be a finite number") }
        guard loraDropout.isFinite, loraDropout >= 0, loraDropout < 1 else {
            throw LoRAError.invalidArgument("lora_dropout must be in [0, 1)")
        }
        for (k, v) in rankPattern where v < 1 || v > 1 << 16 {
            throw LoRAError.invalidArgument("rank_pattern[\(k)] must be in 1...65536, got \(v)")
        }
        for (k, v) in alphaPattern where !v.isFinite {
            throw LoRAError.invalidArgument("alpha_pattern[\(k)] must be a finite number")
        }
        if let l = layersToTransform, l.contains(where: { $0 < 0 }) {
            throw LoRAError.invalidArgument("layers_to_transform must hold non-negative layer indices")
        }
        if case .pissa(let n?) = initLoraWeights, n < 0 { throw LoRAError.invalidArgument("pissa_niter must be >= 0") }
        if loraBias {
            // As PEFT's LoraConfig: lora_bias only with init_lora_weights true or false.
            guard initLoraWeights == .kaiming || initLoraWeights == .random else {
                throw LoRAError.invalidArgument("lora_bias needs init_lora_weights true or false (as PEFT)")
            }
            guard !useDoRA else { throw LoRAError.unsupported("lora_bias with use_dora is not supported (PEFT refuses it too)") }
        }
    }

    // MARK: adapter_config.json

    /// Keys that must keep PEFT's defaults: each names a feature not implemented here.
    static let unsupportedKeys: [(key: String, isDefault: @Sendable (JSONValue) -> Bool)] = [
        ("bias", { $0.isNull || $0 == .string("none") }),
        ("target_parameters", { $0.isNull || $0 == .array([]) }),
        ("ensure_weight_tying", { $0.isNull || $0 == .bool(false) }),
        ("trainable_token_indices", { $0.isNull }),
        ("layer_replication", { $0.isNull }),
        ("use_qalora", { $0.isNull || $0 == .bool(false) }),
        ("alora_invocation_tokens", { $0.isNull }),
        ("megatron_config", { $0.isNull }),
        ("velora_config", { $0.isNull }),
        ("monteclora_config", { $0.isNull }),
        ("use_bdlora", { $0.isNull || $0 == .bool(false) }),
        ("arrow_config", { $0.isNull }),
        ("kasa_config", { $0.isNull }),
    ]

    /// Parses adapter_config.json. Unknown keys are ignored (PEFT does the same
    /// for forward compatibility); features this engine lacks are refused by name.
    public static func parse(_ bytes: [UInt8], path: String) throws -> LoRAConfig {
        func fail(_ r: String) -> LoRAError { .invalidFile(path: path, reason: r) }
        let json: JSONValue
        do { json = try JSON.parse(bytes) } catch { throw fail("not valid JSON: \(error)") }
        guard let o = json.objectValue else { throw fail("not a JSON object") }
        guard let pt = o["peft_type"]?.stringValue else { throw fail("missing peft_type") }
        guard pt == "LORA" else { throw LoRAError.unsupported("\(path): peft_type \(pt) (only LORA)") }
        for (key, isDefault) in unsupportedKeys {
            if let v = o[key], !isDefault(v) {
                throw LoRAError.unsupported("\(path): \(key) = \(JSON.compact(v)) is not implemented")
            }
        }
        if let f = o["fan_in_fan_out"], f == .bool(false) {
            // PEFT forces fan_in_fan_out to true for GPT-2's Conv1D; false in a file means the same adapter.
        }
        var c = LoRAConfig()
        func int(_ k: String) throws -> Int? {
            guard let v = o[k], !v.isNull else { return nil }
            guard let i = v.intValue else { throw fail("\(k) must be an integer") }
            return i
        }
        func number(_ k: String) throws -> Double? {
            guard let v = o[k], !v.isNull else { return nil }
            guard let d = v.doubleValue else { throw fail("\(k) must be a number") }
            return d
        }
        func targets(_ k: String) throws -> Targets? {
            guard let v = o[k], !v.isNull else { return nil }
            if let s = v.stringValue { return .regex(s) }
            guard let a = v.arrayValue else { throw fail("\(k) must be a list of names or a regex string") }
            var names: [String] = []
            for x in a {
                guard let s = x.stringValue else { throw fail("\(k) must hold strings") }
                names.append(s)
            }
            return .names(names)
        }
        c.r = try int("r") ?? c.r
        c.loraAlpha = try number("lora_alpha") ?? c.loraAlpha
        c.loraDropout = try number("lora_dropout") ?? c.loraDropout
        c.targetModules = try targets("target_modules")
        c.excludeModules = try targets("exclude_modules")
        if let v = o["layers_to_transform"], !v.isNull {
            if let i = v.intValue {
                c.layersToTransform = [i]
            } else if let a = v.arrayValue {
                c.layersToTransform = try a.map { x in
                    guard let i = x.intValue else { throw fail("layers_to_transform must hold integers") }
                    return i
                }
            } else {
                throw fail("layers_to_transform must be an integer or a list of integers")
            }
        }
        if let v = o["layers_pattern"], !v.isNull {
            if let s = v.stringValue {
                c.layersPattern = [s]
            } else if let a = v.arrayValue {
                c.layersPattern = try a.map { x in
                    guard let s = x.stringValue else { throw fail("layers_pattern must hold strings") }
                    return s
                }
            } else {
                throw fail("layers_pattern must be a string or a list of strings")
            }
        }
        if let v = o["use_rslora"], !v.isNull {
            guard let b = v.boolValue else { throw fail("use_rslora must be true or false") }
            c.useRSLoRA = b
        }
        if let v = o["modules_to_save"], !v.isNull {
            guard let a = v.arrayValue else { throw fail("modules_to_save must be a list of module names") }
            c.modulesToSave = try a.map { x in
                guard let s = x.stringValue else { throw fail("modules_to_save must hold strings") }
                return s
            }
        }
        if let v = o["use_dora"], !v.isNull {
            guard let b = v.boolValue else { throw fail("use_dora must be true or false") }
            c.useDoRA = b
        }
        if let v = o["lora_bias"], !v.isNull {
            guard let b = v.boolValue else { throw fail("lora_bias must be true or false") }
            c.loraBias = b
        }
        if let v = o["rank_pattern"], !v.isNull {
            guard let m = v.objectValue else { throw fail("rank_pattern must be an object") }
            c.rankPattern = try m.members.map { (k, x) in
                guard let i = x.intValue else { throw fail("rank_pattern[\(k)] must be an integer") }
                return (k, i)
            }
        }
        if let v = o["alpha_pattern"], !v.isNull {
            guard let m = v.objectValue else { throw fail("alpha_pattern must be an object") }
            c.alphaPattern = try m.members.map { (k, x) in
                guard let d = x.doubleValue else { throw fail("alpha_pattern[\(k)] must be a number") }
                return (k, d)
            }
        }
        if let v = o["init_lora_weights"], !v.isNull {
            c.initLoraWeights = try initialization(v, path: path)
        }
        c.baseModelNameOrPath = o["base_model_name_or_path"]?.stringValue
        c.revision = o["revision"]?.stringValue
        c.taskType = o["task_type"]?.stringValue
        do { try c.validate() } catch let LoRAError.invalidArgument(m) { throw fail(m) }
        return c
    }

    static func initialization(_ v: JSONValue, path: String) throws -> Initialization {
        if v == .bool(true) { return .kaiming }
        if v == .bool(false) { return .random }
        guard let s = v.stringValue else {
            throw LoRAError.invalidFile(path: path, reason: "init_lora_weights must be a boolean or a string")
        }
        guard let i = Initialization(peftName: s) else {
            throw LoRAError.unsupported("\(path): init_lora_weights \"\(s)\" is not implemented")
        }
        return i
    }

    public static func load(path: String) throws -> LoRAConfig {
        guard let data = FileManager.default.contents(atPath: path) else { throw LoRAError.io(path: path, reason: "cannot read file") }
        return try parse(Array(data), path: path)
    }

    /// adapter_config.json exactly as PEFT 0.21.2 writes it: every key, sorted,
    /// 2-space indent, no trailing newline.
    public func json(inferenceMode: Bool = true) -> String {
        var o = JSONObject()
        func targetsJSON(_ t: Targets?) -> JSONValue {
            switch t {
            case nil: return .null
            case .regex(let s)?: return .string(s)
            case .names(let n)?: return .array(n.map { .string($0) })
            }
        }
        o["alora_invocation_tokens"] = .null
        var ap = JSONObject(); for (k, v) in alphaPattern { ap.append(k, LoRAConfig.alphaJSON(v)) }
        o["alpha_pattern"] = .object(ap)
        o["arrow_config"] = .null
        o["auto_mapping"] = .null
        o["base_model_name_or_path"] = baseModelNameOrPath.map { .string($0) } ?? .null
        o["bias"] = .string("none")
        o["corda_config"] = .null
        o["ensure_weight_tying"] = .bool(false)
        o["eva_config"] = .null
        o["exclude_modules"] = targetsJSON(excludeModules)
        o["fan_in_fan_out"] = .bool(true)
        o["inference_mode"] = .bool(inferenceMode)
        o["init_lora_weights"] = initLoraWeights.json
        o["kasa_config"] = .null
        o["layer_replication"] = .null
        o["layers_pattern"] = layersPattern.map { $0.count == 1 ? .string($0[0]) : .array($0.map { .string($0) }) } ?? .null
        o["layers_to_transform"] = layersToTransform.map { .array($0.map { .number(JSONNumber($0)) }) } ?? .null
        o["loftq_config"] = .object(JSONObject())
        o["lora_alpha"] = LoRAConfig.alphaJSON(loraAlpha)
        o["lora_bias"] = .bool(loraBias)
        o["lora_dropout"] = .number(JSONNumber(loraDropout))
        o["lora_ga_config"] = .null
        o["megatron_config"] = .null
        o["megatron_core"] = .string("megatron.core")
        o["modules_to_save"] = modulesToSave.map { .array($0.map { .string($0) }) } ?? .null
        o["monteclora_config"] = .null
        o["peft_type"] = .string("LORA")
        o["peft_version"] = .string("0.21.2")
        o["qalora_group_size"] = .number(JSONNumber(16))
        o["r"] = .number(JSONNumber(r))
        var rp = JSONObject(); for (k, v) in rankPattern { rp.append(k, .number(JSONNumber(v))) }
        o["rank_pattern"] = .object(rp)
        o["revision"] = revision.map { .string($0) } ?? .null
        o["target_modules"] = targetsJSON(targetModules ?? .names(["c_attn"]))
        o["target_parameters"] = .null
        o["task_type"] = taskType.map { .string($0) } ?? .null
        o["trainable_token_indices"] = .null
        o["use_bdlora"] = .null
        o["use_dora"] = .bool(useDoRA)
        o["use_qalora"] = .bool(false)
        o["use_rslora"] = .bool(useRSLoRA)
        o["velora_config"] = .null
        return JSON.pythonPretty(.object(o))
    }

    /// An alpha as PEFT writes it: an int when whole (lora_alpha is typed int), else a float.
    static func alphaJSON(_ a: Double) -> JSONValue {
        if a == a.rounded(), abs(a) < 1e15 { return .number(JSONNumber(Int(a))) }
        return .number(JSONNumber(a))
    }
}
