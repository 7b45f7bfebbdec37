import ArgumentParser
import Foundation
import LoRA

struct LoRAOptions: ParsableArguments {
    @Option(help: "LoRA rank.") var r = 8
    @Option(help: "LoRA alpha (scaling alpha/r).") var loraAlpha: Double = 16
    @Option(help: "Dropout on the LoRA input.") var loraDropout: Double = 0.05
    @Option(help: "Comma-separated module names or suffixes (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, c_proj).")
    var targetModules = "c_attn,attn.c_proj,mlp.c_fc"
    @Option(help: "Comma-separated layer indices to adapt (default: all).") var layersToTransform: String?
    @Flag(help: "rsLoRA scaling alpha/sqrt(r).") var useRslora = false
    @Option(help: "Initialisation: default, gaussian, pissa, pissa_niter_N, olora (PiSSA/OLoRA change the base weights in memory; the adapter is saved converted for the original base).")
    var initLoraWeights = "default"

    func config(baseModel: String) throws -> LoRAConfig {
        var c = LoRAConfig()
        c.r = r; c.loraAlpha = loraAlpha; c.loraDropout = loraDropout
        c.targetModules = .names(list: targetModules)
        if let l = layersToTransform {
            c.layersToTransform = try l.split(separator: ",").map {
                guard let i = Int($0.trimmingCharacters(in: .whitespaces)) else { throw LoRAError.invalidArgument("--layers-to-transform: not an integer: \($0)") }
                return i
            }
        }
        c.useRSLoRA = useRslora
        switch initLoraWeights {
        case "default", "true": c.initLoraWeights = .kaiming
        case let name:
            guard let i = LoRAConfig.Initialization(peftName: name) else {
                throw LoRAError.invalidArgument("--init-lora-weights must be default, gaussian, pissa, pissa_niter_N or olora")
            }
            c.initLoraWeights = i
        }
        c.baseModelNameOrPath = baseModel
        return c
    }
}

struct OptimOptions: ParsableArguments {
    @Option(help: "Peak learning rate.") var learningRate: Double = 2e-4
    @Option(help: "AdamW weight decay.") var weightDecay: Double = 0
    @Option(help: "AdamW beta1.") var adamBeta1: Double = 0.9
    @Option(help: "AdamW beta2.") var adamBeta2: Double = 0.999
    @Option(help: "AdamW epsilon.") var adamEpsilon: Double = 1e-8
    @Option(name: [.customLong("lr-scheduler"), .customLong("lr-scheduler-type")], help: "linear, cosine, constant, constant_with_warmup.")
    var lrScheduler = "linear"
    @Option(help: "Warmup steps.") var warmupSteps = 0
    @Option(help: "Optimizer steps (overrides --num-train-epochs).") var maxSteps: Int?
    @Option(help: "Epochs over the training data (when --max-steps is not given).") var numTrainEpochs: Double = 1
    @Option(help: "Micro-batches per optimizer step.") var gradientAccumulationSteps = 1
    @Option(help: "Global gradient-norm clip (0: off).") var maxGradNorm: Double = 1.0
    @Option(name: [.customLong("batch-size"), .customLong("per-device-train-batch-size")], help: "Sequences per micro-batch.")
    var batchSize = 4
    @Option(help: "Tokens per sequence (at most the model's n_positions).") var blockSize: Int?
    @Option(help: "Random seed (data order, dropout, adapter init).") var seed: UInt64 = 42
    @Flag(help: "Recompute activations in backward (less memory, slower).") var gradientCheckpointing = false

