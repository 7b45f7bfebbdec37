import Foundation
import LoRA
import Testing

@Suite struct LoRAForwardTests {
    let expected: SafeTensorsFile
    init() throws { expected = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors")) }

    @Test(arguments: ["all", "pattern", "layers"])
    func logitsWithPEFTAdapterMatch(name: String) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let adapter = try Adapter.load(directory: Fixtures.path("lora/\(name)"), modelConfig: model.config)
        try model.attach(adapter)
        let ids = try expected.ints("ids").tokenIDs
        let d = maxAbsDiff(try model.logits(ids), try expected.floats("logits.\(name)"))
        #expect(d < logitsTolerance, "\(name): max |Δ| = \(d)")
        // Disabled or detached: the base model's logits.
        let base = try Model.load(directory: Fixtures.path("gpt2-a")).logits(ids)
        try model.setEnabled(adapter, false)
        #expect(maxAbsDiff(try model.logits(ids), base) == 0)
        try model.setEnabled(adapter, true)
        try model.setScale(adapter, 0)
        #expect(maxAbsDiff(try model.logits(ids), base) == 0)
        try model.detach(adapter)
        #expect(maxAbsDiff(try model.logits(ids), base) == 0)
    }

    @Test func twoAdaptersAtOnceMatchPEFT() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        try model.attach(try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config))
        try model.attach(try Adapter.load(directory: Fixtures.path("lora/pattern"), modelConfig: model.config))
        let d = maxAbsDiff(try model.logits(try expected.ints("ids").tokenIDs), try expected.floats("logits.both"))
        #expect(d < logitsTolerance, "max |Δ| = \(d)")
    }

    @Test func patternsAndScalingFollowPEFT() throws {
        let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        let a = try Adapter.load(directory: Fixtures.path("lora/pattern"), modelConfig: c)
        #expect(a.config.loraAlpha == 6.5 && a.config.useRSLoRA)
        let s1 = try #require(a.slot(layer: 1, target: .attnCAttn))
        #expect(s1.r == 2 && abs(s1.scaling - Float(6.5 / 2.0.squareRoot())) < 1e-6)
        let s2 = try #require(a.slot(layer: 0, target: .attnCProj))
        #expect(s2.r == 4 && abs(s2.scaling - Float(3.0 / 2.0)) < 1e-6)
        #expect(a.slot(layer: 0, target: .mlpCFC)?.r == 6)
        #expect(a.slot(layer: 0, target: .mlpCProj) == nil)
        let l = try Adapter.load(directory: Fixtures.path("lora/layers"), modelConfig: c)
        #expect(l.slots.map(\.layer) == [1, 1])
    }

    @Test func savedAdapterIsByteIdenticalToPEFTs() throws {
        for name in ["all", "pattern", "layers"] {
            let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
            let a = try Adapter.load(directory: Fixtures.path("lora/\(name)"), modelConfig: c)
            let dir = try Fixtures.tempDir()
            try a.save(directory: dir)
            let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_model.safetensors"))
            let peft = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("lora/\(name)/adapter_model.safetensors")))
            #expect(ours == peft, "\(name): adapter_model.safetensors differs from PEFT's")
            // adapter_config.json: same keys and values; target_modules compared as a set (PEFT writes a set).
            func normalized(_ path: String) throws -> JSONValue {
                var o = try #require(try JSON.parse(Array(Data(contentsOf: URL(fileURLWithPath: path)))).objectValue)
                if let t = o["target_modules"]?.arrayValue {
                    o["target_modules"] = .array(t.compactMap(\.stringValue).sorted().map { .string($0) })
                }
                return .object(o)
            }
            let mine = try normalized(dir + "/adapter_config.json")
            let theirs = try normalized(Fixtures.path("lora/\(name)/adapter_config.json"))
            #expect(mine == theirs, "\(name): adapter_config.json differs:\n\(JSON.pythonPretty(mine))")
        }
    }

    @Test func badAdaptersAreRejected() throws {
        let c = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        let src = Fixtures.path("lora/all")
        func variant(config edit: (inout JSONObject) -> Void = { _ in }, tensors: ((TensorInfo, SafeTensorsFile) -> TensorData?)? = nil)
            throws -> String
        {
            let dir = try Fixtures.tempDir()
            var o = try #require(try JSON.parse(Array(Data(contentsOf: URL(fileURLWithPath: src + "/adapter_config.json")))).objectValue)
            edit(&o)
            try JSON.pythonPretty(.object(o)).write(toFile: dir + "/adapter_config.json", atomically: true, encoding: .utf8)
            let f = try SafeTensorsFile(path: src + "/adapter_model.safetensors")
            let ts = f.tensors.compactMap { info in
                tensors.map { $0(info, f) }
                    ?? TensorData(name: info.name, dtype: info.dtype, shape: info.shape, bytes: Array(f.rawBytes(info)))
            }
            try SafeTensorsWriter.write(ts, to: dir + "/adapter_model.safetensors")
            return dir
        }
        func expectError(_ dir: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try Adapter.load(directory: dir, modelConfig: c)
                Issue.record("accepted (\(fragment))", sourceLocation: sourceLocation)
            } catch {
                #expect("\(error)".contains(fragment), "\(error)", sourceLocation: sourceLocation)
            }
        }
        // use_dora without magnitudes in the file (DoRATests covers real DoRA adapters).
        expectError(
            try variant(config: { $0["use_dora"] = .bool(true) }),
            "missing tensor base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector")
        expectError(try variant(config: { $0["r"] = .number(JSONNumber(0)) }), "r must be")
        expectError(try variant(config: { $0["lora_alpha"] = .string("x") }), "lora_alpha")
        expectError(try variant(config: { $0["target_modules"] = .array([.string("q_proj")]) }), "not found in the base model")
        expectError(try variant(config: { $0["target_modules"] = .array([.string("lm_head")]) }), "lm_head")
        expectError(try variant(config: { $0["ensure_weight_tying"] = .bool(true) }), "ensure_weight_tying")
        expectError(try variant(config: { $0["peft_type"] = .string("IA3") }), "IA3")
        expectError(try variant(config: { $0["r"] = .number(JSONNumber(5)) }), "shape")
        expectError(
            try variant(tensors: { info, f in
                TensorData(
                    name: String(info.name.dropFirst("base_model.model.".count)), dtype: info.dtype, shape: info.shape,
                    bytes: Array(f.rawBytes(info)))
            }), "base_model.model. prefix")
        expectError(
            try variant(tensors: { info, f in
                info.name.hasSuffix("h.1.mlp.c_fc.lora_B.weight")
                    ? nil
                    : TensorData(name: info.name, dtype: info.dtype, shape: info.shape, bytes: Array(f.rawBytes(info)))
            }), "missing tensor base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight")
        expectError(try Fixtures.tempDir(), "adapter_config.json")
    }
}

