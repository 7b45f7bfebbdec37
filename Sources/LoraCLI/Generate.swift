import ArgumentParser
import Foundation
import LoRA

struct SamplingOptions: ParsableArguments {
    @Option(help: "Maximum new tokens.") var maxNewTokens = 128
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0.8
    @Option(help: "Top-k filtering (0: off).") var topK = 0
    @Option(help: "Top-p (nucleus) filtering (1: off).") var topP: Float = 0.95
    @Option(help: "Repetition penalty (1: off).") var repetitionPenalty: Float = 1.0
    @Option(help: "Random seed.") var seed: UInt64 = 0
    @Option(name: .customLong("stop"), help: "Stop once this text appears. Repeatable.") var stop: [String] = []
    @Flag(help: "Keep going after <|endoftext|>.") var ignoreEos = false

    var params: SamplingParams {
        var p = SamplingParams()
        p.maxNewTokens = maxNewTokens; p.temperature = temperature; p.topK = topK; p.topP = topP
        p.repetitionPenalty = repetitionPenalty; p.seed = seed; p.stopStrings = stop; p.stopAtEndOfText = !ignoreEos
        return p
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text after a prompt, streamed.")

    @OptionGroup var model: ModelOptions
    @OptionGroup var sampling: SamplingOptions
    @Argument(help: "The prompt (default: read standard input).") var prompt: String?
    @Option(help: "Run many prompts together: a text file (one prompt per line) or JSONL (\"prompt\", \"adapters\": [\"DIR[:SCALE]\"], sampling fields); prints JSONL in input order.")
    var batchFile: String?
    @Option(help: "With --batch-file: requests running at once.") var maxSequences = 16
    @Option(help: "With --batch-file: new tokens per batched step.") var maxTokensPerStep = 512

    func run() throws {
        try LoRACommand.run {
            if let batchFile {
                guard prompt == nil else { throw LoRAError.invalidArgument("give either a prompt or --batch-file, not both") }
                var bare = model
                bare.adapters = []
                let m = try bare.load()
                try GenerateBatch.run(file: batchFile, model: m, defaults: sampling.params, adapterSpecs: model.adapters,
                                      maxSequences: maxSequences, maxTokensPerStep: maxTokensPerStep)
                return
            }
            let m = try model.load()
            let text: String
            if let prompt { text = prompt } else {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            }
            guard !text.isEmpty else { throw LoRAError.invalidArgument("empty prompt") }
            flushStdout(text)
            _ = try m.generate(text, params: sampling.params) { _, piece in flushStdout(piece); return .continue }
            flushStdout("\n")
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the token ids of a text (or decode ids with --decode).")
    @Option(help: "Model or tokenizer directory (default: the embedded model).") var model: String?
    @Flag(help: "Decode the arguments as token ids instead.") var decode = false
    @Argument(help: "Text (or ids with --decode).") var input: [String] = []

    func run() throws {
        try LoRACommand.run {
            let tok = try Tokenizer.load(directory: model ?? Defaults.modelDirectory)
            if decode {
                let ids = try input.flatMap { $0.split(whereSeparator: { $0 == "," || $0 == " " }) }.map { s -> TokenID in
                    guard let v = TokenID(s) else { throw LoRAError.invalidArgument("not a token id: \(s)") }
                    return v
                }
                say(try tok.decode(ids))
            } else {
                let text = input.isEmpty ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                                         : input.joined(separator: " ")
                let ids = tok.encode(text)
                say(ids.map(String.init).joined(separator: " "))
                stderrLine("\(ids.count) tokens")
            }
        }
    }
}
