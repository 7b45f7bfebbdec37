import ArgumentParser
import Foundation
import LoRA

struct SamplingOptions: ParsableArguments {
    @Option(help: Preset.help) var preset: Preset = .recipe
    @Option(parsing: .unconditional, help: "Maximum new tokens. Default: from --preset.") var maxNewTokens: Int?
    @Option(parsing: .unconditional, help: "Sampling temperature (0: greedy). Default: from --preset.") var temperature: Float?
    @Option(parsing: .unconditional, help: "Top-k filtering (0: off).") var topK = SamplingParams().topK
    @Option(parsing: .unconditional, help: "Top-p (nucleus) filtering, above 0 and at most 1 (1: off). Default: from --preset.") var topP:
        Float?
    @Option(parsing: .unconditional, help: "Repetition penalty (1: off).") var repetitionPenalty: Float = SamplingParams().repetitionPenalty
    @Option(help: "Random seed.") var seed: UInt64 = SamplingParams().seed
    @Option(name: .customLong("stop"), parsing: .unconditionalSingleValue, help: "Stop once this text appears. Repeatable.") var stop:
        [String] = []
    @Flag(help: "Keep going after <|endoftext|>.") var ignoreEos = false

    func validate() throws {
        try Check.atLeast(maxNewTokens, 0, "--max-new-tokens")
        try Check.finite(temperature.map(Double.init), atLeast: 0, "--temperature")
        try Check.atLeast(topK, 0, "--top-k")
        if let p = topP, !(p.isFinite && p > 0 && p <= 1) { throw Check.fail("--top-p", "greater than 0 and at most 1", p) }
        try Check.finite(Double(repetitionPenalty), above: 0, "--repetition-penalty")
        if stop.contains("") { throw ValidationError("--stop must not be empty") }
    }

    var params: SamplingParams {
        var p = SamplingParams()
        p.maxNewTokens = maxNewTokens ?? preset.maxNewTokens; p.temperature = temperature ?? preset.temperature; p.topK = topK
        p.topP = topP ?? preset.topP
        p.repetitionPenalty = repetitionPenalty; p.seed = seed; p.stopStrings = stop; p.stopAtEndOfText = !ignoreEos
        return p
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text after a prompt, streamed.")

    @OptionGroup var model: ModelOptions
    @OptionGroup var kvCache: KVCacheOption
    @OptionGroup var sampling: SamplingOptions
    @Argument(help: "The prompt (default: read standard input).") var prompt: String?
    @Option(
        help:
            "Run many prompts together: a text file (one prompt per line) or JSONL (\"prompt\", \"adapters\": [\"DIR[:SCALE]\"], sampling fields); prints JSONL in input order."
    )
    var batchFile: String?
    @Option(help: "With --batch-file: requests running at once.") var maxSequences = 16
    @Option(help: "With --batch-file: new tokens per batched step.") var maxTokensPerStep = 512

    func validate() throws {
        if let prompt, prompt.isEmpty { throw ValidationError("the prompt is empty") }
    }

    func run() throws {
        try LoRACommand.run {
            if let batchFile {
                guard prompt == nil else { throw LoRAError.invalidArgument("give either a prompt or --batch-file, not both") }
                var bare = model
                bare.adapters = []
                let m = try bare.load()
                try kvCache.apply(to: m)
                try GenerateBatch.run(
                    file: batchFile, model: m, defaults: sampling.params, adapterSpecs: model.adapters,
                    maxSequences: maxSequences, maxTokensPerStep: maxTokensPerStep)
                return
            }
            let m = try model.load()
            try kvCache.apply(to: m)
            guard let tok = m.tokenizer else {
                throw LoRAError.invalidArgument("the model has no tokenizer: give token ids through the library instead")
            }
            let text: String
            if let prompt {
                text = prompt
            } else {
                if isatty(STDIN_FILENO) != 0 { stderrLine("lora: reading the prompt from standard input (end it with Ctrl-D)") }
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            }
            guard !text.isEmpty else { throw LoRAError.invalidArgument("the prompt is empty") }
            // Everything is checked before the prompt is echoed.
            let params = sampling.params
            try params.validate()
            let n = tok.encode(text).count
            guard n < m.config.nPositions else {
                throw LoRAError.invalidArgument(
                    "the prompt is \(n) tokens; the model's context holds \(m.config.nPositions) (n_positions) with room for at least one new token: shorten it"
                )
            }
            flushStdout(text)
            let r = try m.generate(text, params: params) { _, piece in
                flushStdout(piece); return .continue
            }
            flushStdout("\n")
            if r.stopReason == .contextFull {
                stderrLine("lora: stopped at the model's context limit (\(m.config.nPositions) tokens, n_positions)")
            }
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
                let text =
                    input.isEmpty
                    ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                    : input.joined(separator: " ")
                let ids = tok.encode(text)
                say(ids.map(String.init).joined(separator: " "))
                stderrLine("\(ids.count) tokens")
            }
        }
    }
}
