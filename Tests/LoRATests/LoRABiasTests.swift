import Foundation
import Testing

@testable import LoRA

/// lora_bias (B with a bias, added as s·b) against PEFT 0.21.2
/// (scripts/make_lora_bias_fixtures.py).
@Suite struct LoRABiasTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("lora_bias/expected.safetensors")) }

    func model() throws -> Model { try Model.load(directory: Fixtures.path("gpt2-a")) }
    func adapter(_ m: Model) throws -> Adapter { try Adapter.load(directory: Fixtures.path("lora_bias/all"), modelConfig: m.config) }
    func ids() throws -> [TokenID] { try expected.ints("ids").tokenIDs }

    @Test func logitsMatchPEFT() throws {
        let m = try model()
        let a = try adapter(m)
        #expect(a.config.loraBias && a.slots.allSatisfy { $0.offsetBias != nil })
        try m.attach(a)
        let d = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.all"))
        #expect(d < logitsTolerance, "max |Δlogits| \(d)")
        // The user scale multiplies the bias too (PEFT's set_scale).
        try m.detach(a)
        try m.attach(a, scale: 0.5)
        let h = maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.half"))
        #expect(h < logitsTolerance, "scale 0.5: max |Δlogits| \(h)")
        // The bias matters: without it the logits differ by far more.
        let plain = try Adapter.load(directory: Fixtures.path("lora_bias/all"), modelConfig: m.config)
        for s in plain.slots { plain.loraBias(s)!.update(repeating: 0, count: s.outFeatures) }
        try m.detach(a)
        try m.attach(plain)
        #expect(maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.all")) > 100 * logitsTolerance)
    }

    @Test(arguments: [false, true])
    func gradientsMatchPEFT(checkpointing: Bool) throws {
        let m = try model()
        let a = try adapter(m)
        var cfg = TrainerParams(); cfg.batchSize = 3; cfg.blockSize = 10; cfg.gradientCheckpointing = checkpointing
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        let flat = try expected.ints("batch.ids")
        let labs = try expected.ints("batch.labels")
        let ids = (0..<3).map { b in (0..<10).map { TokenID(flat[b * 10 + $0]) } }
        let labels = (0..<3).map { b in (0..<10).map { Int32(labs[b * 10 + $0]) } }
        let r = try trainer.accumulate(ids: ids, labels: labels)
        #expect(abs(Float(r.loss / Double(r.tokens)) - (try expected.floats("loss.all")[0])) < trajectoryTolerance)
        let g = trainer.gradients
        let keys = trainedTensors(a)
        #expect(keys.filter { $0.key.hasSuffix(".lora_B.bias") }.count == a.slots.count)
        for (key, off, count) in keys {
            let rel = relativeL2(UnsafeBufferPointer(rebasing: g[off..<(off + count)]), try expected.floats("grad.all.\(key)"))
            #expect(rel < gradientRelativeTolerance, "\(key): relative L2 error \(rel)")
        }
    }

    /// Ten AdamW steps; biases without weight decay, as transformers' Trainer.
    /// Every trained value within the training tolerance but the key part of
    /// c_attn's bias (columns n_embd..<2·n_embd): its gradient is zero in
    /// exact arithmetic (a constant added to every key shifts each query's
    /// scores alike, and softmax ignores that), so both runs step it on
    /// rounding noise of ~1e-9, which AdamW's normalisation turns into steps
    /// of up to lr: 0.006 apart after ten steps here, in torch's run and ours
    /// alike, unrelated to the function. Those columns are checked to move
    /// less than ten steps of lr.
    @Test func tenAdamWStepsMatchTorch() throws {
        let m = try model()
        let a = try adapter(m)
        let start = Array(a.params.buffer)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 2; cfg.maxSteps = 10
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: m, adapter: a, config: cfg)
        try expectLossesMatch(trainer, expected, losses: "train.losses", steps: 10)
        let C = m.config.nEmbd
        var worst: Float = 0
        var keyDrift: Float = 0
        for (key, off, count) in trainedTensors(a) {
            let ref = try expected.floats("train.final.\(key)")
            let keyBias = key.hasSuffix("attn.c_attn.lora_B.bias")
            for i in 0..<count {
                if keyBias, i >= C, i < 2 * C {
                    keyDrift = max(keyDrift, abs(a.params.base[off + i] - start[off + i]))
                } else {
                    worst = max(worst, abs(a.params.base[off + i] - ref[i]))
                }
            }
        }
        #expect(worst < trajectoryTolerance, "max |Δ| = \(worst)")
        #expect(keyDrift < 10 * 5e-3, "key bias drift \(keyDrift)")
    }

    /// Merge adds s·b to the module's bias (PEFT's merge_and_unload); unmerge
    /// takes it out; saved back, PEFT's bytes and config.
    @Test func mergeSaveAndLoad() throws {
        let m = try model()
        let before = try m.logits(try ids())
        let a = try adapter(m)
        try m.merge(a)
        #expect(maxAbsDiff(try m.logits(try ids()), try expected.floats("logits.merged")) < logitsTolerance)
        for l in 0..<2 {
            for (target, name) in [(LoRATarget.attnCAttn, "attn.c_attn"), (.mlpCProj, "mlp.c_proj")] {
                let b = m.biasPointer(layer: l, target: target)
                let want = try expected.floats("merged.transformer.h.\(l).\(name).bias")
                #expect(maxAbsDiff(Array(UnsafeBufferPointer(start: b, count: want.count)), want) < 1e-6)
            }
        }
        try m.unmerge(a)
        try m.detach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) < 1e-5)
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try a.save(directory: dir)
        let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + Adapter.weightsFile))
        let peft = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("lora_bias/all/" + Adapter.weightsFile)))
        #expect(ours == peft)
        #expect(try LoRAConfig.load(path: dir + "/" + Adapter.configFile).loraBias)
    }

    /// A fresh adapter (init_lora_weights true) is the base model: B and its bias start at zero.
    @Test func freshAdapterIsTheBaseModel() throws {
        let m = try model()
        let before = try m.logits(try ids())
        var c = LoRAConfig(); c.loraBias = true
        let a = try Adapter(config: c, modelConfig: m.config)
        try a.initialize(seed: 1)
        try m.attach(a)
        #expect(maxAbsDiff(try m.logits(try ids()), before) == 0)
    }

    /// The batched engine runs it as the model does.
    @Test func engineMatchesTheModel() throws {
        let m = try model()
        let a = try adapter(m)
        let engine = try Engine(model: m, params: EngineParams())
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 5
        sp.stopAtEndOfText = false
        let prompt = try ids()
        let got = try engine.generate([
            EngineRequest(prompt: prompt, adapters: [AdapterUse(a, scale: 0.7)], params: sp), EngineRequest(prompt: prompt, params: sp),
        ])
        try m.attach(a, scale: 0.7)
        #expect(got[0].tokens == (try m.generate(prompt: prompt, params: sp)).tokens)
        try m.detach(a)
        #expect(got[1].tokens == (try m.generate(prompt: prompt, params: sp)).tokens)
    }

    /// What PEFT refuses, and what is not implemented, by name; a lora_B.bias
    /// in a file whose config lacks lora_bias is a bad file.
    @Test func refusals() throws {
        let m = try model()
        func refused(_ edit: (inout LoRAConfig) -> Void, _ fragment: String) {
            var c = LoRAConfig(); c.loraBias = true
            edit(&c)
            do {
                _ = try Adapter(config: c, modelConfig: m.config)
                Issue.record("accepted: \(fragment)")
            } catch {
                #expect("\(error)".contains(fragment), "\(error)")
            }
        }
        refused({ $0.useDoRA = true }, "use_dora")
        refused({ $0.initLoraWeights = .gaussian }, "init_lora_weights")
        refused({ $0.initLoraWeights = .olora }, "init_lora_weights")
        refused({ $0.targetModules = .names(["c_attn", "wte"]) }, "wte")
        let a = try adapter(m)
        #expect(throws: LoRAError.self) { _ = try a.compressed(to: .fixed(2)) }
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: LoRAError.self) { try a.exportGGUF(path: dir + "/a.gguf", base: m.config) }
        let src = Fixtures.path("lora_bias/all/")
        try FileManager.default.copyItem(atPath: src + Adapter.weightsFile, toPath: dir + "/" + Adapter.weightsFile)
        let cfg = try String(contentsOfFile: src + Adapter.configFile, encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"lora_bias\": true", with: "\"lora_bias\": false")
            .write(toFile: dir + "/" + Adapter.configFile, atomically: true, encoding: .utf8)
        do {
            _ = try Adapter.load(directory: dir, modelConfig: m.config)
            Issue.record("a lora_B.bias without lora_bias was accepted")
        } catch LoRAError.invalidFile(_, let reason) {
            #expect(reason.contains("lora_bias"))
        }
    }
}