@Suite struct MergeTests {
    @Test func mergeMatchesOnTheFlyAndUnmergeRestoresTheBase() throws {
        let expected = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let before = Array(model.weights.block.buffer)
        let adapter = try Adapter.load(directory: Fixtures.path("lora/pattern"), modelConfig: model.config)
        try model.merge(adapter)
        let ids = try expected.ints("ids").tokenIDs
        #expect(maxAbsDiff(try model.logits(ids), try expected.floats("logits.pattern")) < logitsTolerance)
        try model.unmerge(adapter)
        var num = 0.0
        var den = 0.0
        for (i, w) in model.weights.block.buffer.enumerated() {
            num += Double(w - before[i]) * Double(w - before[i]); den += Double(before[i]) * Double(before[i])
        }
        #expect((num / den).squareRoot() < 1e-6, "unmerge leaves relative error \((num / den).squareRoot())")
        // Still attached and applied on the fly after unmerge.
        #expect(maxAbsDiff(try model.logits(ids), try expected.floats("logits.pattern")) < logitsTolerance)
    }

    @Test func exportedMergedModelReloads() throws {
        let expected = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        try model.merge(try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config))
        let dir = try Fixtures.tempDir()
        try model.save(directory: dir)
        let reloaded = try Model.load(directory: dir)
        let ids = try expected.ints("ids").tokenIDs
        #expect(maxAbsDiff(try reloaded.logits(ids), try expected.floats("logits.all")) < logitsTolerance)
        #expect(try GPT2Config.load(path: dir + "/config.json") == model.config)
    }
}

@Suite struct MergedExportTests {
    /// The export `lora merge` wrote (committed), loaded by transformers: its logits equal base + adapter.
    @Test func transformersLoadsTheMergedExport() throws {
        let lora = try SafeTensorsFile(path: Fixtures.path("lora/expected.safetensors"))
        let fromTransformers = try SafeTensorsFile(path: Fixtures.path("merge/expected.safetensors")).floats("logits")
        #expect(maxAbsDiff(fromTransformers, try lora.floats("logits.all")) < logitsTolerance)
        // Exporting again gives the same bytes.
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        try model.merge(try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config))
        let dir = try Fixtures.tempDir()
        try model.save(directory: dir)
        for f in ["model.safetensors", "config.json"] {
            #expect(
                try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
                    == Data(contentsOf: URL(fileURLWithPath: Fixtures.path("merge/export/" + f))), "\(f) differs")
        }
    }
}
