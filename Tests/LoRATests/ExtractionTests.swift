import Foundation
import LoRA
import Testing

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
}
