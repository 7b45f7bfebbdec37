import ArgumentParser
import Foundation
import LoRA

struct LoRAOptions: ParsableArguments {
    @Option(help: Preset.help) var preset: Preset = .recipe
    @Option(parsing: .unconditional, help: "LoRA rank.") var r = LoRAConfig().r
    @Option(parsing: .unconditional, help: "LoRA alpha (scaling alpha/r). Default: from --preset.") var loraAlpha: Double?
    @Option(parsing: .unconditional, help: "Dropout on the LoRA input, at least 0 and below 1. Default: from --preset.") var loraDropout:
        Double?
    @Option(help: "Comma-separated module names or suffixes (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, c_proj). Default: from --preset.")
    var targetModules: String?
    @Option(help: "Comma-separated layer indices to adapt (default: all).") var layersToTransform: String?
    @Flag(help: "rsLoRA scaling alpha/sqrt(r).") var useRslora = false
    @Flag(help: "DoRA (PEFT's use_dora): also learn a magnitude per output feature (not with PiSSA/OLoRA).") var useDora = false
    @Flag(help: "PEFT's lora_bias: B also learns a bias, merged into the module's bias (not with DoRA, PiSSA/OLoRA or gaussian init).")
    var loraBias = false
    @Option(help: "Comma-separated modules trained in full beside the adapter (PEFT's modules_to_save; LayerNorms: ln_f, ln_1, h.1.ln_2).")
    var modulesToSave: String?
    @Option(help: "Initialisation (PiSSA/OLoRA change the base weights in memory; the adapter is saved converted for the original base).")
    var initLoraWeights = InitLoraWeights(argument: "default")!

    func validate() throws {
        try Check.atLeast(r, 1, "--r")
        try Check.finite(loraAlpha, above: 0, "--lora-alpha")
        try Check.fraction(loraDropout, "--lora-dropout")
        _ = try layers()
        switch initLoraWeights.value {
        case .pissa, .olora:
            if useDora { throw ValidationError("--use-dora cannot be combined with --init-lora-weights pissa or olora") }
        default: break
        }
        if loraBias {
            if useDora { throw ValidationError("--lora-bias cannot be combined with --use-dora") }
            guard initLoraWeights.value == .kaiming || initLoraWeights.value == .random else {
                throw ValidationError("--lora-bias needs --init-lora-weights default or random (as PEFT)")
            }
        }
    }

    func layers() throws -> [Int]? {
        try layersToTransform.map { l in
            try l.split(separator: ",").map {
                guard let i = Int($0.trimmingCharacters(in: .whitespaces)), i >= 0 else {
                    throw ValidationError("--layers-to-transform must list layer numbers from 0 (got \($0))")
                }
                return i
            }
        }
    }

