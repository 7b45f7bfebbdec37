import Foundation
import Testing

@testable import LoRA

/// GPT-2's own dropouts in training (TrainerParams.modelDropout) against
/// transformers + PEFT in training mode with liblora's masks
/// (scripts/make_model_dropout_fixtures.py; the base has embd_pdrop 0.15,
/// attn_pdrop 0.2, resid_pdrop 0.25).
@Suite struct ModelDropoutTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("model_dropout/expected.safetensors")) }

    func model() throws -> Model { try Model.load(directory: Fixtures.path("model_dropout/base")) }

    /// The [3, 13] right-padded batch and its labels.
    func batch() throws -> (ids: [[TokenID]], labels: [[Int32]]) {
        let flat = try expected.ints("batch.ids")
        let labs = try expected.ints("batch.labels")
        let T = flat.count / 3
        return (
            (0..<3).map { b in (0..<T).map { TokenID(flat[b * T + $0]) } },
            (0..<3).map { b in (0..<T).map { Int32(labs[b * T + $0]) } }
        )
    }

    func params(checkpointing: Bool = false, dropout: Bool = true) -> TrainerParams {
        var cfg = TrainerParams()
        cfg.batchSize = 3; cfg.blockSize = 16; cfg.seed = 7
        cfg.gradientCheckpointing = checkpointing; cfg.modelDropout = dropout
        return cfg
    }

    @Test func configKeepsTheProbabilities() throws {
        let c = try model().config
        #expect(c.embdPdrop == 0.15 && c.attnPdrop == 0.2 && c.residPdrop == 0.25)
        let json = c.json()
        #expect(json.contains("\"attn_pdrop\": 0.2,") && json.contains("\"embd_pdrop\": 0.15,") && json.contains("\"resid_pdrop\": 0.25,"))
        // Not part of the architecture: an adapter made on the 0.1 config fits.
        var other = c
        other.attnPdrop = 0.1
        #expect(other == c)
        for bad in ["\"x\"", "1e400", "true"] {
            let text = "{\"model_type\": \"gpt2\", \"attn_pdrop\": \(bad)}"
            #expect(throws: LoRAError.self) { try GPT2Config.parse(Array(text.utf8), path: "config.json") }
        }
        // Out of [0, 1): the model loads (inference ignores it); training with model_dropout refuses it.
        let odd = try GPT2Config.parse(Array("{\"model_type\": \"gpt2\", \"resid_pdrop\": 1}".utf8), path: "config.json")
        #expect(odd.residPdrop == 1)
        var cfg = params()
        #expect(throws: LoRAError.self) { try cfg.validate(model: odd) }
        cfg.modelDropout = false
        try cfg.validate(model: odd)
    }

    /// `==` compares every stored property but the three probabilities: a
    /// field added later and left out of the comparison fails here.
    @Test func equalityCoversEveryArchitectureField() throws {
        let base = GPT2Config()
        let ignored: Set<String> = ["embdPdrop", "attnPdrop", "residPdrop"]
        let edits: [String: (inout GPT2Config) -> Void] = [
            "vocabSize": { $0.vocabSize += 1 }, "nPositions": { $0.nPositions += 1 }, "nEmbd": { $0.nEmbd += 1 },
            "nLayer": { $0.nLayer += 1 }, "nHead": { $0.nHead += 1 }, "nInner": { $0.nInner = 7 },
            "activation": { $0.activation = .relu }, "layerNormEpsilon": { $0.layerNormEpsilon = 1e-3 },
            "scaleAttnWeights": { $0.scaleAttnWeights.toggle() },
            "scaleAttnByInverseLayerIdx": { $0.scaleAttnByInverseLayerIdx.toggle() },
            "tieWordEmbeddings": { $0.tieWordEmbeddings.toggle() }, "bosTokenID": { $0.bosTokenID = 1 },
            "eosTokenID": { $0.eosTokenID = 1 },
        ]
        let fields = Mirror(reflecting: base).children.compactMap(\.label)
        #expect(Set(fields) == Set(edits.keys).union(ignored), "GPT2Config's fields changed: update == and this test")
        for (name, edit) in edits {
            var c = base
            edit(&c)
            #expect(c != base, "\(name) is not compared")
        }
        for name in ignored {
            var c = base
            switch name {
            case "embdPdrop": c.embdPdrop = 0.5
            case "attnPdrop": c.attnPdrop = 0.5
            default: c.residPdrop = 0.5
            }
            #expect(c == base)
        }
    }

    @Test(arguments: [("all", false), ("all", true), ("wte", false), ("wte", true), ("dora", false), ("dora", true)])
    func gradientsMatchTransformers(adapter name: String, checkpointing: Bool) throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("model_dropout/\(name)"), modelConfig: m.config)
        let trainer = try Trainer(model: m, adapter: a, config: params(checkpointing: checkpointing))
        let (ids, labels) = try batch()
        let r = try trainer.accumulate(ids: ids, labels: labels)
        let loss = Float(r.loss / Double(r.tokens))
        #expect(abs(loss - (try expected.floats("loss.\(name)")[0])) < trajectoryTolerance, "loss \(loss)")
        let g = trainer.gradients
        let keys = trainedTensors(a)
        #expect(!keys.isEmpty)
        for (key, off, count) in keys {
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), try expected.floats("grad.\(name).\(key)"))
            #expect(rel < gradientRelativeTolerance, "\(key): relative L2 error \(rel)")
        }
        // Without the model's dropouts the same pass is far off: the masks matter.
        let plain = try Trainer(model: m, adapter: a, config: params(dropout: false))
        try plain.accumulate(ids: ids, labels: labels)
        let (key, off, count) = keys.last!
        let rel = relativeL2(
            UnsafeBufferPointer(rebasing: plain.gradients[off..<(off + count)]), try expected.floats("grad.\(name).\(key)"))
        #expect(rel > 1e-2, "\(key) without dropout: \(rel)")
    }

    @Test(arguments: [false, true])
    func fullFineTuningMatchesTransformers(checkpointing: Bool) throws {
        let m = try model()
        let trainer = try Trainer(model: m, adapter: nil, config: params(checkpointing: checkpointing))
        let (ids, labels) = try batch()
        let r = try trainer.accumulate(ids: ids, labels: labels)
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("full.loss")[0])) < trajectoryTolerance)
        let g = trainer.gradients
        var checked = 0
        for slot in m.weights.layout.slots {
            guard let ref = try? expected.floats("full.grad.transformer.\(slot.name)") else { continue }
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[slot.offset..<(slot.offset + slot.count)]), ref)
            #expect(rel < gradientRelativeTolerance, "\(slot.name): relative L2 error \(rel)")
            checked += 1
        }
        #expect(checked == 4)
    }

    /// Eight AdamW steps; each step's masks come from the trainer's generator.
    @Test func eightAdamWStepsMatchTorch() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("model_dropout/all"), modelConfig: m.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 8
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12; cfg.seed = 11; cfg.modelDropout = true
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", steps: 8)
        var worst: Float = 0
        for (key, off, count) in trainedTensors(a) {
            let ref = try expected.floats("train.final.\(key)")
            for i in 0..<count { worst = max(worst, abs(a.params.base[off + i] - ref[i])) }
        }
        #expect(worst < trajectoryTolerance, "max |Δ| = \(worst)")
    }

    /// Evaluation never drops (transformers' Trainer evaluates in eval mode).
    @Test func evaluationIsDeterministic() throws {
        let m = try model()
        let a = try Adapter.load(directory: Fixtures.path("model_dropout/all"), modelConfig: m.config)
        let (ids, labels) = try batch()
        let data = Dataset(examples: zip(ids, labels).map { TrainingExample(ids: $0, labels: $1) })
        let on = try Trainer(model: m, adapter: a, config: params()).evaluate(data)
        let off = try Trainer(model: m, adapter: a, config: params(dropout: false)).evaluate(data)
        #expect(on.loss == off.loss)
    }
}
