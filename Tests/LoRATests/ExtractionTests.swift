import Foundation
import Testing

@testable import LoRA

@Suite struct ExtractionTests {
    @Test func extractingAMergedAdapterRecoversIt() throws {
        let base = try Model.load(directory: Fixtures.path("gpt2-a"))
        let tuned = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: base.config)
        try tuned.merge(adapter)
        let (x, reports) = try Adapter.extract(
            base: base, tuned: tuned, targetModules: .names(["c_attn", "c_proj", "c_fc"]), rank: .fixed(4))
        #expect(x.slots.map(\.moduleName) == adapter.slots.map(\.moduleName))
        // ΔW has rank 4: nothing is lost (up to float rounding of the merge).
        #expect(reports.allSatisfy { $0.relativeError < 1e-3 })
        let sv = try SafeTensorsFile(path: Fixtures.path("svd/expected.safetensors"))
        for r in reports {
            let ref = try sv.floats("sv.all.\(r.moduleName)")
            for (a, b) in zip(r.singularValues.prefix(4), ref) { #expect(abs(a - b) <= 1e-4 * ref[0]) }
        }
        try base.attach(x)
        let ids: [TokenID] = [3, 14, 15, 92, 65, 35]
        #expect(maxAbsDiff(try base.logits(ids), try tuned.logits(ids)) < 1e-3)
        // Rank 2: the error is the Eckart–Young optimum of the fixture's singular values.
        let (_, r2) = try Adapter.extract(base: base, tuned: tuned, targetModules: .names(["c_attn", "c_proj", "c_fc"]), rank: .fixed(2))
        for r in r2 {
            let ref = try sv.floats("sv.all.\(r.moduleName)").map(Double.init)
            let optimum = (ref.dropFirst(2).reduce(0) { $0 + $1 * $1 } / ref.reduce(0) { $0 + $1 * $1 }).squareRoot()
            let gap: Double = abs(r.relativeError - optimum)
            #expect(gap < 1e-3 * optimum + 1e-5, "\(r.moduleName): \(r.relativeError) vs \(optimum)")
        }
    }

    @Test func extractingAFullFineTuneByEnergy() throws {
        let base = try Model.load(directory: Fixtures.path("gpt2-a"))
        let tuned = try Model.load(directory: Fixtures.path("gpt2-a"))
        var tc = TrainerParams(); tc.learningRate = 1e-2; tc.batchSize = 2; tc.blockSize = 12; tc.maxSteps = 3
        let t = try Trainer(model: tuned, adapter: nil, config: tc)
        for s in 0..<3 { try t.step(ids: [(0..<12).map { TokenID(($0 * 7 + s) % 101) }, (0..<12).map { TokenID(($0 * 3 + s) % 101) }]) }
        let (x, reports) = try Adapter.extract(base: base, tuned: tuned, rank: .energy(0.9))
        #expect(reports.count == 2)
        #expect(reports.allSatisfy { $0.retainedEnergy >= 0.9 - 1e-9 })
        let dir = try Fixtures.tempDir()
        try x.save(directory: dir)
        #expect(try Adapter.load(directory: dir, modelConfig: base.config).slots.map(\.r) == reports.map(\.newRank))
        #expect(throws: LoRAError.self) { try Adapter.extract(base: base, tuned: tuned, rank: .fixed(0)) }
        let other = try Model.load(directory: Fixtures.path("gpt2-b"))
        #expect(throws: LoRAError.self) { try Adapter.extract(base: base, tuned: other, rank: .fixed(2)) }
    }

    /// PEFT's use of lora_bias: a fine-tune that changed biases too (here PEFT's
    /// lora_bias adapter merged: rank-4 ΔW and new c_attn/c_proj/c_fc biases).
    /// Extracted with lora_bias, the adapter gives the tuned model's logits and,
    /// merged, its biases; without it the bias change is lost.
    @Test func extractingWithLoRABiasKeepsTheBiasChange() throws {
        let base = try Model.load(directory: Fixtures.path("gpt2-a"))
        let tuned = try Model.load(directory: Fixtures.path("gpt2-a"))
        try tuned.merge(try Adapter.load(directory: Fixtures.path("lora_bias/all"), modelConfig: base.config))
        let targets = LoRAConfig.Targets.names(["c_attn", "c_proj", "c_fc"])
        let ids: [TokenID] = [3, 14, 15, 92, 65, 35]
        let want = try tuned.logits(ids)
        let (x, _) = try Adapter.extract(base: base, tuned: tuned, targetModules: targets, rank: .fixed(4), loraBias: true)
        #expect(x.config.loraBias)
        try base.attach(x)
        let d = maxAbsDiff(try base.logits(ids), want)
        #expect(d < 1e-3, "with lora_bias: \(d)")
        try base.merge(x)
        for l in 0..<2 {
            for t in [LoRATarget.attnCAttn, .attnCProj, .mlpCFC, .mlpCProj] {
                let n = t.shape(base.config).1
                let got = Array(UnsafeBufferPointer(start: base.biasPointer(layer: l, target: t), count: n))
                let ref = Array(UnsafeBufferPointer(start: tuned.biasPointer(layer: l, target: t), count: n))
                #expect(maxAbsDiff(got, ref) < 1e-6, "layer \(l) \(t)")
            }
        }
        try base.unmerge(x)
        try base.detach(x)
        let (plain, _) = try Adapter.extract(base: base, tuned: tuned, targetModules: targets, rank: .fixed(4))
        try base.attach(plain)
        #expect(maxAbsDiff(try base.logits(ids), want) > 100 * d)
    }
}