    func config(baseModel: String) throws -> LoRAConfig {
        var c = LoRAConfig()
        c.r = r; c.loraAlpha = loraAlpha ?? preset.loraAlpha; c.loraDropout = loraDropout ?? preset.loraDropout
        if let t = targetModules ?? preset.targetModules {
            c.targetModules = .names(t.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        }
        if let l = try layers() { c.layersToTransform = l }
        c.useRSLoRA = useRslora
        c.useDoRA = useDora
        c.loraBias = loraBias
        if let m = modulesToSave {
            c.modulesToSave = m.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        c.initLoraWeights = initLoraWeights.value
        c.baseModelNameOrPath = baseModel
        return c
    }
}

struct OptimOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Peak learning rate.") var learningRate: Double = TrainerParams().learningRate
    @Option(parsing: .unconditional, help: "AdamW weight decay.") var weightDecay: Double = TrainerParams().weightDecay
    @Option(parsing: .unconditional, help: "AdamW beta1.") var adamBeta1: Double = TrainerParams().adamBeta1
    @Option(parsing: .unconditional, help: "AdamW beta2.") var adamBeta2: Double = TrainerParams().adamBeta2
    @Option(parsing: .unconditional, help: "AdamW epsilon.") var adamEpsilon: Double = TrainerParams().adamEpsilon
    @Option(name: [.customLong("lr-scheduler"), .customLong("lr-scheduler-type")], help: "The learning-rate schedule.")
    var lrScheduler: LRScheduler = TrainerParams().lrScheduler
    @Option(parsing: .unconditional, help: "Warmup steps.") var warmupSteps = TrainerParams().warmupSteps
    @Option(parsing: .unconditional, help: "Optimizer steps (overrides --num-train-epochs; raise it with --resume to extend a run).")
    var maxSteps: Int?
    @Option(parsing: .unconditional, help: "Epochs over the training data (when --max-steps is not given).") var numTrainEpochs: Double = 1
    @Option(parsing: .unconditional, help: "Micro-batches per optimizer step.") var gradientAccumulationSteps = TrainerParams()
        .gradientAccumulationSteps
    @Option(parsing: .unconditional, help: "Global gradient-norm clip (0: off).") var maxGradNorm: Double = TrainerParams().maxGradNorm ?? 0
    @Option(
        name: [.customLong("batch-size"), .customLong("per-device-train-batch-size")], parsing: .unconditional,
        help: "Sequences per micro-batch.")
    var batchSize = TrainerParams().batchSize
    @Option(parsing: .unconditional, help: "Tokens per sequence (default: min(256, the model's n_positions)).") var blockSize: Int?
    @Option(help: "Random seed (data order, dropout, adapter init).") var seed: UInt64 = TrainerParams().seed
    @Flag(help: "Recompute activations in backward (less memory, slower).") var gradientCheckpointing = false
    @Option(
        parsing: .unconditional, help: "LoRA+: B's learning rate is this times --learning-rate (PEFT's create_loraplus_optimizer; 1: off).")
    var loraplusLrRatio = TrainerParams().loraplusLRRatio
    @Flag(
        help:
            "GPT-2's own dropouts while training, at config.json's embd_pdrop, attn_pdrop and resid_pdrop (as transformers' model.train())."
    )
    var modelDropout = false

    func validate() throws {
        try Check.finite(learningRate, atLeast: 0, "--learning-rate")
        try Check.finite(loraplusLrRatio, above: 0, "--loraplus-lr-ratio")
        try Check.finite(weightDecay, atLeast: 0, "--weight-decay")
        try Check.fraction(adamBeta1, "--adam-beta1")
        try Check.fraction(adamBeta2, "--adam-beta2")
        try Check.finite(adamEpsilon, above: 0, "--adam-epsilon")
        try Check.atLeast(warmupSteps, 0, "--warmup-steps")
        try Check.atLeast(maxSteps, 1, "--max-steps")
        try Check.finite(numTrainEpochs, above: 0, "--num-train-epochs")
        guard (1...65536).contains(gradientAccumulationSteps) else {
            throw Check.fail("--gradient-accumulation-steps", "between 1 and 65536", gradientAccumulationSteps)
        }
        if let m = maxSteps, m > Int(Int32.max) { throw Check.fail("--max-steps", "at most 2147483647", m) }
        try Check.finite(maxGradNorm, atLeast: 0, "--max-grad-norm")
        guard (1...65536).contains(batchSize) else { throw Check.fail("--batch-size", "between 1 and 65536", batchSize) }
        try Check.atLeast(blockSize, 2, "--block-size")
    }

    func config(model: Model, examples: Int) throws -> TrainerParams {
        var c = TrainerParams()
        c.learningRate = learningRate; c.weightDecay = weightDecay; c.adamBeta1 = adamBeta1; c.adamBeta2 = adamBeta2
        c.adamEpsilon = adamEpsilon
        c.lrScheduler = lrScheduler
        c.warmupSteps = warmupSteps
        c.gradientAccumulationSteps = gradientAccumulationSteps
        c.maxGradNorm = maxGradNorm > 0 ? maxGradNorm : nil
        c.batchSize = batchSize
        c.blockSize = blockSize ?? 0
        c.seed = seed
        c.gradientCheckpointing = gradientCheckpointing
        c.loraplusLRRatio = loraplusLrRatio
        c.modelDropout = modelDropout
        if let m = maxSteps {
            c.maxSteps = m
        } else {
            c.maxSteps = try c.steps(forEpochs: numTrainEpochs, examples: examples, worldSize: DistributedRun.current?.worldSize ?? 1)
        }
        return c.resolved(for: model.config)
    }
}

/// Ctrl-C during training: the first asks for a checkpoint at the next step
/// boundary, the second exits at once (status 130).
enum Interrupt {
    nonisolated(unsafe) static var requested: sig_atomic_t = 0

