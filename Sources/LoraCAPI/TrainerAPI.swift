import CLoraABI
import Foundation
import LoRA

var defaultTrainerParams: lora_trainer_params {
    let d = TrainerParams()
    return lora_trainer_params(
        struct_size: UInt32(MemoryLayout<lora_trainer_params>.size),
        learning_rate: Float(d.learningRate), weight_decay: Float(d.weightDecay),
        adam_beta1: Float(d.adamBeta1), adam_beta2: Float(d.adamBeta2), adam_epsilon: Float(d.adamEpsilon),
        lr_scheduler: LORA_SCHEDULER_LINEAR, warmup_steps: Int32(d.warmupSteps), max_steps: Int32(d.maxSteps),
        gradient_accumulation_steps: Int32(d.gradientAccumulationSteps),
        max_grad_norm: Float(d.maxGradNorm ?? 0), batch_size: Int32(d.batchSize),
        block_size: Int32(d.blockSize), seed: d.seed, gradient_checkpointing: 0,
        loraplus_lr_ratio: Float(d.loraplusLRRatio), model_dropout: d.modelDropout ? 1 : 0)
}

@_cdecl("lora_trainer_default_params")
public func lora_trainer_default_params(_ p: UnsafeMutablePointer<lora_trainer_params>?) {
    writeDefaults(p, defaultTrainerParams, size: FrozenParamsSize.trainer)
}

@_cdecl("lora_trainer_default_params_v2")
public func lora_trainer_default_params_v2(_ p: UnsafeMutablePointer<lora_trainer_params>?, _ size: Int) {
    writeDefaults(p, defaultTrainerParams, size: size)
}

var defaultTrainParams: lora_train_params {
    lora_train_params(
        struct_size: UInt32(MemoryLayout<lora_train_params>.size), validation_fraction: 0,
        eval_steps: 0, save_steps: 0, checkpoint_dir: nil, skip_bad_records: 0, num_train_epochs: 0)
}

@_cdecl("lora_train_default_params")
public func lora_train_default_params(_ p: UnsafeMutablePointer<lora_train_params>?) {
    writeDefaults(p, defaultTrainParams, size: FrozenParamsSize.train)
}

@_cdecl("lora_train_default_params_v2")
public func lora_train_default_params_v2(_ p: UnsafeMutablePointer<lora_train_params>?, _ size: Int) {
    writeDefaults(p, defaultTrainParams, size: size)
}

@_cdecl("lora_trainer_create")
public func lora_trainer_create(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ model: OpaquePointer?, _ adapter: OpaquePointer?,
    _ params: UnsafePointer<lora_trainer_params>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let mb = try box(model, ModelBox.self, "model")
        let ab = try adapter.map { try box($0, AdapterBox.self, "adapter") }
        if let ab { guard ab.model === mb else { throw invalid("the adapter belongs to another model handle") } }
        let p = try readParams(params, defaults: defaultTrainerParams, name: "lora_trainer_params")
        var c = TrainerParams()
        c.learningRate = Double(try finite(p.learning_rate, "learning_rate"))
        c.weightDecay = Double(try finite(p.weight_decay, "weight_decay"))
        c.adamBeta1 = Double(try finite(p.adam_beta1, "adam_beta1"))
        c.adamBeta2 = Double(try finite(p.adam_beta2, "adam_beta2"))
        c.adamEpsilon = Double(try finite(p.adam_epsilon, "adam_epsilon"))
        switch p.lr_scheduler {
        case LORA_SCHEDULER_CONSTANT: c.lrScheduler = .constant
        case LORA_SCHEDULER_CONSTANT_WITH_WARMUP: c.lrScheduler = .constantWithWarmup
        case LORA_SCHEDULER_LINEAR: c.lrScheduler = .linear
        case LORA_SCHEDULER_COSINE: c.lrScheduler = .cosine
        default: throw invalid("lr_scheduler \(p.lr_scheduler) is not a LORA_SCHEDULER_* value")
        }
        c.warmupSteps = Int(p.warmup_steps)
        c.maxSteps = Int(p.max_steps)
        c.gradientAccumulationSteps = Int(p.gradient_accumulation_steps)
        let clip = try finite(p.max_grad_norm, "max_grad_norm")
        c.maxGradNorm = clip > 0 ? Double(clip) : nil
        c.batchSize = Int(p.batch_size)
        c.blockSize = Int(p.block_size)
        c.seed = p.seed
        c.gradientCheckpointing = p.gradient_checkpointing != 0
        // 0 is 0.1.0's tail padding in a zero-filled struct: plain AdamW, as 1.
        let ratio = try finite(p.loraplus_lr_ratio, "loraplus_lr_ratio")
        c.loraplusLRRatio = ratio == 0 ? 1 : Double(ratio)
        c.modelDropout = p.model_dropout != 0
        if let a = ab?.adapter, !mb.model.attachments.contains(where: { $0.adapter === a }) {
            try mb.model.attach(a)
        }
        let trainer = try Trainer(model: mb.model, adapter: ab?.adapter, config: c)
        o.pointee = retain(TrainerBox(trainer, model: mb, adapter: ab))
    }
}

