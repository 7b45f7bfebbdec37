import Foundation
import Testing

@testable import LoRA

/// LoRA on the token embedding wte (PEFT 0.21.2's lora.Embedding, the tied
/// head untouched) and PEFT's module targeting for combinations of
/// target_modules, layers_to_transform, layers_pattern and exclude_modules
/// (scripts/make_embedding_fixtures.py).
@Suite struct EmbeddingTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("embedding/expected.safetensors")) }

    func model() throws -> Model { try Model.load(directory: Fixtures.path("gpt2-a")) }
    func ids() throws -> [TokenID] { try expected.ints("ids").tokenIDs }

    @Test func logitsMatchPEFT() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: m.config)
        #expect(a.embedding?.r == 4)
        try m.attach(a)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.wte"))
        #expect(d < logitsTolerance, "max |Δlogits| \(d)")
        // Decode with the cache adds each new token's embedding branch too.
        let text = try ids()
        let session = try InferenceSession(model: m, batch: 1, capacity: text.count)
        var last: [Float] = []
        for t in text { last = try session.forward([t], batch: 1, lastOnly: true) }
        let ref = try expected.floats("logits.wte")
        #expect(maxAbsDiff(last, Array(ref[((text.count - 1) * m.config.vocabSize)...])) < logitsTolerance)
    }

    @Test(arguments: [false, true])
    func gradientsMatchPEFT(checkpointing: Bool) throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: m.config)
        #expect(a.embedding != nil)
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 10; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        let flat = try expected.ints("batch.ids")
        let r = try trainer.accumulate(ids: (0..<3).map { b in (0..<10).map { TokenID(flat[b * 10 + $0]) } })
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.wte")[0])) < trajectoryTolerance)
        let g = trainer.gradients
        for (key, off, count) in trainedTensors(a) {
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), try expected.floats("grad.wte.\(key)"))
            #expect(rel < gradientRelativeTolerance, "\(key): relative L2 error \(rel)")
        }
    }

    @Test func tenAdamWStepsMatchTorch() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", steps: 10)
        try expectTrainedTensorsMatch(a, expected, prefix: "train.final")
    }

    /// LoRA+ (PEFT's create_loraplus_optimizer): the embedding's A and B learn at loraplus_lr_embedding (1e-6).
    @Test func loraPlusGivesTheEmbeddingItsOwnRate() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 2e-3; cfg.loraplusLRRatio = 2.5; cfg.weightDecay = 0.05; cfg.lrScheduler = .constant
        cfg.maxSteps = 5; cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "loraplus.losses", steps: 5)
        try expectTrainedTensorsMatch(a, expected, prefix: "loraplus.final")
    }

    @Test func savesPEFTsFileAndRefusesTheTiedMerge() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: m.config)
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.save(directory: dir)
        let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + Adapter.weightsFile))
        let peft = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("embedding/wte/" + Adapter.weightsFile)))
        #expect(ours == peft)
        // GPT-2's head is tied to wte: merging would change the head too (PEFT's peft#2777).
        #expect(throws: LoRAError.self) { try m.merge(a) }
        #expect(m.attachments.isEmpty)
    }

    /// A fresh adapter (A = 0) leaves the model's output as it is.
    @Test func freshAdapterIsTheBaseModel() throws {
        let m = try model()
        let before = try m.logits(try ids())
        var c = LoRAConfig(); c.targetModules = .names(["wte"])
        let a = try Adapter(config: c, modelConfig: m.config)
        #expect(a.slots.isEmpty && a.embedding != nil)
        try a.initialize(from: m, seed: 1)
        try m.attach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) == 0)
        var d = LoRAConfig(); d.targetModules = .names(["wte"]); d.useDoRA = true
        #expect(throws: LoRAError.self) { try Adapter(config: d, modelConfig: m.config) }
        var p = LoRAConfig(); p.targetModules = .names(["wpe"])
        #expect(throws: LoRAError.self) { try Adapter(config: p, modelConfig: m.config) }
    }

    /// Which modules PEFT adapts for each combination, liblora adapts too (or both refuse).
    @Test func targetingMatchesPEFT() throws {
        let m = try model()
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("embedding/targeting.json")))
        let cases = try #require(try JSON.parse(Array(data)).arrayValue)
        #expect(cases.count >= 10)
        for c in cases {
            let o = try #require(c.objectValue)
            var cfg = o["config"]!.objectValue!
            cfg["peft_type"] = .string("LORA")
            cfg["r"] = .number(JSONNumber(2))
            let text = JSON.compact(.object(cfg))
            let parsed = try LoRAConfig.parse(Array(text.utf8), path: "targeting.json")
            if let modules = o["modules"]?.arrayValue {
                let a = try Adapter(config: parsed, modelConfig: m.config)
                let ours = (a.slots.map(\.moduleName) + (a.embedding.map { [$0.moduleName] } ?? [])).sorted()
                #expect(ours == modules.compactMap(\.stringValue).sorted(), "\(text)")
            } else {
                #expect(throws: LoRAError.self, "\(text)") { try Adapter(config: parsed, modelConfig: m.config) }
            }
        }
    }
}
