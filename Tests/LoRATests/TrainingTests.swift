import Foundation
import LoRA
import Testing

/// Per-tensor ‖g − g_ref‖₂ / ‖g_ref‖₂: the bound for gradients (float32 sums in different orders).
let gradientRelativeTolerance = 1e-4
/// Losses and final adapter weights after 20 AdamW steps: absolute, as the issue states.
let trajectoryTolerance: Float = 1e-4

/// Batch k of a fixture's training run: `train.batch<k>.ids`, batch × block
/// token ids as the fixture scripts save them.
func fixtureBatch(_ expected: SafeTensorsFile, _ k: Int, batch: Int, block: Int) throws -> [[TokenID]] {
    let flat = try expected.ints("train.batch\(k).ids")
    return (0..<batch).map { b in (0..<block).map { TokenID(flat[b * block + $0]) } }
}

/// One optimizer step per batch of the fixture's run, each loss within
/// trajectoryTolerance of the reference's (`losses`: the tensor's name),
/// and with `lrs` each step's learning rate within 1e-9 of the reference's.
func expectLossesMatch(
    _ trainer: Trainer, _ expected: SafeTensorsFile, losses name: String, lrs: String? = nil, steps: Int, batch: Int = 2,
    block: Int = 12
) throws {
    let losses = try expected.floats(name)
    let rates = try lrs.map { try expected.floats($0) }
    for k in 0..<steps {
        if let rates { #expect(abs(Float(trainer.learningRate(at: k)) - rates[k]) < 1e-9, "step \(k): learning rate") }
        let loss = try trainer.step(ids: try fixtureBatch(expected, k, batch: batch, block: block))
        #expect(abs(Float(loss) - losses[k]) < trajectoryTolerance, "\(name) step \(k): loss \(loss) vs \(losses[k])")
    }
}

/// Every trained tensor of `a` by the key PEFT saves it under, with its
/// place in `a.params`: LoRA A/B (and DoRA's magnitude, lora_bias), the embedding's
/// A/B, modules_to_save's weight and bias.
func trainedTensors(_ a: Adapter) -> [(key: String, offset: Int, count: Int)] {
    var out: [(String, Int, Int)] = []
    for s in a.slots {
        let p = "base_model.model.\(s.moduleName)."
        out += [(p + "lora_A.weight", s.offsetA, s.countA), (p + "lora_B.weight", s.offsetB, s.countB)]
        if let m = s.offsetM { out.append((p + "lora_magnitude_vector", m, s.outFeatures)) }
        if let b = s.offsetBias { out.append((p + "lora_B.bias", b, s.outFeatures)) }
    }
    if let e = a.embedding {
        out += [
            ("base_model.model.transformer.wte.lora_embedding_A", e.offsetA, e.countA),
            ("base_model.model.transformer.wte.lora_embedding_B", e.offsetB, e.countB),
        ]
    }
    for m in a.savedModules {
        out += [
            ("base_model.model.\(m.moduleName).weight", m.offset, m.count),
            ("base_model.model.\(m.moduleName).bias", m.offset + m.count, m.count),
        ]
    }
    return out
}

/// Every trained tensor of `a` within trajectoryTolerance of the fixture's
/// `<prefix>.<key>` (the largest difference in the message).
func expectTrainedTensorsMatch(_ a: Adapter, _ expected: SafeTensorsFile, prefix: String) throws {
    var worst: Float = 0
    for (key, off, count) in trainedTensors(a) {
        let ref = try expected.floats("\(prefix).\(key)")
        for i in 0..<count { worst = max(worst, abs(a.params.base[off + i] - ref[i])) }
    }
    #expect(worst < trajectoryTolerance, "\(prefix): max |Δ| = \(worst)")
}

func relativeL2(_ a: UnsafeBufferPointer<Float>, _ b: [Float]) -> Double {
    var num = 0.0
    var den = 0.0
    for i in 0..<b.count { let d = Double(a[i]) - Double(b[i]); num += d * d; den += Double(b[i]) * Double(b[i]) }
    return (num / max(den, 1e-30)).squareRoot()
}

@Suite struct TrainingTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors")) }

    func batch() throws -> (ids: [[TokenID]], labels: [[Int32]]) {
        let ids = try expected.ints("batch.ids")
        let labels = try expected.ints("batch.labels")
        let shape = try #require(expected["batch.ids"]).shape
        let lengths = [13, 7, 10]  // as written by make_lora_fixtures.py
        var rows: [[TokenID]] = []
        var labs: [[Int32]] = []
        for b in 0..<shape[0] {
            rows.append((0..<lengths[b]).map { TokenID(ids[b * shape[1] + $0]) })
            labs.append((0..<lengths[b]).map { Int32(labels[b * shape[1] + $0]) })
        }
        return (rows, labs)
    }

    @Test(arguments: ["all", "pattern", "layers"], [false, true])
    func gradientsMatchPEFT(name: String, checkpointing: Bool) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/\(name)"), modelConfig: model.config)
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 16; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        let (ids, labels) = try batch()
        let r = try trainer.accumulate(ids: ids, labels: labels)
        let want = try expected.floats("loss.\(name)")[0]
        #expect(abs(Float(r.loss / Double(r.tokens)) - want) < trajectoryTolerance)
        let g = trainer.gradients
        for s in adapter.slots {
            for (suffix, off, count) in [("lora_A", s.offsetA, s.countA), ("lora_B", s.offsetB, s.countB)] {
                let ref = try expected.floats("grad.\(name).base_model.model.\(s.moduleName).\(suffix).weight")
                let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), ref)
                #expect(rel < gradientRelativeTolerance, "\(name) \(s.moduleName) \(suffix): relative L2 error \(rel)")
            }
        }
    }

    @Test func twentyAdamWStepsMatchTorch() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 3; cfg.maxSteps = 20
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", lrs: "train.lr", steps: 20)
        try expectTrainedTensorsMatch(adapter, expected, prefix: "train.final")
    }
}

@Suite struct FullFineTuningTests {
    @Test(arguments: [false, true])
    func gradientsOfEveryWeightMatchTorch(checkpointing: Bool) throws {
        let expected = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 16; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: model, adapter: nil, config: cfg)
        let (ids, labels) = try TrainingTests().batch()
        let r = try trainer.accumulate(ids: ids, labels: labels)
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.full")[0])) < trajectoryTolerance)
        let g = trainer.gradients
        for slot in model.weights.layout.slots {
            let ref = try expected.floats("grad.full.transformer.\(slot.name)")
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[slot.offset..<(slot.offset + slot.count)]), ref)
            #expect(rel < gradientRelativeTolerance, "\(slot.name): relative L2 error \(rel)")
        }
    }
}