@_cdecl("lora_trainer_free")
public func lora_trainer_free(_ trainer: OpaquePointer?) { release(trainer, TrainerBox.self) }

@_cdecl("lora_trainer_get_step")
public func lora_trainer_get_step(_ trainer: OpaquePointer?) -> Int32 {
    guard let tb = try? box(trainer, TrainerBox.self, "trainer") else { return -1 }
    return Int32(clamping: tb.trainer.step)
}

func loadData(_ tb: TrainerBox, _ paths: [String], skipBad: Bool) throws -> Dataset {
    guard let tok = tb.model.model.tokenizer else {
        throw LoRAError.wrongState("the model has no tokenizer; use lora_trainer_step with token ids")
    }
    var o = DatasetOptions(blockSize: tb.trainer.config.blockSize)
    o.badRecords = skipBad ? .skip : .reject
    return try Dataset.load(paths: paths, tokenizer: tok, options: o)
}

@_cdecl("lora_trainer_train")
public func lora_trainer_train(
    _ trainer: OpaquePointer?, _ paths: UnsafePointer<UnsafePointer<CChar>?>?, _ nPaths: Int,
    _ params: UnsafePointer<lora_train_params>?,
    _ callback: lora_progress_callback?, _ user: UnsafeMutableRawPointer?
) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        let n = try count(nPaths, "n_paths", max: 1 << 16)
        guard n > 0, let paths else { throw invalid("no data path given") }
        let files = try (0..<n).map { try string(paths[$0], "data_paths[\($0)]") }
        let p = try readParams(params, defaults: defaultTrainParams, name: "lora_train_params")
        let fraction = Double(try finite(p.validation_fraction, "validation_fraction"))
        guard fraction >= 0, fraction < 1 else { throw invalid("validation_fraction must be in [0, 1)") }
        var data = try loadData(tb, files, skipBad: p.skip_bad_records != 0)
        var validation: Dataset? = nil
        if fraction > 0 {
            let s = try data.split(validationFraction: fraction, seed: tb.trainer.config.seed)
            data = s.train
            validation = s.validation
        }
        let epochs = Double(try finite(p.num_train_epochs, "num_train_epochs"))
        guard epochs >= 0 else { throw invalid("num_train_epochs must be >= 0 (0: max_steps as created)") }
        if epochs > 0 {
            let ranks = tb.trainer.gradientReducer?.worldSize ?? 1
            try tb.trainer.setMaxSteps(try tb.trainer.config.steps(forEpochs: epochs, examples: data.examples.count, worldSize: ranks))
        }
        var opts = TrainParams()
        guard p.eval_steps >= 0, p.save_steps >= 0 else { throw invalid("eval_steps and save_steps must be >= 0") }
        opts.evalSteps = Int(p.eval_steps)
        opts.saveSteps = Int(p.save_steps)
        if let d = p.checkpoint_dir { opts.checkpointDirectory = try string(d, "checkpoint_dir") }
        try tb.trainer.train(data, validation: validation, options: opts) { r in
            guard let callback else { return .continue }
            var c = lora_train_progress(
                step: Int32(r.step), max_steps: Int32(r.maxSteps), loss: Float(r.loss),
                learning_rate: Float(r.learningRate), grad_norm: Float(r.gradNorm),
                tokens_per_second: Float(r.tokensPerSecond),
                validation_loss: r.validationLoss.map(Float.init) ?? .nan)
            return callback(&c, user) == 0 ? .continue : .stop
        }
    }
}

