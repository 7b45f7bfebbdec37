import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where a training run stands: enough to resume it bit for bit.
public struct TrainerState: Sendable, Equatable {
    /// Optimizer steps taken.
    public var step = 0
    /// Data position: epoch and next example index within the epoch's order.
    public var epoch = 0
    public var offset = 0
    /// The generator that draws dropout seeds.
    public var rngState: UInt64 = 0
    public init() {}
}

/// Checkpoints: a directory `checkpoint-<step>` holding the trained weights
/// in their Hugging Face/PEFT layout plus `trainer_state.safetensors` (AdamW
/// moments, with step, data position, RNG state and the hyperparameters in
/// its metadata). The directory is written under a temporary name, flushed,
/// and renamed into place, so a crash never leaves a half-written checkpoint
/// under a checkpoint name.
public enum Checkpoint {
    public static let stateFile = "trainer_state.safetensors"
    static let prefix = "checkpoint-"

    /// Writes a checkpoint of `trainer` (at its current progress) into `root/checkpoint-<step>`; returns its path.
    @discardableResult
    public static func save(_ trainer: Trainer, root: String) throws -> String {
        let progress = trainer.state
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw LoRAError.io(path: root, reason: "cannot create directory: \(error.localizedDescription)")
        }
        let final = root + "/" + prefix + String(progress.step)
        let tmp = root + "/." + prefix + String(progress.step) + ".tmp-\(getpid())"
        // Temporary directories left by a run that was killed while saving.
        for name in (try? fm.contentsOfDirectory(atPath: root)) ?? [] where name.hasPrefix("." + prefix) && name.contains(".tmp-") {
            try? fm.removeItem(atPath: root + "/" + name)
        }
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
            if let adapter = trainer.adapter {
                try adapter.save(directory: tmp)
            } else {
                try HFExport.write(trainer.model.weights, to: tmp)
            }
            let n = trainer.m.count
            let meta: [String: String] = [
                "format": "pt",
                "step": String(progress.step), "epoch": String(progress.epoch), "offset": String(progress.offset),
                "rng_state": String(progress.rngState),
                "config": trainer.checkpointConfig.fingerprint,
                "settings": trainer.checkpointConfig.settings.map { "\($0.name)=\($0.value)" }.joined(separator: ";"),
            ]
            try SafeTensorsWriter.write(
                [
                    TensorData(name: "exp_avg", shape: [n], floats: UnsafeBufferPointer(start: trainer.m.base, count: n)),
                    TensorData(name: "exp_avg_sq", shape: [n], floats: UnsafeBufferPointer(start: trainer.v.base, count: n)),
                ], to: tmp + "/" + stateFile, metadata: meta)
            fsyncPath(tmp)
            if fm.fileExists(atPath: final) { try fm.removeItem(atPath: final) }
            guard rename(tmp, final) == 0 else {
                throw LoRAError.io(path: final, reason: "rename failed: \(String(cString: strerror(errno)))")
            }
            fsyncPath(root)
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
        return final
    }

    static func fsyncPath(_ path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }

    /// The checkpoint directories under `root`, oldest first.
    public static func list(root: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix(prefix), let s = Int(name.dropFirst(prefix.count)), s >= 0 else { return nil }
            return (s, root + "/" + name)
        }.sorted { $0.0 < $1.0 }
    }

    /// The newest checkpoint under root, if any.
    public static func latest(root: String) -> String? { list(root: root).last?.path }

    /// Deletes all but the newest `keep` checkpoints.
    public static func prune(root: String, keep: Int) {
        let all = list(root: root)
        guard keep >= 1, all.count > keep else { return }
        for (_, p) in all.dropLast(keep) { try? FileManager.default.removeItem(atPath: p) }
    }

    /// Restores weights, AdamW moments and progress from `path` into
    /// `trainer` (which must have been created with the same configuration).
    @discardableResult
    public static func restore(_ trainer: Trainer, from path: String) throws -> TrainerState {
        let statePath = path + "/" + stateFile
        let f = try SafeTensorsFile(path: statePath)
        func fail(_ r: String) -> LoRAError { .invalidFile(path: statePath, reason: r) }
        guard let md = f.metadata else { throw fail("no metadata") }
        let changed = settingsChanged(md, trainer.checkpointConfig)
        guard changed.isEmpty else {
            let list = changed.map { "\($0.name) \($0.saved) (now \($0.current))" }.joined(separator: ", ")
            throw fail(
                "the checkpoint was written with other training settings: \(list) (batch_size there is the global batch, per-rank batch × ranks); resume with the same ones"
            )
        }
        var p = TrainerState()
        guard let step = md["step"].flatMap(Int.init), let epoch = md["epoch"].flatMap(Int.init),
            let offset = md["offset"].flatMap(Int.init), let rng = md["rng_state"].flatMap(UInt64.init),
            step >= 0, epoch >= 0, offset >= 0,
            // Bounded so that later arithmetic (step + 1, epoch + 1) cannot overflow.
            step <= Int(Int32.max), epoch <= Int(Int32.max), offset <= Int(Int32.max)
        else {
            throw fail("bad progress metadata (step, epoch and offset must be integers from 0 to 2^31 - 1)")
        }
        p.step = step; p.epoch = epoch; p.offset = offset; p.rngState = rng
        let n = trainer.m.count
        for (name, block) in [("exp_avg", trainer.m), ("exp_avg_sq", trainer.v)] {
            guard let info = f[name], info.shape == [n] else { throw fail("\(name) does not fit the trained parameters (\(n))") }
            try f.copyFloats(info, into: block.base)
        }
        if let adapter = trainer.adapter {
            let loaded = try Adapter.load(directory: path, modelConfig: trainer.model.config)
            guard loaded.params.count == adapter.params.count, loaded.slots == adapter.slots else {
                throw LoRAError.invalidFile(path: path, reason: "the checkpoint's adapter does not match the trained one")
            }
            adapter.params.base.update(from: loaded.params.base, count: loaded.params.count)
        } else {
            try trainer.model.weights.load(from: SafeTensorsFile(path: path + "/" + HFExport.weightsFile))
        }
        trainer.restore(p)
        return p
    }
}

