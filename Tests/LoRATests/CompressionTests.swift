import Foundation
import LoRA
import Testing

/// Compression's error against the dense SVD's optimum: 1e-4 relative (the bound)...
let compressionTolerance = 1e-4
/// ...plus a floor for exact (k = r) cases: storing the new A and B in float32 alone gives ~1e-7 of ‖ΔW‖.
let compressionFloor = 1e-6

@Suite struct CompressionTests {
    /// Dense ΔW [out, in] = scaling·B·A of a slot, in Double.
    func dense(_ a: Adapter, _ s: LoRASlot) -> [Double] {
        var d = [Double](repeating: 0, count: s.outFeatures * s.inFeatures)
        let A = a.A(s)
        let B = a.B(s)
        for o in 0..<s.outFeatures {
            for i in 0..<s.inFeatures {
                var acc = 0.0
                for t in 0..<s.r { acc += Double(B[o * s.r + t]) * Double(A[t * s.inFeatures + i]) }
                d[o * s.inFeatures + i] = Double(s.scaling) * acc
            }
        }
        return d
    }

    @Test(arguments: ["all", "pattern"], [1, 2])
    func fixedRankReachesTheEckartYoungOptimum(name: String, k: Int) throws {
        let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        let a = try Adapter.load(directory: Fixtures.path("lora/\(name)"), modelConfig: c)
        let (b, reports) = try a.compressed(to: .fixed(k))
        let sv = try SafeTensorsFile(path: Fixtures.path("svd/expected.safetensors"))
        for (s, rep) in zip(a.slots, reports) {
            let ref = try sv.floats("sv.\(name).\(s.moduleName)").map(Double.init)
            let total = ref.reduce(0) { $0 + $1 * $1 }
            let optimum = (ref.dropFirst(k).reduce(0) { $0 + $1 * $1 } / total).squareRoot()
            // The reported error and the error of the new adapter, measured densely.
            let ns = try #require(b.slot(layer: s.layer, target: s.target))
            #expect(ns.r == k && ns.scaling == 1)
            let d0 = dense(a, s)
            let d1 = dense(b, ns)
            var err = 0.0
            for i in 0..<d0.count { err += (d0[i] - d1[i]) * (d0[i] - d1[i]) }
            let measured = (err / total).squareRoot()
            let bound: Double = compressionTolerance * optimum + compressionFloor
            let gapMeasured: Double = abs(measured - optimum)
            let gapReported: Double = abs(rep.relativeError - optimum)
            let energyGap: Double = abs(rep.retainedEnergy - (1 - optimum * optimum))
            #expect(gapMeasured <= bound, "\(s.moduleName): \(measured) vs optimum \(optimum)")
            #expect(gapReported <= bound)
            #expect(energyGap < 1e-5)
            for (x, y) in zip(rep.singularValues, ref) {
                let gap: Double = abs(Double(x) - y)
                #expect(gap <= 1e-4 * ref[0])
            }
        }
    }

    @Test func energyThresholdPicksPerModuleRanksAsPEFTPatterns() throws {
        let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        let a = try Adapter.load(directory: Fixtures.path("lora/pattern"), modelConfig: c)
        let (b, reports) = try a.compressed(to: .energy(0.9))
        for r in reports {
            #expect(r.retainedEnergy >= 0.9 - 1e-9)
            // One rank less would not keep 90%.
            if r.newRank > 1 {
                let sq: [Double] = r.singularValues.map { Double($0) * Double($0) }
                let kept: Double = sq.prefix(r.newRank - 1).reduce(0, +)
                let total: Double = sq.reduce(0, +)
                #expect(kept / total < 0.9)
            }
        }
        // Saved and reloaded, the patterns give the same modules and ranks.
        let dir = try Fixtures.tempDir()
        try b.save(directory: dir)
        let reloaded = try Adapter.load(directory: dir, modelConfig: c)
        #expect(reloaded.slots.map(\.r) == reports.map(\.newRank))
        #expect(reloaded.slots.allSatisfy { abs($0.scaling - 1) < 1e-6 })
        #expect(Array(reloaded.params.buffer) == Array(b.params.buffer))
    }

    @Test func fullRankKeepsTheLogits() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let a = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        let (b, _) = try a.compressed(to: .fixed(4))
        let ids: [TokenID] = [1, 5, 9, 33, 70, 2]
        try model.attach(a)
        let la = try model.logits(ids)
        try model.detach(a)
        try model.attach(b)
        #expect(maxAbsDiff(la, try model.logits(ids)) < 1e-4)
    }

    @Test func badTargetsAreErrors() throws {
        let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        let a = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: c)
        #expect(throws: LoRAError.self) { try a.compressed(to: .fixed(0)) }
        #expect(throws: LoRAError.self) { try a.compressed(to: .fixed(5)) }
        #expect(throws: LoRAError.self) { try a.compressed(to: .energy(0)) }
        #expect(throws: LoRAError.self) { try a.compressed(to: .energy(.nan)) }
        a.B(a.slots[0])[0] = .nan
        #expect(throws: LoRAError.self) { try a.compressed(to: .fixed(2)) }
    }
}
