import Foundation
import LoRA
import Testing

@Suite struct TrainingLoopTests {
    func examples(_ n: Int, seed: UInt64, vocab: Int = 101, length: Int = 12) -> Dataset {
        var rng = SplitMix64(seed: seed)
        return Dataset(
            examples: (0..<n).map { _ in
                TrainingExample(ids: (0..<length).map { _ in TokenID(rng.next() % UInt64(vocab)) })
            })
    }

    func setup(dropout: Double = 0.1) throws -> (Model, Adapter, TrainerParams) {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        var lc = LoRAConfig(); lc.r = 4; lc.loraAlpha = 8; lc.loraDropout = dropout
        lc.targetModules = .names(["c_attn", "c_proj", "c_fc"])
        let adapter = try Adapter(config: lc, modelConfig: model.config)
        try adapter.initialize(seed: 3)
        var tc = TrainerParams()
        tc.learningRate = 1e-2; tc.maxSteps = 10; tc.warmupSteps = 2; tc.lrScheduler = .cosine
        tc.batchSize = 3; tc.blockSize = 12; tc.gradientAccumulationSteps = 2; tc.seed = 9
        return (model, adapter, tc)
    }

    func bytes(_ a: Adapter) -> [Float] { Array(a.params.buffer) }

    @Test func resumeReproducesTheUninterruptedRunBitForBit() throws {
        let data = examples(20, seed: 1)
        // 10 steps straight.
        let (m1, a1, tc) = try setup()
        let t1 = try Trainer(model: m1, adapter: a1, config: tc)
        var losses1: [Double] = []
        try t1.train(data) {
            losses1.append($0.loss); return .continue
        }
        // 5 steps with checkpoints, then a fresh process-like resume for the rest.
        let dir = try Fixtures.tempDir()
        let (m2, a2, _) = try setup()
        var opts = TrainParams(); opts.saveSteps = 5; opts.checkpointDirectory = dir
        let t2 = try Trainer(model: m2, adapter: a2, config: tc)
        var losses2: [Double] = []
        do {
            try t2.train(data, options: opts) { r in
                losses2.append(r.loss); return r.step < 5 ? .continue : .stop
            }
            Issue.record("the callback did not stop the run")
        } catch LoRAError.aborted {}
        let ckpt = try #require(Checkpoint.latest(root: dir))
        #expect(ckpt.hasSuffix("checkpoint-5"))
        let (m3, a3, _) = try setup()
        let t3 = try Trainer(model: m3, adapter: a3, config: tc)
        let progress = try Checkpoint.restore(t3, from: ckpt)
        #expect(progress.step == 5)
        try t3.train(data) {
            losses2.append($0.loss); return .continue
        }
        #expect(losses1 == losses2)
        #expect(bytes(a1) == bytes(a3))
        // The saved adapters are byte-identical too.
        let d1 = try Fixtures.tempDir()
        let d3 = try Fixtures.tempDir()
        try a1.save(directory: d1); try a3.save(directory: d3)
        #expect(
            try Data(contentsOf: URL(fileURLWithPath: d1 + "/adapter_model.safetensors"))
                == Data(contentsOf: URL(fileURLWithPath: d3 + "/adapter_model.safetensors")))
    }

    /// Evaluation (validation loss) runs the adapter as PEFT's module in
    /// eval mode: no LoRA dropout, so the loss equals the dropout-free one.
    @Test func evaluationAppliesNoLoRADropout() throws {
        let data = examples(6, seed: 4)
        let (m1, a1, tc) = try setup(dropout: 0.5)
        let (m2, a2, _) = try setup(dropout: 0)
        // B non-zero, so the branch changes the loss.
        for a in [a1, a2] { for i in 0..<a.params.count { a.params.base[i] = Float(i % 7) * 0.01 - 0.03 } }
        let withDropout = try Trainer(model: m1, adapter: a1, config: tc).evaluate(data)
        let without = try Trainer(model: m2, adapter: a2, config: tc).evaluate(data)
        #expect(withDropout.loss == without.loss)
        // Training passes still drop: the step's loss differs.
        let ids = data.examples.prefix(3).map(\.ids)
        let t1 = try Trainer(model: m1, adapter: a1, config: tc)
        let t2 = try Trainer(model: m2, adapter: a2, config: tc)
        #expect(try t1.accumulate(ids: ids).loss != t2.accumulate(ids: ids).loss)
    }

    @Test func trainingLowersTheLossAndEvaluates() throws {
        let (model, adapter, tc0) = try setup(dropout: 0)
        var tc = tc0
        tc.maxSteps = 30; tc.learningRate = 3e-2; tc.gradientAccumulationSteps = 1
        // A tiny, learnable language: repeated patterns.
        let data = Dataset(examples: (0..<12).map { i in TrainingExample(ids: (0..<12).map { TokenID(($0 + i) % 7) }) })
        let trainer = try Trainer(model: model, adapter: adapter, config: tc)
        let before = try trainer.evaluate(data)
        var reports: [TrainProgress] = []
        var opts = TrainParams(); opts.evalSteps = 10
        try trainer.train(data, validation: data, options: opts) {
            reports.append($0); return .continue
        }
        let after = try trainer.evaluate(data)
        #expect(after.loss < before.loss * 0.5, "loss \(before.loss) → \(after.loss)")
        #expect(abs(after.perplexity - Foundation.exp(after.loss)) < 1e-9)
        #expect(reports.count == 30)
        #expect(reports.filter { $0.validationLoss != nil }.map(\.step) == [10, 20, 30])
        #expect(reports.allSatisfy { $0.tokensPerSecond > 0 && $0.learningRate >= 0 })
    }

    @Test func nonFiniteLossStopsWithTheStepAndKeepsTheLastGoodWeights() throws {
        let (model, adapter, tc0) = try setup(dropout: 0)
        var tc = tc0
        tc.maxSteps = 6; tc.gradientAccumulationSteps = 1
        let data = examples(6, seed: 2)
        let trainer = try Trainer(model: model, adapter: adapter, config: tc)
        var snapshot: [Float] = []
        do {
            try trainer.train(data) { r in
                if r.step == 3 {
                    snapshot = Array(adapter.params.buffer)
                    // Poison a base weight: the next forward pass gives NaN.
                    model.weights.lnfW[0] = .nan
                }
                return .continue
            }
            Issue.record("training went on with a NaN loss")
        } catch LoRAError.numerical(let m) {
            #expect(m.contains("step 4"), "\(m)")
        }
        #expect(Array(adapter.params.buffer) == snapshot)
        #expect(trainer.step == 3)
    }

    @Test func badTrainingInputsAreErrors() throws {
        let (model, adapter, tc) = try setup()
        let trainer = try Trainer(model: model, adapter: adapter, config: tc)
        #expect(throws: LoRAError.self) { try trainer.train(Dataset(examples: [])) }
        #expect(throws: LoRAError.self) { try trainer.step(ids: [[1, 2, 300]]) }
        #expect(throws: LoRAError.self) { try trainer.step(ids: [[1, 2, 3]], labels: [[-100, -100, -100]]) }
        #expect(throws: LoRAError.self) { try trainer.step(ids: [Array(repeating: 1, count: 13)]) }
        var bad = tc; bad.blockSize = 33
        #expect(throws: LoRAError.self) { try Trainer(model: model, adapter: adapter, config: bad) }
        bad = tc; bad.learningRate = .nan
        #expect(throws: LoRAError.self) { try Trainer(model: model, adapter: adapter, config: bad) }
        var lc = LoRAConfig(); lc.r = 0
        #expect(throws: LoRAError.self) { try Adapter(config: lc, modelConfig: model.config) }
        lc = LoRAConfig(); lc.loraAlpha = .nan
        #expect(throws: LoRAError.self) { try Adapter(config: lc, modelConfig: model.config) }
        lc = LoRAConfig(); lc.targetModules = .names(["q_proj"])
        #expect(throws: LoRAError.self) { try Adapter(config: lc, modelConfig: model.config) }
        // A batch whose activations cannot fit the machine is refused before allocating.
        var tiny = GPT2Config(); tiny.vocabSize = 10; tiny.nEmbd = 16; tiny.nHead = 1; tiny.nLayer = 1; tiny.nPositions = 1024
        let small = try Model.random(config: tiny, seed: 1)
        var huge = TrainerParams(); huge.batchSize = 65536; huge.blockSize = 1024
        do { _ = try Trainer(model: small, adapter: nil, config: huge); Issue.record("accepted") } catch {
            #expect("\(error)".contains("GiB"))
        }
        // A checkpoint from other settings is refused.
        let dir = try Fixtures.tempDir()
        let path = try Checkpoint.save(trainer, root: dir)
        var other = tc; other.learningRate = 5e-3
        let t2 = try Trainer(model: model, adapter: adapter, config: other)
        #expect(throws: LoRAError.self) { try Checkpoint.restore(t2, from: path) }
    }

    /// A changed setting is named with both values; max_steps may change, so a finished run can be extended.
    @Test func resumeNamesChangedSettingsAndMayRaiseMaxSteps() throws {
        let data = examples(20, seed: 1)
        let (model, adapter, tc) = try setup()
        let dir = try Fixtures.tempDir()
        var opts = TrainParams(); opts.saveSteps = 10; opts.checkpointDirectory = dir
        let t1 = try Trainer(model: model, adapter: adapter, config: tc)
        try t1.train(data, options: opts)
        let ckpt = try #require(Checkpoint.latest(root: dir))
        var other = tc; other.learningRate = 5e-3; other.batchSize = 2
        let changed = try Checkpoint.changedSettings(at: ckpt, config: other)
        #expect(changed.map { "\($0.name) \($0.saved) \($0.current)" } == ["learning_rate 0.01 0.005", "batch_size 3 2"])
        let t2 = try Trainer(model: model, adapter: adapter, config: other)
        do { try Checkpoint.restore(t2, from: ckpt); Issue.record("restored with other settings") } catch {
            #expect("\(error)".contains("learning_rate 0.01 (now 0.005), batch_size 3 (now 2)"))
        }
        var longer = tc; longer.maxSteps = 14
        #expect(try Checkpoint.changedSettings(at: ckpt, config: longer).isEmpty)
        let t3 = try Trainer(model: model, adapter: adapter, config: longer)
        try Checkpoint.restore(t3, from: ckpt)
        var steps: [Int] = []
        try t3.train(data) {
            steps.append($0.step); return .continue
        }
        #expect(steps == [11, 12, 13, 14])
    }

    /// Without a block size, a trainer takes min(256, n_positions).
    @Test func blockSizeDefaultsToTheModelsPositionsWhenSmaller() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        #expect(model.config.nPositions < 256)
        var tc = TrainerParams(); tc.batchSize = 2
        #expect(tc.blockSize == 0)
        let t = try Trainer(model: model, adapter: nil, config: tc)
        #expect(t.config.blockSize == model.config.nPositions)
        _ = try t.step(ids: [Array(repeating: 1, count: model.config.nPositions)])
    }
}

