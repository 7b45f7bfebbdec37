import ArgumentParser
import Foundation
import LoRA

extension TaskMerge.MajoritySignMethod: ExpressibleByArgument {}

struct Combine: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Combine adapters with weights (PEFT add_weighted_adapter: cat, linear, svd, ties, dare_linear, dare_ties, magnitude_prune and their _svd variants)."
    )

    @Argument(help: "Adapters as DIR[:WEIGHT] (weight 1 when omitted).") var adapters: [String] = []
    @Option(help: "Model directory the adapters belong to (default: the embedded model).") var model: String?
    @Option(
        help:
            "cat (exact, rank Σr), linear (weighted A's and B's), svd (weighted ΔW truncated to --svd-rank); ties, dare_linear, dare_ties, magnitude_prune (merged A's and B's, equal ranks) and the same with _svd (merged ΔW truncated to --svd-rank)."
    )
    var combinationType: CombinationType = .svd
    @Option(parsing: .unconditional, help: "Rank of the svd result (default: the largest input rank).") var svdRank: Int?
    @Option(parsing: .unconditional, help: "Clamp the svd factors at this quantile of their values.") var svdClamp: Double?
    @Option(parsing: .unconditional, help: "ties, dare_*, magnitude_prune: the fraction of entries kept, greater than 0 and at most 1.")
    var density: Double?
    @Option(help: "ties, dare_ties: elect each entry's sign by the sum of the values (total) or of their signs (frequency).")
    var majoritySignMethod: TaskMerge.MajoritySignMethod = .total
    @Option(parsing: .unconditional, help: "dare_*: seed of the random masks.") var seed: UInt64 = 0

    enum CombinationType: String, CaseIterable, ExpressibleByArgument {
        case cat, linear, svd
        case ties
        case dareLinear = "dare_linear"
        case dareTies = "dare_ties"
        case magnitudePrune = "magnitude_prune"
        case tiesSVD = "ties_svd"
        case dareLinearSVD = "dare_linear_svd"
        case dareTiesSVD = "dare_ties_svd"
        case magnitudePruneSVD = "magnitude_prune_svd"

        /// The task merge it names (nil: cat, linear, svd) and whether it ends with an SVD.
        var taskMerge: (kind: TaskMerge.Kind, svd: Bool)? {
            switch self {
            case .cat, .linear, .svd: return nil
            case .ties: return (.ties, false)
            case .dareLinear: return (.dareLinear, false)
            case .dareTies: return (.dareTies, false)
            case .magnitudePrune: return (.magnitudePrune, false)
            case .tiesSVD: return (.ties, true)
            case .dareLinearSVD: return (.dareLinear, true)
            case .dareTiesSVD: return (.dareTies, true)
            case .magnitudePruneSVD: return (.magnitudePrune, true)
            }
        }
    }

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("give at least one adapter DIR[:WEIGHT]") }
        try Check.atLeast(svdRank, 1, "--svd-rank")
        if let c = svdClamp, !(c.isFinite && c > 0 && c <= 1) { throw Check.fail("--svd-clamp", "greater than 0 and at most 1", c) }
        if combinationType.taskMerge != nil {
            guard let d = density else {
                throw ValidationError(
                    "--combination-type \(combinationType.rawValue) needs --density (the fraction of entries kept, greater than 0 and at most 1)"
                )
            }
            if !(d.isFinite && d > 0 && d <= 1) { throw Check.fail("--density", "greater than 0 and at most 1", d) }
        } else if density != nil {
            throw ValidationError("--density goes with ties, dare_linear, dare_ties, magnitude_prune and their _svd variants")
        }
    }
    @Option(help: "Output directory.") var outputDir: String

    func run() throws {
        try LoRACommand.run {
            let config = try GPT2Config.load(path: (model ?? Defaults.modelDirectory) + "/config.json")
            let inputs = try adapters.map { spec -> (adapter: Adapter, weight: Double) in
                let (dir, w) = try AdapterSpec.parse(spec)
                return (try Adapter.load(directory: dir, modelConfig: config, name: dir), Double(w))
            }
            let method: CombinationMethod
            switch combinationType {
            case .cat: method = .cat
            case .linear: method = .linear
            case .svd: method = .svd(rank: svdRank, clamp: svdClamp)
            default:
                guard let t = combinationType.taskMerge, let d = density else { throw ValidationError("--density is needed") }
                let m = TaskMerge(kind: t.kind, density: d, majoritySignMethod: majoritySignMethod, seed: seed)
                method = t.svd ? .taskMergeSVD(m, rank: svdRank, clamp: svdClamp) : .taskMerge(m)
            }
            let t0 = Date()
            let out = try Adapter.combine(inputs, method: method)
            try out.save(directory: outputDir)
            say(
                String(
                    format: "combined %d adapters (%@) into rank %d in %.3f s: %@", inputs.count, combinationType.rawValue as NSString,
                    out.config.r, Date().timeIntervalSince(t0), outputDir as NSString))
        }
    }
}

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Extract a LoRA adapter from a fully fine-tuned model (SVD of each ΔW).")

    @Option(help: "The base model directory (default: the embedded model).") var base: String?
    @Option(help: "The fine-tuned model directory (same architecture).") var tuned: String
    @Option(help: "Comma-separated target modules.") var targetModules = "c_attn"
    @Flag(help: "Also carry each module's bias change (PEFT's lora_bias): merging gives the tuned biases.")
    var loraBias = false
    @OptionGroup var ranks: RankOptions
    @Option(help: "Output directory.") var outputDir: String
    @OptionGroup var dtype: DTypeOption

    func run() throws {
        try LoRACommand.run {
            let target = try ranks.target()
            let b = try loadModel(base ?? Defaults.modelDirectory, dtype: dtype.dtype)
            let t = try loadModel(tuned, dtype: dtype.dtype)
            let t0 = Date()
            let (a, reports) = try Adapter.extract(
                base: b, tuned: t, targetModules: .names(list: targetModules),
                rank: target, loraBias: loraBias)
            let seconds = Date().timeIntervalSince(t0)
            try a.save(directory: outputDir)
            for r in reports {
                say(
                    String(
                        format: "%@  rank %d  energy %.4f%%  rel. error %.3e", r.moduleName as NSString, r.newRank, 100 * r.retainedEnergy,
                        r.relativeError))
            }
            say(String(format: "extracted %d modules in %.2f s: %@", reports.count, seconds, outputDir as NSString))
        }
    }
}