@_cdecl("lora_trainer_step")
public func lora_trainer_step(
    _ trainer: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ labels: UnsafePointer<Int32>?,
    _ batch: Int32, _ seqLen: Int32, _ loss: UnsafeMutablePointer<Float>?
) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        guard batch >= 1, seqLen >= 2 else { throw invalid("batch must be >= 1 and seq_len >= 2") }
        guard Int(batch) <= tb.trainer.config.batchSize, Int(seqLen) <= tb.trainer.config.blockSize else {
            throw invalid(
                "[\(batch), \(seqLen)] exceeds the trainer's batch_size \(tb.trainer.config.batchSize) × block_size \(tb.trainer.config.blockSize)"
            )
        }
        guard let tokens else { throw invalid("tokens is NULL") }
        let B = Int(batch)
        let T = Int(seqLen)
        let ids = (0..<B).map { b in Array(UnsafeBufferPointer(start: tokens + b * T, count: T)) }
        let labs = labels.map { l in (0..<B).map { b in Array(UnsafeBufferPointer(start: l + b * T, count: T)) } }
        let mean = try tb.trainer.step(ids: ids, labels: labs)
        loss?.pointee = Float(mean)
    }
}

@_cdecl("lora_trainer_evaluate")
public func lora_trainer_evaluate(
    _ trainer: OpaquePointer?, _ path: UnsafePointer<CChar>?,
    _ loss: UnsafeMutablePointer<Float>?, _ perplexity: UnsafeMutablePointer<Float>?
) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        let data = try loadData(tb, [try string(path, "data_path")], skipBad: false)
        let r = try tb.trainer.evaluate(data)
        loss?.pointee = Float(r.loss)
        perplexity?.pointee = Float(r.perplexity)
    }
}

@_cdecl("lora_trainer_save_checkpoint")
public func lora_trainer_save_checkpoint(_ trainer: OpaquePointer?, _ dir: UnsafePointer<CChar>?) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        try Checkpoint.save(tb.trainer, root: try string(dir, "dir"))
    }
}

@_cdecl("lora_trainer_resume")
public func lora_trainer_resume(_ trainer: OpaquePointer?, _ path: UnsafePointer<CChar>?) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        try Checkpoint.restore(tb.trainer, from: try string(path, "checkpoint_path"))
    }
}

@_cdecl("lora_trainer_set_gradient_reducer")
public func lora_trainer_set_gradient_reducer(
    _ trainer: OpaquePointer?, _ rank: Int32, _ worldSize: Int32,
    _ reduce: lora_gradient_reducer?, _ user: UnsafeMutableRawPointer?
) -> lora_status {
    guarded {
        let tb = try box(trainer, TrainerBox.self, "trainer")
        guard let reduce else {
            tb.trainer.gradientReducer = nil
            return
        }
        let r = try FunctionGradientReducer(rank: Int(rank), worldSize: Int(worldSize)) { buffer in
            guard let base = buffer.baseAddress else { return }
            let status = reduce(base, buffer.count, user)
            guard status == 0 else { throw LoRAError.aborted }
        }
        tb.trainer.gradientReducer = r
    }
}
