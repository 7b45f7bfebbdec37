import Foundation
import Testing

@testable import LoRA

/// modules_to_save (LayerNorms trained in full beside the adapter) against
/// PEFT 0.21.2's ModulesToSaveWrapper (scripts/make_modules_to_save_fixtures.py).
@Suite struct ModulesToSaveTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("modules_to_save/expected.safetensors")) }

    func model() throws -> Model { try Model.load(directory: Fixtures.path("gpt2-a")) }
    func ids() throws -> [TokenID] { try expected.ints("ids").tokenIDs }

    @Test(arguments: ["ln", "dora"])
    func logitsMatchPEFT(name: String) throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/\(name)"), modelConfig: m.config)
        #expect(!a.savedModules.isEmpty)
        try m.attach(a)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.\(name)"))
        #expect(d < logitsTolerance, "\(name): max |Δlogits| \(d)")
    }

    @Test func matchedAsPEFTMatchesThem() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: m.config)
        #expect(
            a.savedModules.map(\.moduleName) == [
                "transformer.h.0.ln_2", "transformer.h.1.ln_1", "transformer.h.1.ln_2", "transformer.ln_f",
            ])
    }

    @Test(arguments: [false, true])
    func gradientsMatchPEFT(checkpointing: Bool) throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: m.config)
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 10; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        let flat = try expected.ints("batch.ids")
        let labs = try expected.ints("batch.labels")
        let ids = (0..<3).map { b in (0..<10).map { TokenID(flat[b * 10 + $0]) } }
        let labels = (0..<3).map { b in (0..<10).map { Int32(labs[b * 10 + $0]) } }
        let r = try trainer.accumulate(ids: ids, labels: labels)
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.ln")[0])) < trajectoryTolerance)
        let g = trainer.gradients
        for (key, off, count) in trainedTensors(a) {
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), try expected.floats("grad.ln.\(key)"))
            #expect(rel < gradientRelativeTolerance, "\(key): relative L2 error \(rel)")
        }
    }

    @Test func tenAdamWStepsMatchTorch() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", steps: 10)
        try expectTrainedTensorsMatch(a, expected, prefix: "train.final")
    }

    /// A DoRA adapter with ln_f saved and LoRA dropout 0.1: a run resumed
    /// from a checkpoint equals the uninterrupted one bit for bit.
    @Test func checkpointResumeIsBitExact() throws {
        func setup() throws -> (Model, Adapter, Trainer) {
            let m = try model()
            let peft = try Adapter.load(directory: Fixtures.path("modules_to_save/dora"), modelConfig: m.config)
            var c = peft.config
            c.loraDropout = 0.1
            let a = try Adapter(config: c, modelConfig: m.config)
            a.params.base.update(from: peft.params.base, count: a.params.count)
            var tc = TrainerParams(); tc.learningRate = 1e-2; tc.maxSteps = 4; tc.batchSize = 2; tc.blockSize = 12; tc.seed = 3
            return (m, a, try Trainer(model: m, adapter: a, config: tc))
        }
        let batches = try (0..<4).map { try fixtureBatch(expected, $0, batch: 2, block: 12) }
        let (_, a1, t1) = try setup()
        for b in batches { try t1.step(ids: b) }
        let (_, _, t2) = try setup()
        for b in batches.prefix(2) { try t2.step(ids: b) }
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ckpt = try Checkpoint.save(t2, root: dir)
        let (_, a3, t3) = try setup()
        _ = try Checkpoint.restore(t3, from: ckpt)
        for b in batches.suffix(2) { try t3.step(ids: b) }
        #expect(Array(a1.params.buffer) == Array(a3.params.buffer))
        #expect(a1.savedModules.count == 1 && a1.config.useDoRA)
    }

    @Test func mergeSaveAndLoad() throws {
        let m = try model()
        let before = try m.logits(try ids())
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: m.config)
        try m.merge(a)
        #expect(maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.merged")) < logitsTolerance)
        try m.unmerge(a)
        try m.detach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) < 1e-5)
        // Saved back: PEFT's bytes and config.
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.save(directory: dir)
        let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + Adapter.weightsFile))
        let peft = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("modules_to_save/ln/" + Adapter.weightsFile)))
        #expect(ours == peft)
        #expect(try LoRAConfig.load(path: dir + "/" + Adapter.configFile).modulesToSave == ["ln_f", "h.1.ln_1", "ln_2"])
    }

    /// A fresh adapter's copies start as the model's modules: the output does not change.
    @Test func freshAdapterIsTheBaseModel() throws {
        let m = try model()
        let before = try m.logits(try ids())
        var c = LoRAConfig(); c.modulesToSave = ["ln_f", "ln_1"]
        let a = try Adapter(config: c, modelConfig: m.config)
        #expect(a.savedModules.count == 3)
        try a.initialize(from: m, seed: 1)
        try m.attach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) == 0)
    }

    @Test func unsupportedAndBadEntriesAreErrors() throws {
        let m = try model()
        for (entries, fragment) in [
            (["wte"], "only LayerNorms"), (["mlp"], "only LayerNorms"), (["q_proj"], "matches no module"),
            (["c_attn"], "only LayerNorms"),
        ] {
            var c = LoRAConfig(); c.modulesToSave = entries
            do {
                _ = try Adapter(config: c, modelConfig: m.config)
                Issue.record("\(entries) accepted")
            } catch {
                #expect("\(error)".contains(fragment), "\(entries): \(error)")
            }
        }
        // Two enabled adapters saving the same module.
        let a = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: m.config)
        let b = try Adapter.load(directory: Fixtures.path("modules_to_save/dora"), modelConfig: m.config)
        try m.attach(a)
        try m.attach(b)
        #expect(throws: LoRAError.self) { try m.logits(try ids()) }
        // The batched engine refuses them together (EnginePEFTVariantsTests).
    }
}