    func config(model: Model, examples: Int) throws -> TrainerParams {
        var c = TrainerParams()
        c.learningRate = learningRate; c.weightDecay = weightDecay; c.adamBeta1 = adamBeta1; c.adamBeta2 = adamBeta2
        c.adamEpsilon = adamEpsilon
        guard let s = LRScheduler(rawValue: lrScheduler) else {
            throw LoRAError.invalidArgument("--lr-scheduler must be one of \(LRScheduler.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        c.lrScheduler = s
        c.warmupSteps = warmupSteps
        c.gradientAccumulationSteps = gradientAccumulationSteps
        c.maxGradNorm = maxGradNorm > 0 ? maxGradNorm : nil
        c.batchSize = batchSize
        c.blockSize = blockSize ?? min(256, model.config.nPositions)
        c.seed = seed
        c.gradientCheckpointing = gradientCheckpointing
        if let m = maxSteps { c.maxSteps = m } else {
            guard numTrainEpochs.isFinite, numTrainEpochs > 0 else { throw LoRAError.invalidArgument("--num-train-epochs must be > 0") }
            let perStep = max(1, batchSize * gradientAccumulationSteps)
            c.maxSteps = max(1, Int((Double(examples) * numTrainEpochs / Double(perStep)).rounded(.up)))
        }
        return c
    }
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune with LoRA (or all weights with --full-finetune) on text or JSONL files.",
        discussion: """
            Plain text files are packed into blocks with <|endoftext|> between documents (fortune files split at % lines);
            JSONL files hold {"text": ...} or {"prompt": ..., "completion": ...} records (loss on the completion only).
            Writes the adapter (PEFT layout) or the model (Hugging Face layout) into --output-dir, with
            checkpoints/, metrics.jsonl and loss.svg.
            """)

    @Option(help: "Model directory (default: the embedded model).") var model: String?
    @Argument(help: "Training files (.txt or .jsonl).") var data: [String]
    @Option(help: "Where the adapter or model, checkpoints and logs go.") var outputDir = "lora-output"
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var optim: OptimOptions
    @Flag(help: "Train every weight instead of a LoRA adapter.") var fullFinetune = false
    @Option(help: "Fraction of the data held out for evaluation.") var validationSplit: Double = 0
    @Option(help: "Validation files (instead of --validation-split).") var validationFile: [String] = []
    @Option(help: "Evaluate every N steps (0: at the end only).") var evalSteps = 0
    @Option(help: "Checkpoint every N steps (0: only at the end).") var saveSteps = 0
    @Option(help: "Checkpoints kept.") var saveTotalLimit = 2
    @Flag(help: "Skip bad JSONL records (with a warning) instead of failing.") var skipBadRecords = false
    @Flag(help: "Resume from the newest checkpoint in --output-dir/checkpoints.") var resume = false
    @Option(help: "Compute threads (0: OPENBLAS_NUM_THREADS or the CPU count).") var threads = 0
    @Flag(help: "With PiSSA/OLoRA, also save the unconverted adapter (for the residual base) in --output-dir/unconverted.")
    var saveUnconvertedAdapter = false
    @Option(help: "Data-parallel training: auto (MPI when started by mpirun), mpi (require mpirun), none (one process). See the README.")
    var distributed: DistributedMode = .auto

    func run() throws {
        try LoRACommand.run { try DistributedRun.run(option: distributed) { try train() } }
    }

    func train() throws {
        guard !data.isEmpty else { throw LoRAError.invalidArgument("no training file given") }
        let modelDir = model ?? Defaults.modelDirectory
        let m = try Model.load(directory: modelDir)
        if threads > 0 { BLAS.threads = threads }
        guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("\(modelDir) has no tokenizer files") }
        let block = optim.blockSize ?? min(256, m.config.nPositions)
        guard block >= 2, block <= m.config.nPositions else {
            throw LoRAError.invalidArgument("--block-size must be in 2...\(m.config.nPositions) (the model's n_positions)")
        }
        var dopts = DatasetOptions(blockSize: block)
        dopts.badRecords = skipBadRecords ? .skip : .reject
        var trainSet = Dataset(examples: [])
        var validation: Dataset? = nil
        try DistributedRun.agree {  // under MPI: a rank that cannot read its data stops every rank
        trainSet = try Dataset.load(paths: data, tokenizer: tok, options: dopts)
        for w in trainSet.warnings where DistributedRun.isRoot { stderrLine("warning: \(w)") }
        if !validationFile.isEmpty {
            validation = try Dataset.load(paths: validationFile, tokenizer: tok, options: dopts)
        } else if validationSplit > 0 {
            let s = try trainSet.split(validationFraction: validationSplit, seed: optim.seed)
            trainSet = s.train
            validation = s.validation
        }
        }
        var tc = try optim.config(model: m, examples: trainSet.examples.count)
        tc.maxSteps = DistributedRun.maxSteps(tc, optim: optim, examples: trainSet.examples.count)
        var adapter: Adapter? = nil
        if !fullFinetune {
            let a = try Adapter(config: try lora.config(baseModel: modelDir), modelConfig: m.config)
            try a.initialize(from: m, seed: optim.seed)
            try m.attach(a)
            adapter = a
        }
        let trainer = try Trainer(model: m, adapter: adapter, config: tc)
        trainer.gradientReducer = DistributedRun.current
        let fm = FileManager.default
        try? fm.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let ckptDir = outputDir + "/checkpoints"
        if resume { try DistributedRun.agree(task: "read its checkpoint") {
            guard let latest = Checkpoint.latest(root: ckptDir) else { throw LoRAError.invalidArgument("--resume: no checkpoint in \(ckptDir)") }
            try Checkpoint.restore(trainer, from: latest)
            say("resumed from \(latest) at step \(trainer.step)")
        } }
        let startStep = trainer.step
        let what = adapter.map { "LoRA r=\($0.config.r) on \($0.slots.count) modules, \($0.parameterCount) trainable parameters" }
            ?? "all \(m.parameterCount) weights"
        say("training \(what); \(trainSet.examples.count) sequences (\(trainSet.tokenCount) tokens) of up to \(tc.blockSize); \(tc.maxSteps) steps of \(tc.batchSize)×\(tc.gradientAccumulationSteps); OpenBLAS \(BLAS.coreName)")
        DistributedRun.announce(tc)
        if let v = validation, trainer.step == 0 {
            let e = try trainer.evaluate(v)
            say(String(format: "validation loss before training: %.4f (perplexity %.2f)", e.loss, e.perplexity))
        }
        let printer = try ProgressPrinter(logPath: DistributedRun.isRoot ? outputDir + "/metrics.jsonl" : nil)
        var opts = TrainParams()
        opts.evalSteps = evalSteps
        opts.saveSteps = saveSteps > 0 ? saveSteps : tc.maxSteps
        opts.checkpointDirectory = ckptDir
        opts.saveTotalLimit = saveTotalLimit
        try trainer.train(trainSet, validation: validation, options: opts) { printer.report($0); return .continue }
        printer.finish()
        DistributedRun.summary(steps: tc.maxSteps - startStep)
        guard DistributedRun.isRoot else { return }
        if let adapter, adapter.initialParams != nil {
            // PiSSA/OLoRA trained on the residual base: save it as a plain LoRA for the original base.
            try adapter.convertedForOriginalBase().save(directory: outputDir)
            say("adapter converted for the original base (r \(adapter.config.r) → \(2 * adapter.config.r)) and saved to \(outputDir)")
            if saveUnconvertedAdapter {
                try adapter.save(directory: outputDir + "/unconverted")
                say("unconverted adapter (for the residual base) saved to \(outputDir)/unconverted")
            }
        } else if let adapter {
            try adapter.save(directory: outputDir)
            say("adapter saved to \(outputDir) (adapter_config.json, adapter_model.safetensors)")
        } else {
            try m.save(directory: outputDir)
            say("model saved to \(outputDir)")
        }
        let svg = lossCurveSVG(train: printer.trainLoss, validation: printer.validationLoss,
                               title: "liblora \(adapter == nil ? "full fine-tuning" : "LoRA") — \(URL(fileURLWithPath: modelDir).lastPathComponent)")
        try AtomicFile.write(svg, to: outputDir + "/loss.svg")
        say("loss curve: \(outputDir)/loss.svg; metrics: \(outputDir)/metrics.jsonl")
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Loss and perplexity of a model (± adapters) on text or JSONL files.")
    @OptionGroup var model: ModelOptions
    @Argument(help: "Evaluation files.") var data: [String]
    @Option(help: "Tokens per sequence.") var blockSize: Int?
    @Option(help: "Sequences per batch.") var batchSize = 4

    func run() throws {
        try LoRACommand.run {
            guard !data.isEmpty else { throw LoRAError.invalidArgument("no evaluation file given") }
            let m = try model.load()
            guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("the model has no tokenizer") }
            let block = blockSize ?? min(256, m.config.nPositions)
            let set = try Dataset.load(paths: data, tokenizer: tok, options: DatasetOptions(blockSize: block))
            var tc = TrainerParams(); tc.blockSize = block; tc.batchSize = batchSize
            let trainer = try Trainer(model: m, adapter: nil, config: tc, evaluationOnly: true)
            let r = try trainer.evaluate(set)
            say(String(format: "loss %.4f  perplexity %.3f  (%d tokens)", r.loss, r.perplexity, r.tokens))
        }
    }
}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fold adapters into the base model and export a Hugging Face checkpoint.")
    @OptionGroup var model: ModelOptions
    @Option(help: "Output directory for config.json + model.safetensors (+ tokenizer files).") var outputDir: String

    func run() throws {
        try LoRACommand.run {
            guard !model.adapters.isEmpty else { throw LoRAError.invalidArgument("give at least one --adapter DIR[:SCALE]") }
            let m = try model.load()
            for a in m.attachments { try m.merge(a.adapter) }
            try m.save(directory: outputDir)
            say("merged \(m.attachments.count) adapter(s) into \(outputDir)")
        }
    }
}
