import ArgumentParser
import Foundation
import LoRA

struct InitModel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-model",
        abstract:
            "Create a freshly initialised GPT-2 (transformers' init) with a byte-level tokenizer, to pre-train with `train --full-finetune`."
    )

    @Argument(help: "Output directory.") var outputDir: String
    @Option var nLayer = 4
    @Option var nEmbd = 192
    @Option var nHead = 6
    @Option var nPositions = 256
    @Option var seed: UInt64 = 1

    func run() throws {
        try LoRACommand.run {
            var c = GPT2Config()
            c.nLayer = nLayer; c.nEmbd = nEmbd; c.nHead = nHead; c.nPositions = nPositions
            c.vocabSize = 257; c.bosTokenID = 256; c.eosTokenID = 256
            try c.validate()
            try FileManager.default.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
            try Tokenizer.writeByteLevel(directory: outputDir)
            let m = try Model.initialized(config: c, seed: seed, tokenizer: try Tokenizer.load(directory: outputDir))
            try m.save(directory: outputDir)
            say(
                "initialised a \(nLayer)-layer GPT-2 (n_embd \(nEmbd), \(m.parameterCount) parameters) with a byte-level tokenizer in \(outputDir)"
            )
        }
    }
}
