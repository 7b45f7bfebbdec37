import Foundation

// PEFT's name targeting: which GPT-2 modules a LoRAConfig adapts.

/// The four GPT-2 Conv1D layers LoRA can adapt.
public enum LoRATarget: Int, CaseIterable, Sendable {
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

    public static func moduleName(layer: Int, _ t: LoRATarget) -> String { "transformer.h.\(layer).\(t.suffix)" }
}

/// A module trained in full beside the adapter (`modules_to_save`): a
/// LayerNorm's weight and bias [n_embd], kept in the adapter's parameter block.
public struct SavedModule: Sendable, Equatable {
    public enum Kind: Sendable, Hashable {
        case ln1(layer: Int)
        case ln2(layer: Int)
        case lnf
    }
    public let kind: Kind
    /// PEFT's module name, e.g. `transformer.ln_f`.
    public let moduleName: String
    /// weight [count] then bias [count] in the parameter block.
    public let offset: Int
    public let count: Int
}

extension LoRAConfig.Targets {
    /// A comma-separated list of module names or suffixes ("c_attn, attn.c_proj"):
    /// entries trimmed, empty ones dropped (the C ABI, the CLI).
    public static func names(list: String) -> LoRAConfig.Targets {
        .names(list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
    }
}

/// Which modules a LoRAConfig adapts in a GPT-2 model, with PEFT's matching
/// rules (target_modules as names/suffixes or a full-match regex,
/// exclude_modules, layers_to_transform, rank/alpha patterns).
package enum LoRATargeting {
    /// Every module name of GPT2LMHeadModel, as PEFT walks them.
    static func allModuleNames(_ c: GPT2Config) -> [(name: String, kind: String)] {
        var names: [(String, String)] = [
            ("transformer", "GPT2Model"), ("transformer.wte", "Embedding"),
            ("transformer.wpe", "Embedding"), ("transformer.drop", "Dropout"),
            ("transformer.h", "ModuleList"),
        ]
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)"
            names += [
                (p, "GPT2Block"), (p + ".ln_1", "LayerNorm"), (p + ".attn", "GPT2Attention"),
                (p + ".attn.c_attn", "Conv1D"), (p + ".attn.c_proj", "Conv1D"),
                (p + ".attn.attn_dropout", "Dropout"), (p + ".attn.resid_dropout", "Dropout"),
                (p + ".ln_2", "LayerNorm"), (p + ".mlp", "GPT2MLP"), (p + ".mlp.c_fc", "Conv1D"),
                (p + ".mlp.c_proj", "Conv1D"), (p + ".mlp.act", "Activation"), (p + ".mlp.dropout", "Dropout"),
            ]
        }
        names += [("transformer.ln_f", "LayerNorm"), ("lm_head", "Linear")]
        return names
    }

    static func regex(_ pattern: String) throws -> Regex<AnyRegexOutput> {
        do { return try Regex(pattern) } catch {
            throw LoRAError.invalidArgument("invalid regular expression \"\(pattern)\": \(error)")
        }
    }

    static func matches(_ targets: LoRAConfig.Targets, _ name: String) throws -> Bool {
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

    /// The modules `modules_to_save` names, in model order: every module whose
    /// name (`base_model.model.` + name, as PEFT walks the wrapped model) ends
    /// with an entry (PEFT's `key.endswith(target_key)`). Only LayerNorms are
    /// implemented; entries that all match nothing are an error (PEFT's strict check).
    package static func resolveModulesToSave(_ config: LoRAConfig, model c: GPT2Config) throws -> [(
        name: String, kind: SavedModule.Kind
    )] {
        guard let keys = config.modulesToSave, !keys.isEmpty else { return [] }
        var out: [(String, SavedModule.Kind)] = []
        var found = Set<String>()
        for (name, kind) in allModuleNames(c) {
            let full = "base_model.model." + name
            let hits = keys.filter { full.hasSuffix($0) }
            guard !hits.isEmpty else { continue }
            found.formUnion(hits)
            if kind == "Dropout" || kind == "Activation" { continue }  // no parameters: nothing to train or save
            let parts = name.split(separator: ".").map(String.init)
            switch (kind, parts.last) {
            case ("LayerNorm", "ln_f"): out.append((name, .lnf))
            case ("LayerNorm", "ln_1"): out.append((name, .ln1(layer: layerIndex(name, patterns: nil) ?? 0)))
            case ("LayerNorm", "ln_2"): out.append((name, .ln2(layer: layerIndex(name, patterns: nil) ?? 0)))
            default:
                throw LoRAError.unsupported(
                    "modules_to_save \(name) (\(kind)): only LayerNorms (ln_1, ln_2, ln_f) are implemented")
            }
        }
        if found.isEmpty {
            throw LoRAError.invalidArgument("modules_to_save {\(keys.joined(separator: ", "))} matches no module of the base model")
        }
        return out
    }

    /// The adapted Conv1D modules, in (layer, target) order.
    package static func resolve(_ config: LoRAConfig, model c: GPT2Config) throws -> [(
        layer: Int, target: LoRATarget, r: Int, alpha: Double
    )] {
        try resolveAll(config, model: c).modules
    }

    /// The adapted Conv1D modules, in (layer, target) order, and the token
    /// embedding `transformer.wte` with its rank and alpha when targeted.
    package static func resolveAll(_ config: LoRAConfig, model c: GPT2Config) throws -> (
        modules: [(layer: Int, target: LoRATarget, r: Int, alpha: Double)], embedding: (r: Int, alpha: Double)?
    ) {
        try config.validate()
        var embedding: (r: Int, alpha: Double)? = nil
        let targets = config.targetModules ?? .names(["c_attn"])
        var out: [(Int, LoRATarget, Int, Double)] = []
        for (name, kind) in allModuleNames(c) {
            if let ex = config.excludeModules, try matches(ex, name) { continue }
            guard try matches(targets, name) else { continue }
            if case .names = targets, let layers = config.layersToTransform, !layers.isEmpty {
                guard let idx = layerIndex(name, patterns: config.layersPattern), layers.contains(idx) else { continue }
            }
            if name == "transformer.wte" {
                // PEFT's lora.Embedding; GPT-2's tied head keeps the base weight
                // (ensure_weight_tying false, PEFT's default).
                embedding = (
                    try patternValue(config.rankPattern, name) ?? config.r, try patternValue(config.alphaPattern, name) ?? config.loraAlpha
                )
                continue
            }
            guard kind == "Conv1D",
                let target = LoRATarget.allCases.first(where: { name.hasSuffix("." + $0.suffix) }),
                let layer = layerIndex(name, patterns: nil)
            else {
                throw LoRAError.unsupported(
                    "target module \(name) (\(kind)): LoRA is implemented for attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj and wte")
            }
            let r = try patternValue(config.rankPattern, name) ?? config.r
            let alpha = try patternValue(config.alphaPattern, name) ?? config.loraAlpha
            out.append((layer, target, r, alpha))
        }
        if out.isEmpty && embedding == nil {
            let desc: String
            switch targets {
            case .names(let n): desc = n.joined(separator: ", ")
            case .regex(let r): desc = r
            }
            throw LoRAError.invalidArgument(
                "target modules {\(desc)} not found in the base model (GPT-2 has attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in layers 0 to \(c.nLayer - 1))"
            )
        }
        return (out.sorted { ($0.0, $0.1.rawValue) < ($1.0, $1.1.rawValue) }, embedding)
    }
}
