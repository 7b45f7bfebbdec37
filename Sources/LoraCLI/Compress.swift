import ArgumentParser
import Foundation
import LoRA

struct Compress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Shrink an adapter to a lower rank with the optimal (Eckart–Young) error, per module.",
        discussion:
            "Without forming any out×in matrix: QR of B and Aᵀ, SVD of the r×r core. Per-module ranks (--energy) are written as PEFT rank_pattern/alpha_pattern."
    )

    @Argument(help: "PEFT adapter directory.") var adapter: String
    @Option(help: "Model directory the adapter belongs to (default: the embedded model).") var model: String?
    @OptionGroup var ranks: RankOptions
    @Option(help: "Output directory for the compressed adapter.") var outputDir: String

    func run() throws {
        try LoRACommand.run {
            let target = try ranks.target()
            let config = try GPT2Config.load(path: (model ?? Defaults.modelDirectory) + "/config.json")
            let a = try Adapter.load(directory: adapter, modelConfig: config)
            let t0 = Date()
            let (b, reports) = try a.compressed(to: target)
            let seconds = Date().timeIntervalSince(t0)
            try b.save(directory: outputDir)
            func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
            say(pad("module", 34) + "     r new r    energy  rel. error")
            for r in reports {
                say(
                    pad(r.moduleName, 34)
                        + String(format: " %5d %5d %8.4f%% %10.2e", r.oldRank, r.newRank, 100 * r.retainedEnergy, r.relativeError))
            }
            say(
                String(
                    format: "%d → %d parameters in %.3f s; saved to %@", a.parameterCount, b.parameterCount, seconds, outputDir as NSString)
            )
        }
    }
}

/// --rank k or --energy fraction (compress, extract).
struct RankOptions: ParsableArguments {
    @Option(help: "The same rank for every module.") var rank: Int?
    @Option(help: "Per module, the smallest rank keeping this fraction of ΔW's energy (e.g. 0.99).") var energy: Double?

    func target() throws -> RankTarget {
        switch (rank, energy) {
        case (let k?, nil): return .fixed(k)
        case (nil, let e?): return .energy(e)
        default: throw LoRAError.invalidArgument("give exactly one of --rank and --energy")
        }
    }
}