    static func install() {
        // A parent may have left SIGINT blocked (Foundation's Process does): unblock it.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        signal(SIGINT) { _ in
            if Interrupt.requested != 0 { _exit(130) }
            Interrupt.requested = 1
            let msg: StaticString = "\nlora: interrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)\n"
            _ = write(STDERR_FILENO, msg.utf8Start, msg.utf8CodeUnitCount)
        }
    }
}

/// The shell command that continues an interrupted run.
func resumeCommand() -> String {
    var args = Array(CommandLine.arguments.dropFirst())
    if !args.contains("--resume") { args.append("--resume") }
    let safe = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_./=:,@%+"))
    func quote(_ s: String) -> String {
        s.unicodeScalars.allSatisfy(safe.contains) && !s.isEmpty ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
    return (["lora"] + args.map(quote)).joined(separator: " ")
}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune with LoRA (or all weights with --full-finetune) on text or JSONL files.",
        discussion: """
            Plain text files are packed into blocks with <|endoftext|> between documents (fortune files split at % lines);
            JSONL files hold {"text": ...} or {"prompt": ..., "completion": ...} records (loss on the completion only).
            Writes the adapter (PEFT layout) or the model (Hugging Face layout) into --output-dir, with
            checkpoints/, metrics.jsonl and loss.svg (the whole history, across resumes). A used --output-dir is
            refused unless --overwrite-output-dir or --resume. Ctrl-C saves a checkpoint after the current step
            and prints the command that resumes; a second Ctrl-C quits at once.
            """)

    @Option(help: "Model directory (default: the embedded model).") var model: String?
    @Argument(help: "Training files (.txt or .jsonl).") var data: [String] = []
    @Option(help: "Where the adapter or model, checkpoints and logs go.") var outputDir = "lora-output"
    @Flag(help: "Train into a used --output-dir (its checkpoints and logs are deleted first).") var overwriteOutputDir = false
    @OptionGroup var lora: LoRAOptions
    @OptionGroup var optim: OptimOptions
    @Flag(help: "Train every weight instead of a LoRA adapter.") var fullFinetune = false
    @Option(parsing: .unconditional, help: "Fraction of the data held out for evaluation, at least 0 and below 1.") var validationSplit:
        Double = 0
    @Option(help: "Validation files (instead of --validation-split).") var validationFile: [String] = []
    @Option(parsing: .unconditional, help: "Evaluate every N steps (0: at the end only; needs validation data).") var evalSteps = 0
    @Option(parsing: .unconditional, help: "Checkpoint every N steps (0: only at the end).") var saveSteps = 0
    @Option(parsing: .unconditional, help: "Checkpoints kept.") var saveTotalLimit = 2
    @Flag(help: "Skip bad JSONL records (with a warning) instead of failing.") var skipBadRecords = false
    @Flag(
        help:
            "Resume from the newest checkpoint in --output-dir/checkpoints (raise --max-steps or --num-train-epochs to extend a finished run)."
    ) var resume = false
    @OptionGroup var dtype: DTypeOption
    @OptionGroup var threads: ThreadOptions
    @Flag(help: "With PiSSA/OLoRA, also save the unconverted adapter (for the residual base) in --output-dir/unconverted.")
    var saveUnconvertedAdapter = false
    @Option(help: "Data-parallel training: auto (MPI when started by mpirun), mpi (require mpirun), none (one process). See the README.")
    var distributed: DistributedMode = .auto

    func validate() throws {
        guard !data.isEmpty else { throw ValidationError("give at least one training file (.txt or .jsonl)") }
        try Check.fraction(validationSplit, "--validation-split")
        try Check.atLeast(evalSteps, 0, "--eval-steps")
        try Check.atLeast(saveSteps, 0, "--save-steps")
        try Check.atLeast(saveTotalLimit, 1, "--save-total-limit")
        if evalSteps > 0 && validationSplit == 0 && validationFile.isEmpty {
            throw ValidationError("--eval-steps needs validation data: add --validation-split or --validation-file")
        }
        if resume && overwriteOutputDir { throw ValidationError("--resume and --overwrite-output-dir exclude each other") }
    }

    func run() throws {
        try LoRACommand.run { try DistributedRun.run(option: distributed) { try train() } }
    }

    /// Our files in a used output directory; refuses it unless told what to do.
    func prepareOutputDir() throws {
        let fm = FileManager.default
        let used = ((try? fm.contentsOfDirectory(atPath: outputDir)) ?? []).filter { !$0.hasPrefix(".") }
        guard !used.isEmpty, !resume else { return }
        guard overwriteOutputDir else {
            throw LoRAError.invalidArgument(
                "--output-dir \(outputDir) is not empty (\(used.sorted().prefix(4).joined(separator: ", "))): pass --overwrite-output-dir to train anew into it, --resume to continue its run, or another --output-dir"
            )
        }
        // Old checkpoints would outrank the new run's under --save-total-limit; old logs would mix runs.
        for name in ["checkpoints", "metrics.jsonl", "loss.svg", "unconverted"] where fm.fileExists(atPath: outputDir + "/" + name) {
            do { try fm.removeItem(atPath: outputDir + "/" + name) } catch {
                throw LoRAError.io(path: outputDir + "/" + name, reason: "cannot remove: \(error.localizedDescription)")
            }
        }
    }

    func train() throws {
        let modelDir = model ?? Defaults.modelDirectory
        let m = try loadModel(modelDir, dtype: dtype.dtype)
        threads.apply()
        guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("\(modelDir) has no tokenizer files") }
        if let b = optim.blockSize, b > m.config.nPositions {
            throw LoRAError.invalidArgument("--block-size must be between 2 and \(m.config.nPositions), the model's n_positions (got \(b))")
        }
        let block = optim.blockSize ?? min(TrainerParams.defaultBlockSize, m.config.nPositions)
        // Under MPI, rank 0 owns --output-dir; a refusal there stops every rank.
        try DistributedRun.agree(task: "prepare --output-dir") { if DistributedRun.isRoot { try prepareOutputDir() } }
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
        let tc = try optim.config(model: m, examples: trainSet.examples.count)
        let ckptDir = outputDir + "/checkpoints"
        var latest: String? = nil
        if resume {
            try DistributedRun.agree(task: "read its checkpoint") {
                guard let l = Checkpoint.latest(root: ckptDir) else {
                    throw LoRAError.invalidArgument("--resume: no checkpoint in \(ckptDir)")
                }
                // Checkpoints record the global batch (per-rank batch × ranks).
                var global = tc
                global.batchSize = tc.batchSize * (DistributedRun.current?.worldSize ?? 1)
                let changed = try Checkpoint.changedSettings(at: l, config: global)
                if !changed.isEmpty {
                    let list = changed.map { "--\($0.name.replacingOccurrences(of: "_", with: "-")) \($0.saved) (now \($0.current))" }
                    throw LoRAError.invalidArgument(
                        "--resume: \(l) was written with other settings: \(list.joined(separator: ", ")); give the same values (only --max-steps or --num-train-epochs may change, to extend the run; under MPI --batch-size there is the global batch, per-rank batch × ranks)"
                    )
                }
                latest = l
            }
        }
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
        do { try fm.createDirectory(atPath: outputDir, withIntermediateDirectories: true) } catch {
            throw LoRAError.io(path: outputDir, reason: "cannot create directory: \(error.localizedDescription)")
        }
        if let latest {
            try Checkpoint.restore(trainer, from: latest)
            say("resumed from \(latest) at step \(trainer.step) of \(tc.maxSteps)")
        }
        let startStep = trainer.step
        let what =
            adapter.map { "LoRA r=\($0.config.r) on \($0.slots.count) modules, \($0.parameterCount) trainable parameters" }
            ?? "all \(m.parameterCount) weights"
        say(
            "training \(what); \(trainSet.examples.count) sequences (\(trainSet.tokenCount) tokens) of up to \(tc.blockSize); \(tc.maxSteps) steps of \(tc.batchSize)×\(tc.gradientAccumulationSteps); OpenBLAS \(BLAS.coreName)"
        )
        DistributedRun.announce(tc)
        // The history of earlier runs into this directory up to the resumed step (later steps are redone).
        let printer = try ProgressPrinter(
            logPath: DistributedRun.isRoot ? outputDir + "/metrics.jsonl" : nil,
            keepUpTo: resume ? trainer.step : nil)
        if let v = validation, trainer.step == 0 {
            let e = try trainer.evaluate(v)
            say(String(format: "validation loss before training: %.4f (perplexity %.2f)", e.loss, e.perplexity))
            printer.recordValidation(step: 0, loss: e.loss)
        }
        var opts = TrainParams()
        opts.evalSteps = evalSteps
        opts.saveSteps = saveSteps > 0 ? saveSteps : tc.maxSteps
        opts.checkpointDirectory = ckptDir
        opts.saveTotalLimit = saveTotalLimit
        let title = "liblora \(adapter == nil ? "full fine-tuning" : "LoRA") — \(URL(fileURLWithPath: modelDir).lastPathComponent)"
        Interrupt.install()
        defer { signal(SIGINT, SIG_DFL) }
        var interruptedAt: String? = nil
        do {
            try trainer.train(trainSet, validation: validation, options: opts) { report in
                printer.report(report)
                if Interrupt.requested != 0 {
                    do {
                        if DistributedRun.isRoot {
                            interruptedAt = try report.checkpoint ?? Checkpoint.save(trainer, root: ckptDir)
                            Checkpoint.prune(root: ckptDir, keep: saveTotalLimit)
                        }
                    } catch { stderrLine("lora: error: cannot save the checkpoint: \(error)") }
                    return .stop
                }
                return .continue
            }
        } catch LoRAError.aborted {
            printer.finish()
            guard DistributedRun.isRoot else { throw ExitCode(130) }
            try AtomicFile.write(
                lossCurveSVG(train: printer.trainLoss, validation: printer.validationLoss, title: title), to: outputDir + "/loss.svg")
            if let at = interruptedAt {
                stderrLine("lora: interrupted at step \(trainer.step); checkpoint \(at)")
                stderrLine("resume with: \(resumeCommand())")
            }
            throw ExitCode(130)
        }
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
        try AtomicFile.write(
            lossCurveSVG(train: printer.trainLoss, validation: printer.validationLoss, title: title), to: outputDir + "/loss.svg")
        say("loss curve: \(outputDir)/loss.svg; metrics: \(outputDir)/metrics.jsonl")
    }
}

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Loss and perplexity of a model (± adapters) on text or JSONL files.")
    @OptionGroup var model: ModelOptions
    @Argument(help: "Evaluation files.") var data: [String] = []
    @Option(parsing: .unconditional, help: "Tokens per sequence (default: min(256, the model's n_positions)).") var blockSize: Int?
    @Option(parsing: .unconditional, help: "Sequences per batch.") var batchSize = TrainerParams().batchSize

    func validate() throws {
        guard !data.isEmpty else { throw ValidationError("give at least one evaluation file (.txt or .jsonl)") }
        try Check.atLeast(blockSize, 2, "--block-size")
        guard (1...65536).contains(batchSize) else { throw Check.fail("--batch-size", "between 1 and 65536", batchSize) }
    }

    func run() throws {
        try LoRACommand.run {
            let m = try model.load()
            guard let tok = m.tokenizer else { throw LoRAError.invalidArgument("the model has no tokenizer") }
            if let b = blockSize, b > m.config.nPositions {
                throw LoRAError.invalidArgument(
                    "--block-size must be between 2 and \(m.config.nPositions), the model's n_positions (got \(b))")
            }
            let block = blockSize ?? min(TrainerParams.defaultBlockSize, m.config.nPositions)
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
