import Foundation
import Testing

@testable import LoRA

/// Adapters attached or merged after a trainer was made (found by review:
/// the frozen branch's scratch was sized at creation; a merged trained
/// adapter was applied twice).
@Suite struct TrainerAfterAttachTests {
    @Test func aLargerAdapterAttachedLaterTrainsAsIfAttachedFirst() throws {
        func run(attachFirst: Bool) throws -> Double {
            let model = try Model.load(directory: Fixtures.path("gpt2-a"))
            var small = LoRAConfig(); small.r = 2; small.targetModules = .names(["c_attn"])
            let trained = try Adapter(config: small, modelConfig: model.config)
            try trained.initialize(from: model, seed: 3)
            var big = LoRAConfig(); big.r = 16; big.targetModules = .names(["c_attn", "c_fc"]); big.initLoraWeights = .gaussian
            let frozen = try Adapter(config: big, modelConfig: model.config, name: "frozen")
            try frozen.initialize(from: model, seed: 4)
            if attachFirst { try model.attach(frozen) }
            var cfg = TrainerParams(); cfg.batchSize = 2; cfg.blockSize = 12
            let trainer = try Trainer(model: model, adapter: trained, config: cfg)
            if !attachFirst { try model.attach(frozen) }
            let ids: [[TokenID]] = [(0..<12).map { TokenID($0 * 7 % 101) }, (0..<12).map { TokenID($0 * 11 % 101) }]
            return try trainer.step(ids: ids)
        }
        #expect(try run(attachFirst: false) == run(attachFirst: true))
    }

    @Test func aMergedTrainedAdapterIsRefused() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        var cfg = TrainerParams(); cfg.batchSize = 1; cfg.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        try model.merge(adapter)
        let ids: [[TokenID]] = [(0..<12).map { TokenID($0) }]
        #expect(throws: LoRAError.self) { try trainer.step(ids: ids) }
        try model.unmerge(adapter)
        _ = try trainer.step(ids: ids)
    }
}
