import ArgumentParser
import Foundation
import LoRA

/// The one place where the command line's defaults may differ from the
/// library's (which C and Python share): a named preset, listed in --help.
/// Options given explicitly always win over the preset.
enum Preset: String, CaseIterable, ExpressibleByArgument {
    /// A common LoRA recipe for small data: more modules, some dropout, a
    /// higher alpha; gentler sampling. The command line's default.
    case recipe
    /// The library's own defaults (PEFT's LoRAConfig and transformers'
    /// generate), exactly as `lora_*_default_params` and Python.
    case library

    static let recipeModules = "c_attn,attn.c_proj,mlp.c_fc"

    static var help: ArgumentHelp {
        let l = LoRAConfig()
        let s = SamplingParams()
        return ArgumentHelp(
            "Defaults for the options not given.",
            discussion: """
                recipe: --lora-alpha 16 --lora-dropout 0.05 --target-modules \(recipeModules) \
                --temperature 0.8 --top-p 0.95 --max-new-tokens 128.
                library: the library's defaults, as C and Python: --lora-alpha \(format(l.loraAlpha)) \
                --lora-dropout \(format(l.loraDropout)) --target-modules c_attn --temperature \(format(Double(s.temperature))) \
                --top-p \(format(Double(s.topP))) --max-new-tokens \(s.maxNewTokens).
                """)
    }

    static func format(_ v: Double) -> String { v == v.rounded() ? String(Int(v)) : String(v) }

    var loraAlpha: Double { self == .recipe ? 16 : LoRAConfig().loraAlpha }
    var loraDropout: Double { self == .recipe ? 0.05 : LoRAConfig().loraDropout }
    /// nil: the library's default targets (PEFT's for GPT-2: c_attn).
    var targetModules: String? { self == .recipe ? Preset.recipeModules : nil }
    var temperature: Float { self == .recipe ? 0.8 : SamplingParams().temperature }
    var topP: Float { self == .recipe ? 0.95 : SamplingParams().topP }
    var maxNewTokens: Int { self == .recipe ? 128 : SamplingParams().maxNewTokens }
}

extension LRScheduler: ExpressibleByArgument {}

/// --init-lora-weights: PEFT's names (pissa_niter_N takes any N >= 1).
struct InitLoraWeights: ExpressibleByArgument {
    var value: LoRAConfig.Initialization

    init?(argument: String) {
        switch argument {
        case "default", "true": value = .kaiming
        default:
            guard let i = LoRAConfig.Initialization(peftName: argument) else { return nil }
            value = i
        }
    }

    static var allValueStrings: [String] { ["default", "gaussian", "pissa", "pissa_niter_N", "olora"] }
    var defaultValueDescription: String { "default" }
}

/// Numbers in words for validation messages: "between 0 and 1", "at least 1".
enum Check {
    static func fail(_ flag: String, _ rule: String, _ value: CustomStringConvertible) -> ValidationError {
        ValidationError("\(flag) must be \(rule) (got \(value))")
    }
    static func atLeast<T: Comparable & CustomStringConvertible>(_ v: T?, _ min: T, _ flag: String) throws {
        if let v, !(v >= min) { throw fail(flag, "at least \(min)", v) }
    }
    static func finite(_ v: Double?, atLeast min: Double, _ flag: String) throws {
        if let v, !(v.isFinite && v >= min) { throw fail(flag, "a finite number of at least \(Preset.format(min))", v) }
    }
    static func finite(_ v: Double?, above min: Double, _ flag: String) throws {
        if let v, !(v.isFinite && v > min) { throw fail(flag, "a finite number greater than \(Preset.format(min))", v) }
    }
    /// lo <= v < hi
    static func fraction(_ v: Double?, _ flag: String) throws {
        if let v, !(v.isFinite && v >= 0 && v < 1) { throw fail(flag, "at least 0 and below 1", v) }
    }
}