@Suite struct CancellationTests {
    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        func set() { lock.lock(); value = true; lock.unlock() }
        var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    }

    /// Another thread asks to stop; the progress callback (on the training
    /// thread) sees it and training stops after a consistent step.
    @Test func cancellingFromAnotherThreadStopsTrainingCleanly() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        var lc = LoRAConfig(); lc.r = 4; lc.targetModules = .names(["c_attn"])
        let adapter = try Adapter(config: lc, modelConfig: model.config)
        try adapter.initialize(seed: 1)
        var tc = TrainerParams(); tc.maxSteps = 100_000; tc.batchSize = 2; tc.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: tc)
        let data = Dataset(examples: (0..<8).map { i in TrainingExample(ids: (0..<12).map { TokenID(($0 * 5 + i) % 101) }) })
        let stop = Flag()
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var outcome: Error? = nil
        nonisolated(unsafe) var reports = 0
        let t = Thread {
            do {
                try trainer.train(data) { _ in
                    reports += 1; return stop.isSet ? .stop : .continue
                }
            } catch { outcome = error }
            done.signal()
        }
        t.start()
        Thread.sleep(forTimeInterval: 0.3)
        stop.set()
        #expect(done.wait(timeout: .now() + 30) == .success, "training did not stop")
        #expect(outcome as? LoRAError == .aborted)
        #expect(trainer.step == reports && reports > 0 && reports < 100_000)
        // The trainer is still usable after a cancelled run.
        _ = try trainer.step(ids: [data.examples[0].ids])
        #expect(trainer.step == reports + 1)
    }
}
