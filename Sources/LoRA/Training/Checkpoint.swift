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
        do { try fm.createDirectory(atPath: root, withIntermediateDirectories: true) }
        catch { throw LoRAError.io(path: root, reason: "cannot create directory: \(error.localizedDescription)") }
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
                "config": trainer.checkpointFingerprint,
            ]
            try SafeTensorsWriter.write([
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
        guard md["config"] == trainer.checkpointFingerprint else {
            throw fail("the checkpoint was written with other training settings (\(md["config"] ?? "?"); the batch there is the global batch, per-rank batch × ranks); resume with the same ones")
        }
        var p = TrainerState()
        guard let step = md["step"].flatMap(Int.init), let epoch = md["epoch"].flatMap(Int.init),
              let offset = md["offset"].flatMap(Int.init), let rng = md["rng_state"].flatMap(UInt64.init),
              step >= 0, epoch >= 0, offset >= 0 else { throw fail("bad progress metadata") }
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
    /// The settings a resumed run must share with the original one.
    var fingerprint: String {
        [String(learningRate), String(weightDecay), String(adamBeta1), String(adamBeta2), String(adamEpsilon),
         lrScheduler.rawValue, String(warmupSteps), String(maxSteps), String(gradientAccumulationSteps),
         maxGradNorm.map { String($0) } ?? "none", String(batchSize), String(blockSize), String(seed)].joined(separator: ",")
    }
}
