import Foundation
import Testing

@testable import LoRA

/// LoRA+ against PEFT's create_loraplus_optimizer with torch's AdamW
/// (scripts/make_loraplus_fixtures.py): B at 2.5 × A's learning rate.
@Suite struct LoRAPlusTests {
    @Test func tenStepsMatchPEFTsLoRAPlusOptimizer() throws {
        let expected = try SafeTensorsFile(path: Fixtures.path("loraplus/expected.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        var cfg = TrainerParams()
        cfg.learningRate = 2e-3; cfg.loraplusLRRatio = 2.5; cfg.weightDecay = 0.05
        cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", lrs: "train.lr", steps: 10)
        try expectTrainedTensorsMatch(adapter, expected, prefix: "train.final")
    }

    /// Without the ratio the same run ends elsewhere: the fixture tests LoRA+, not plain AdamW.
    @Test func theRatioMatters() throws {
        let expected = try SafeTensorsFile(path: Fixtures.path("loraplus/expected.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        var cfg = TrainerParams()
        cfg.learningRate = 2e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        let shape = try #require(expected["train.batch0.ids"]).shape
        for k in 0..<10 {
            let flat = try expected.ints("train.batch\(k).ids")
            _ = try trainer.step(ids: (0..<shape[0]).map { b in (0..<shape[1]).map { TokenID(flat[b * shape[1] + $0]) } })
        }
        let s = adapter.slots[0]
        let ref = try expected.floats("train.final.base_model.model.\(s.moduleName).lora_B.weight")
        var worst: Float = 0
        for i in 0..<s.countB { worst = max(worst, abs(adapter.B(s)[i] - ref[i])) }
        #expect(worst > 100 * trajectoryTolerance)
    }

    @Test func badRatiosAreErrors() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        for r in [0.0, -1, .nan, .infinity] {
            var cfg = TrainerParams(); cfg.loraplusLRRatio = r; cfg.blockSize = 12
            #expect(throws: LoRAError.self) { try Trainer(model: model, adapter: adapter, config: cfg) }
        }
        var cfg = TrainerParams(); cfg.loraplusLRRatio = 2; cfg.blockSize = 12
        #expect(throws: LoRAError.self) { try Trainer(model: model, adapter: nil, config: cfg) }
    }
}