extension TrainerParams {
    /// The settings a resumed run must share with the original one, by their
    /// C/Python names (max_steps may grow: raising it extends a run, as the
    /// learning-rate schedule is then computed for the new total).
    var settings: [(name: String, value: String)] {
        [
            ("learning_rate", String(learningRate)), ("weight_decay", String(weightDecay)),
            ("adam_beta1", String(adamBeta1)), ("adam_beta2", String(adamBeta2)), ("adam_epsilon", String(adamEpsilon)),
            ("lr_scheduler", lrScheduler.rawValue), ("warmup_steps", String(warmupSteps)), ("max_steps", String(maxSteps)),
            ("gradient_accumulation_steps", String(gradientAccumulationSteps)),
            ("max_grad_norm", maxGradNorm.map { String($0) } ?? "none"), ("batch_size", String(batchSize)),
            ("block_size", String(blockSize)), ("seed", String(seed)),
            ("loraplus_lr_ratio", String(loraplusLRRatio)), ("model_dropout", modelDropout ? modelDropoutRates ?? "true" : "false"),
        ]
    }

    /// The settings 0.1.0 wrote by position (the "config" metadata key).
    static let positionalSettings = 13

    /// The positional form written by 0.1.0 (the "config" metadata key), kept for older readers.
    var fingerprint: String { settings.prefix(TrainerParams.positionalSettings).map(\.value).joined(separator: ",") }
}

extension Checkpoint {
    /// A setting whose value in a checkpoint differs from the trainer's.
    public struct ChangedSetting: Sendable, Equatable {
        /// The C/Python name (learning_rate, batch_size, ...); the CLI flag is the same with dashes.
        public var name: String
        public var saved: String
        public var current: String
    }

    /// The settings of the checkpoint at `path` that differ from `config`
    /// (the CLI names them as flags before resuming). max_steps is never a
    /// difference: a resumed run may extend (or shorten) the schedule.
    public static func changedSettings(at path: String, config: TrainerParams) throws -> [ChangedSetting] {
        let statePath = path + "/" + stateFile
        let f = try SafeTensorsFile(path: statePath)
        guard let md = f.metadata else { throw LoRAError.invalidFile(path: statePath, reason: "no metadata") }
        return settingsChanged(md, config)
    }

    static func settingsChanged(_ md: [String: String], _ config: TrainerParams) -> [ChangedSetting] {
        let current = config.settings
        var saved: [String: String] = [:]
        if let s = md["settings"] {
            for item in s.split(separator: ";") {
                guard let eq = item.firstIndex(of: "=") else { continue }
                saved[String(item[..<eq])] = String(item[item.index(after: eq)...])
            }
        } else if let old = md["config"] {
            // 0.1.0 checkpoints: the same values, by position.
            let values = old.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            if values.count == TrainerParams.positionalSettings { for (k, v) in zip(current, values) { saved[k.name] = v } }
        }
        // A setting newer than the checkpoint had its default then.
        let defaults = Dictionary(TrainerParams().settings.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
        return current.compactMap { name, value in
            if name == "max_steps" { return nil }
            let old = saved[name] ?? (saved.isEmpty ? "unknown" : defaults[name] ?? "unknown")
            return old == value ? nil : ChangedSetting(name: name, saved: old, current: value)
        }
    }
}
