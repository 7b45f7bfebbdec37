import ArgumentParser
import Foundation
import LoRA

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The main job: LoRA-fine-tune the embedded model on Star Trek quotes, compare, save, merge.",
        discussion: """
            Uses Debian's fortunes `startrek` file (held out of the embedded model's pre-training): 90% to train
            a LoRA adapter, 10% to measure held-out loss before and after. Prints samples from the base model
            and from the adapter, saves the adapter in PEFT's layout, merges it into a Hugging Face checkpoint
            and checks that the merged model gives the logits of base + adapter.
            """)

    @Option(help: "Model directory (default: the embedded model).") var model: String?
    @Option(help: "Star Trek quotes file.") var data = "/usr/share/games/fortunes/startrek"
    @Option(help: "Where the adapter, merged model and logs go.") var outputDir = "lora-demo"
    @Option(help: "Optimizer steps.") var maxSteps = 250
    @Option(help: "Tokens per sequence.") var blockSize = 128
    @Option(help: "Sequences per step.") var batchSize = 8
    @Option(help: "LoRA rank.") var r = 16
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Tokens per sample.") var maxNewTokens = 160
    @OptionGroup var dtype: DTypeOption
    @OptionGroup var threads: ThreadOptions

    func run() throws {
        try LoRACommand.run { try demo() }
    }

    func demo() throws {
        let started = Date()
        let modelDir = model ?? Defaults.modelDirectory
        guard FileManager.default.fileExists(atPath: data) else {
            throw LoRAError.io(path: data, reason: "not found: install Debian's fortunes package (scripts/bootstrap.sh does)")
        }
        let m = try Model.load(directory: modelDir, dtype: dtype.dtype)
        threads.apply()
        guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("\(modelDir) has no tokenizer") }
        let block = min(blockSize, m.config.nPositions)
        let all = try Dataset.load(paths: [data], tokenizer: tok, options: DatasetOptions(blockSize: block))
        let (train, heldOut) = try all.split(validationFraction: 0.1, seed: seed)
        say(
            "liblora demo — \(URL(fileURLWithPath: modelDir).lastPathComponent): \(m.config.nLayer) layers, n_embd \(m.config.nEmbd), \(m.parameterCount) parameters; OpenBLAS \(BLAS.coreName)"
        )
        say("data: \(data): \(train.examples.count) training blocks, \(heldOut.examples.count) held-out blocks of \(block) tokens")

        var lc = LoRAConfig()
        lc.r = r; lc.loraAlpha = Double(2 * r); lc.loraDropout = 0.1
        lc.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
        lc.baseModelNameOrPath = modelDir
        let adapter = try Adapter(config: lc, modelConfig: m.config, name: "startrek")
        try adapter.initialize(from: m, seed: seed)
        var tc = TrainerParams()
        tc.learningRate = 1.5e-3; tc.lrScheduler = .cosine; tc.warmupSteps = min(20, maxSteps / 10); tc.maxSteps = maxSteps
        tc.batchSize = batchSize; tc.blockSize = block; tc.seed = seed; tc.weightDecay = 0.01
        try m.attach(adapter)
        let trainer = try Trainer(model: m, adapter: adapter, config: tc)

        let prompts = ["Captain,", "Logic is", "There is"]
        var sampling = SamplingParams()
        sampling.maxNewTokens = maxNewTokens; sampling.temperature = 0.7; sampling.topP = 0.9; sampling.seed = seed

        try m.setEnabled(adapter, false)
        let before = try trainer.evaluate(heldOut)
        say(String(format: "held-out loss before: %.4f (perplexity %.2f)", before.loss, before.perplexity))
        let baseSamples = try prompts.map { try m.generate($0, params: sampling).text }
        try m.setEnabled(adapter, true)

        say(
            "training LoRA r=\(r) on attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (\(adapter.parameterCount) parameters) for \(maxSteps) steps of \(batchSize)×\(block) tokens"
        )
        try FileManager.default.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let printer = try ProgressPrinter(logPath: outputDir + "/metrics.jsonl")
        var opts = TrainParams(); opts.evalSteps = max(1, maxSteps / 5)
        try trainer.train(train, validation: heldOut, options: opts) {
            printer.report($0); return .continue
        }
        let after = try trainer.evaluate(heldOut)
        say(String(format: "held-out loss after:  %.4f (perplexity %.2f)", after.loss, after.perplexity))

        for (i, p) in prompts.enumerated() {
            say("\n── prompt: \(p)")
            say("base model:\n" + indent(p + baseSamples[i]))
            say("with the adapter:\n" + indent(p + (try m.generate(p, params: sampling).text)))
        }

        let adapterDir = outputDir + "/adapter"
        try adapter.save(directory: adapterDir)
        try AtomicFile.write(
            lossCurveSVG(
                train: printer.trainLoss, validation: [(0, before.loss)] + printer.validationLoss,
                title: "liblora demo: LoRA on Star Trek quotes"), to: adapterDir + "/loss.svg")
        // Merge and check: the merged checkpoint must give base + adapter's logits.
        let probe = Array(tok.encode("-- Kirk, \"The Trouble with Tribbles\", stardate 4523.3").prefix(m.config.nPositions))
        let withAdapter = try m.logits(probe)
        try m.merge(adapter)
        let mergedDir = outputDir + "/merged"
        try m.save(directory: mergedDir)
        let merged = try Model.load(directory: mergedDir)
        let diff = zip(withAdapter, try merged.logits(probe)).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        // Compress: keep 95% of each module's ΔW energy.
        let (small, reports) = try adapter.compressed(to: .energy(0.95), name: "startrek-compressed")
        let compressedDir = outputDir + "/adapter-compressed"
        try small.save(directory: compressedDir)
        let ranks = reports.map(\.newRank)
        let worst = reports.map(\.relativeError).max() ?? 0
        say("")
        say("adapter (PEFT layout):     \(adapterDir)  (adapter_config.json, adapter_model.safetensors, loss.svg)")
        say(
            "compressed (95% energy):   \(compressedDir)  (ranks \(ranks.min() ?? 0)–\(ranks.max() ?? 0) instead of \(r); \(adapter.parameterCount) → \(small.parameterCount) parameters; worst relative error \(String(format: "%.3f", worst)))"
        )
        say("merged model (HF layout):  \(mergedDir)  (max |logit difference| vs base + adapter: \(String(format: "%.2e", diff)))")
        say("metrics:                   \(outputDir)/metrics.jsonl")
        say(String(format: "done in %.0f s", Date().timeIntervalSince(started)))
        guard after.loss < before.loss else { throw LoRAError.numerical("held-out loss did not fall (\(before.loss) → \(after.loss))") }
        // A reduced-precision base re-rounds the merged weights (README): only F32 is held to 1e-3.
        guard diff < 1e-3 || m.dtype != .f32 else {
            throw LoRAError.numerical("the merged model's logits differ from base + adapter by \(diff)")
        }
    }

    func indent(_ s: String) -> String {
        s.split(separator: "\n", omittingEmptySubsequences: false).map { "    " + $0 }.joined(separator: "\n")
    }
}
