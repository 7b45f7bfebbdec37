import Foundation
import Testing

@testable import LoRA

/// DoRA against PEFT 0.21.2's use_dora (scripts/make_dora_fixtures.py):
/// logits, gradients of A, B and the magnitude, 10 AdamW steps, merging,
/// and the adapter files both ways.
@Suite struct DoRATests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("dora/expected.safetensors")) }

    func model() throws -> Model { try Model.load(directory: Fixtures.path("gpt2-a")) }
    func ids() throws -> [TokenID] { try expected.ints("ids").tokenIDs }

    func batch() throws -> (ids: [[TokenID]], labels: [[Int32]]) {
        let ids = try expected.ints("batch.ids")
        let labels = try expected.ints("batch.labels")
        let shape = try #require(expected["batch.ids"]).shape
        let lengths = [13, 7, 10]  // as written by make_dora_fixtures.py
        var rows: [[TokenID]] = []
        var labs: [[Int32]] = []
        for b in 0..<shape[0] {
            rows.append((0..<lengths[b]).map { TokenID(ids[b * shape[1] + $0]) })
            labs.append((0..<lengths[b]).map { Int32(labels[b * shape[1] + $0]) })
        }
        return (rows, labs)
    }

    /// Every trained tensor of `adapter` against `prefix` + its PEFT key.
    func checkGradients(_ adapter: Adapter, _ g: UnsafeMutableBufferPointer<Float>, prefix: String) throws {
        for s in adapter.slots {
            var parts = [("lora_A.weight", s.offsetA, s.countA), ("lora_B.weight", s.offsetB, s.countB)]
            if let m = s.offsetM { parts.append(("lora_magnitude_vector", m, s.outFeatures)) }
            for (suffix, off, count) in parts {
                let ref = try expected.floats("\(prefix)base_model.model.\(s.moduleName).\(suffix)")
                let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), ref)
                #expect(rel < gradientRelativeTolerance, "\(prefix) \(s.moduleName) \(suffix): relative L2 error \(rel)")
            }
        }
    }

    @Test(arguments: ["all", "layers"])
    func logitsMatchPEFT(name: String) throws {
        let m = try model()
        let adapter = try Adapter.load(directory: Fixtures.path("dora/\(name)"), modelConfig: m.config)
        #expect(adapter.config.useDoRA)
        try m.attach(adapter)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.\(name)"))
        #expect(d < logitsTolerance, "\(name): max |Δlogits| \(d)")
        // Decode with the KV cache takes the same factors.
        let text = try ids()
        let session = try InferenceSession(model: m, batch: 1, capacity: text.count)
        _ = try session.forward(Array(text.prefix(5)), batch: 1, lastOnly: true)
        var last: [Float] = []
        for t in text.dropFirst(5) { last = try session.forward([t], batch: 1, lastOnly: true) }
        let ref = try expected.floats("logits.\(name)")
        let V = m.config.vocabSize
        #expect(maxAbsDiff(last, Array(ref[((text.count - 1) * V)...])) < logitsTolerance)
    }

    /// A plain LoRA adapter then a DoRA one: DoRA rescales the plain one's output (PEFT's `result`).
    @Test func afterAPlainAdapterAsPEFT() throws {
        let m = try model()
        let plain = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: m.config, name: "lora")
        let dora = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config, name: "dora")
        try m.attach(plain)
        try m.attach(dora)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.both"))
        #expect(d < logitsTolerance, "max |Δlogits| \(d)")
        // The gradient of each, the other attached and frozen.
        let (ids, labels) = try batch()
        for (trained, name) in [(dora, "dora"), (plain, "lora")] {
            var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 16
            let trainer = try Trainer(model: m, adapter: trained, config: cfg)
            let r = try trainer.accumulate(ids: ids, labels: labels)
            #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.both")[0])) < trajectoryTolerance)
            try checkGradients(trained, trainer.gradients, prefix: "grad.both.\(name).")
        }
    }

    @Test(arguments: [false, true])
    func gradientsMatchPEFT(checkpointing: Bool) throws {
        let m = try model()
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 16; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: m, adapter: adapter, config: cfg)
        let (ids, labels) = try batch()
        let r = try trainer.accumulate(ids: ids, labels: labels)
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.all")[0])) < trajectoryTolerance)
        try checkGradients(adapter, trainer.gradients, prefix: "grad.all.")
    }

    /// The dropout path (PEFT recomputes the base product from x̃) with a
    /// dropout too small to drop anything equals the PEFT-checked path
    /// without dropout: forward and every gradient.
    @Test func dropoutPathEqualsThePathWithout() throws {
        let (ids, labels) = try batch()
        var grads: [[Float]] = []
        var losses: [Double] = []
        for p in [0.0, 1e-9] {
            let m = try model()
            let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
            var c = adapter.config
            c.loraDropout = p
            let a = try Adapter(config: c, modelConfig: m.config)
            a.params.base.update(from: adapter.params.base, count: a.params.count)
            var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 16
            let trainer = try Trainer(model: m, adapter: a, config: cfg)
            let r = try trainer.accumulate(ids: ids, labels: labels)
            losses.append(r.loss)
            grads.append(Array(trainer.gradients))
        }
        #expect(abs(losses[0] - losses[1]) < 1e-5)
        #expect(maxAbsDiff(grads[0], grads[1]) < 1e-6)
    }

    @Test func tenAdamWStepsMatchTorch() throws {
        let m = try model()
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: adapter, config: cfg)
        let shape = try #require(expected["train.batch0.ids"]).shape
        try expectLossesMatch(trainer, expected, losses: "train.losses", steps: 10, batch: shape[0], block: shape[1])
        try expectTrainedTensorsMatch(adapter, expected, prefix: "train.final")
    }

    /// LoRA+ (PEFT's create_loraplus_optimizer): the magnitude, a 1-D parameter, learns at B's rate.
    @Test func loraPlusGivesTheMagnitudeBsRate() throws {
        let m = try model()
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 2e-3; cfg.loraplusLRRatio = 2.5; cfg.weightDecay = 0.05; cfg.lrScheduler = .constant
        cfg.maxSteps = 5; cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: adapter, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "loraplus.losses", steps: 5)
        try expectTrainedTensorsMatch(adapter, expected, prefix: "loraplus.final")
    }

    @Test func mergeAndUnmergeAsPEFT() throws {
        let m = try model()
        let before = try m.logits(try ids())
        let originals = (0..<2).map { l in Array(UnsafeBufferPointer(start: m.weights.layers[l].attnW.f32!, count: 48 * 144)) }
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
        try m.merge(adapter)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.merged"))
        #expect(d < logitsTolerance, "merged: max |Δlogits| \(d)")
        for l in 0..<2 {
            for (mod, w, count) in [
                ("attn.c_attn", m.weights.layers[l].attnW.f32!, 48 * 144), ("mlp.c_proj", m.weights.layers[l].mlpProjW.f32!, 192 * 48),
            ] {
                let ref = try expected.floats("merged.transformer.h.\(l).\(mod).weight")
                let dw = maxAbsDiff(Array(UnsafeBufferPointer(start: w, count: count)), ref)
                #expect(dw < 1e-5, "merged \(mod) of layer \(l): max |Δ| \(dw)")
            }
        }
        // A plain adapter cannot be merged on top, nor a DoRA one under others.
        let plain = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: m.config)
        #expect(throws: LoRAError.self) { try m.merge(plain) }
        try m.unmerge(adapter)
        for l in 0..<2 {
            let w = Array(UnsafeBufferPointer(start: m.weights.layers[l].attnW.f32!, count: 48 * 144))
            #expect(maxAbsDiff(w, originals[l]) < 1e-5)
        }
        try m.detach(adapter)
        #expect(maxAbsDiff(try m.logits(try ids()), before) < 1e-5)
        try m.merge(plain)
        #expect(throws: LoRAError.self) { try m.merge(adapter) }
    }

    /// Saving a loaded PEFT DoRA adapter writes PEFT's bytes; the config says use_dora.
    @Test func savesPEFTsFile() throws {
        let m = try model()
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try adapter.save(directory: dir)
        let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + Adapter.weightsFile))
        let peft = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("dora/all/" + Adapter.weightsFile)))
        #expect(ours == peft)
        let cfg = try LoRAConfig.load(path: dir + "/" + Adapter.configFile)
        #expect(cfg.useDoRA)
        let back = try Adapter.load(directory: dir, modelConfig: m.config)
        #expect(Array(back.params.buffer) == Array(adapter.params.buffer))
    }

    /// A fresh DoRA adapter starts as the base model (m = ‖W‖, B = 0), as PEFT's init.
    @Test func freshAdapterIsTheBaseModel() throws {
        let m = try model()
        let before = try m.logits(try ids())
        var c = LoRAConfig(); c.useDoRA = true; c.targetModules = .names(["c_attn", "c_proj", "c_fc"])
        let a = try Adapter(config: c, modelConfig: m.config)
        try a.initialize(from: m, seed: 3)
        let s = a.slots[0]
        var norm0 = 0.0
        for i in 0..<s.inFeatures {
            norm0 += Double(m.weights.layers[0].attnW.f32![i * s.outFeatures]) * Double(m.weights.layers[0].attnW.f32![i * s.outFeatures])
        }
        #expect(abs(Double(a.magnitude(s)![0]) - norm0.squareRoot()) < 1e-5)
        try m.attach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) < 1e-5)
        #expect(throws: LoRAError.self) { try a.initialize(seed: 1) }
    }

    @Test func badFilesAndUsesAreErrors() throws {
        let m = try model()
        // A magnitude in a file whose config lacks use_dora.
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let src = Fixtures.path("dora/all/")
        try FileManager.default.copyItem(atPath: src + Adapter.weightsFile, toPath: dir + "/" + Adapter.weightsFile)
        let cfg = try String(contentsOfFile: src + Adapter.configFile, encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"use_dora\": true", with: "\"use_dora\": false")
            .write(toFile: dir + "/" + Adapter.configFile, atomically: true, encoding: .utf8)
        #expect(throws: LoRAError.self) { try Adapter.load(directory: dir, modelConfig: m.config) }
        try cfg.replacingOccurrences(of: "\"use_dora\": true", with: "\"use_dora\": 1")
            .write(toFile: dir + "/" + Adapter.configFile, atomically: true, encoding: .utf8)
        #expect(throws: LoRAError.self) { try Adapter.load(directory: dir, modelConfig: m.config) }
    }
}
