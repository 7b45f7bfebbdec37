import CLoraSupport
import Foundation
import LoRA
import Testing

// A GPT-2 whose weight matrices are stored as bf16, f16 or q8_0 (issue #16),
// against transformers on the same rounded weights stored back as F32
// (scripts/make_lowp_fixtures.py writes Fixtures/lowp/).

private let reducedDTypes: [WeightDType] = [.bf16, .f16, .q8_0]

private func lowpExpected(_ d: WeightDType) throws -> SafeTensorsFile {
    try SafeTensorsFile(path: Fixtures.path("lowp/expected-\(d.rawValue).safetensors"))
}

@Suite struct ReducedPrecisionModelTests {
    /// Prefill (panels + sgemm) and the whole-sequence LM head.
    @Test(arguments: reducedDTypes)
    func logitsMatchTransformersOnTheRoundedWeights(dtype: WeightDType) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
        #expect(model.dtype == dtype)
        let exp = try lowpExpected(dtype)
        let f32 = try Model.load(directory: Fixtures.path("gpt2-a"))
        for k in 0..<4 {
            let ids = try exp.ints("seq\(k).ids").tokenIDs
            let got = try model.logits(ids)
            let d = maxAbsDiff(got, try exp.floats("seq\(k).logits"))
            #expect(d < logitsTolerance, "\(dtype) seq\(k) (T=\(ids.count)): max |Δ| = \(d)")
            // The rounding is real: the F32 model's logits differ.
            if k == 3 { #expect(maxAbsDiff(try f32.logits(ids), got) > 1e-4) }
        }
        for side in ["left", "right"] {
            let ids = try exp.ints("batch_\(side).ids")
            let mask = try exp.ints("batch_\(side).mask")
            let shape = try #require(exp["batch_\(side).ids"]).shape
            let (B, T) = (shape[0], shape[1])
            let seqs = (0..<B).map { b in (0..<T).filter { mask[b * T + $0] != 0 }.map { TokenID(ids[b * T + $0]) } }
            let got = try model.logits(batch: seqs, padding: side == "left" ? .left : .right)
            let d = maxAbsDiff(got, try exp.floats("batch_\(side).logits"))
            #expect(d < logitsTolerance, "\(dtype) \(side) padding: max |Δ| = \(d)")
        }
    }

    /// Decode (the dtype's GEMV, M = 1) through the KV cache, and the engine's batched steps.
    @Test(arguments: reducedDTypes)
    func greedyGenerationMatchesTransformers(dtype: WeightDType) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
        let (requests, wants) = try Fixtures.greedyRequests(lowpExpected(dtype))
        for (k, q) in requests.enumerated() {
            let r = try model.generate(prompt: q.prompt, params: q.params)
            #expect(q.prompt + r.tokens == wants[k], "\(dtype) greedy\(k)")
        }
        let engine = try Engine(model: model)
        let results = try engine.generate(requests)
        for (k, r) in results.enumerated() { #expect(requests[k].prompt + r.tokens == wants[k], "\(dtype) engine greedy\(k)") }
    }

    /// Save writes the dtype (BF16/F16 tensors, Q8_0 pairs); load reads it back as it was.
    @Test(arguments: reducedDTypes)
    func savedModelsLoadBackUnchanged(dtype: WeightDType) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try model.save(directory: dir)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        #expect(file.metadata?["liblora.dtype"] == dtype.rawValue)
        switch dtype {
        case .q8_0:
            #expect(file["transformer.h.0.attn.c_attn.weight.q8_0"]?.shape == [48, 144])
            #expect(file["transformer.h.0.attn.c_attn.weight.q8_0_scale"]?.shape == [2, 144])  // 48 = 32 + 16
            #expect(file["transformer.wte.weight.q8_0_scale"]?.shape == [101, 2])
            #expect(file["transformer.h.0.attn.c_attn.weight"] == nil)
        default:
            #expect(file["transformer.h.0.mlp.c_fc.weight"]?.dtype.rawValue == dtype.rawValue.uppercased())
        }
        #expect(file["transformer.h.0.ln_1.weight"]?.dtype == .F32)
        let back = try Model.load(directory: dir)
        #expect(back.dtype == dtype)
        let ids: [TokenID] = [3, 14, 15, 92, 65, 35]
        #expect(try back.logits(ids) == (try model.logits(ids)))
        // Loaded as f32: the dequantized weights, the same function to float rounding.
        let wide = try Model.load(directory: dir, dtype: .f32)
        #expect(wide.dtype == .f32)
        #expect(maxAbsDiff(try wide.logits(ids), try model.logits(ids)) < logitsTolerance)
    }

    /// Conversion at load from F16 and BF16 checkpoints (saved by
    /// transformers): the same stored weights as converting their values
    /// from F32, so the same logits bit for bit; a file already in the
    /// asked dtype keeps its values exactly.
    @Test(arguments: [
        ("gpt2-a-f16", WeightDType.f16), ("gpt2-a-bf16", .bf16), ("gpt2-a-f16", .bf16), ("gpt2-a-bf16", .f16),
        ("gpt2-a-f16", .q8_0), ("gpt2-a-bf16", .q8_0),
    ])
    func halfPrecisionCheckpointsConvertAsTheirF32Values(fixture: String, dtype: WeightDType) throws {
        let direct = try Model.load(directory: Fixtures.path(fixture), dtype: dtype)
        #expect(direct.dtype == dtype)
        let wide = try Model.load(directory: Fixtures.path(fixture))
        let dir = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try wide.save(directory: dir)  // F32: the file's values widened exactly
        let via = try Model.load(directory: dir, dtype: dtype)
        let ids: [TokenID] = [3, 14, 15, 92, 65, 35]
        #expect(try direct.logits(ids) == (try via.logits(ids)), "\(fixture) as \(dtype)")
        if fixture.hasSuffix(dtype.rawValue) {
            // Nothing rounded: the F32 model of the same file computes the same function.
            #expect(maxAbsDiff(try direct.logits(ids), try wide.logits(ids)) < logitsTolerance)
        }
    }

    /// LoRA training on a bf16 base: PEFT's 20 AdamW steps on the rounded base.
    @Test func loraTrainingOnABF16BaseMatchesPEFT() throws {
        let exp = try SafeTensorsFile(path: Fixtures.path("lowp/train-bf16.safetensors"))
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: .bf16)
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.weightDecay = 0.05; cfg.lrScheduler = .cosine; cfg.warmupSteps = 3; cfg.maxSteps = 20
        cfg.maxGradNorm = 1.0; cfg.batchSize = 2; cfg.blockSize = 12
        let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
        let losses = try exp.floats("losses")
        let shape = try #require(exp["batch0.ids"]).shape
        for k in 0..<20 {
            let flat = try exp.ints("batch\(k).ids")
            let ids = (0..<shape[0]).map { b in (0..<shape[1]).map { TokenID(flat[b * shape[1] + $0]) } }
            let loss = try trainer.step(ids: ids)
            #expect(abs(Float(loss) - losses[k]) < trajectoryTolerance, "step \(k): loss \(loss) vs \(losses[k])")
        }
        var worst: Float = 0
        for s in adapter.slots {
            for (suffix, p, count) in [("lora_A", adapter.A(s), s.countA), ("lora_B", adapter.B(s), s.countB)] {
                let ref = try exp.floats("final.base_model.model.\(s.moduleName).\(suffix).weight")
                for i in 0..<count { worst = max(worst, abs(p[i] - ref[i])) }
            }
        }
        #expect(worst < trajectoryTolerance, "final adapter max |Δ| = \(worst)")
    }

    /// Training with more rows than the few-row kernels take (5 × 32 = 160:
    /// the packed GEMM on AVX-512) on a bf16 base follows training on the
    /// same rounded weights held as F32 (OpenBLAS's sgemm): the same function,
    /// sums in another order.
    @Test func loraTrainingOnManyRowsOfABF16BaseMatchesItsF32Twin() throws {
        let bf16 = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: .bf16)
        let twin = try Model.load(directory: Fixtures.path("lowp/bf16"))  // the rounded values, stored as F32
        #expect(twin.weights.wte.dtype == .f32)
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.warmupSteps = 0; cfg.maxSteps = 3; cfg.batchSize = 5; cfg.blockSize = 32
        var rng = SplitMix64(seed: 21)
        let batches = (0..<3).map { _ in (0..<5).map { _ in (0..<32).map { _ in TokenID(rng.next() % 101) } } }
        var results: [([Double], [Float])] = []
        for model in [bf16, twin] {
            let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
            let trainer = try Trainer(model: model, adapter: adapter, config: cfg)
            let losses = try batches.map { try trainer.step(ids: $0) }
            var params: [Float] = []
            for s in adapter.slots {
                params += Array(UnsafeBufferPointer(start: adapter.A(s), count: s.countA))
                params += Array(UnsafeBufferPointer(start: adapter.B(s), count: s.countB))
            }
            results.append((losses, params))
        }
        for (a, b) in zip(results[0].0, results[1].0) { #expect(abs(a - b) < 1e-5, "loss \(a) vs \(b)") }
        #expect(maxAbsDiff(results[0].1, results[1].1) < trajectoryTolerance)
    }

    @Test func fullFineTuningNeedsAnF32Base() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: .bf16)
        #expect(throws: LoRAError.self) { try Trainer(model: model, adapter: nil, config: TrainerParams()) }
        #expect(throws: LoRAError.self) { try WeightDType.parse("int4") }
        #expect(try WeightDType.parse("Q8_0") == .q8_0)
    }

    /// DoRA on a reduced-precision base reads the rounded weights as F32 (its
    /// norms, its dropout path's base product): the same function as DoRA on
    /// the same rounded values held as F32 (the twin; DoRA on F32 is checked
    /// against PEFT in DoRATests). PEFT's DoRA adapter: logits within 1e-4
    /// (prompt and decode), greedy tokens identical; a fresh adapter's
    /// magnitudes (‖W‖ per column) bit for bit; three AdamW steps with LoRA
    /// dropout (the base product recomputed from x̃, and its backward) within
    /// the training tolerance; merge re-rounds and unmerge comes back, as for
    /// plain LoRA (mergeAndUnmergeReRound's bounds).
    @Test(arguments: reducedDTypes)
    func doraOnAReducedBaseMatchesItsF32Twin(dtype: WeightDType) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
        let twin = try Model.load(directory: Fixtures.path("lowp/\(dtype.rawValue)"))  // the rounded values, stored as F32
        #expect(twin.weights.wte.dtype == .f32)
        let ids: [TokenID] = [5, 17, 2, 99, 40, 41, 7, 63, 12]
        var logits: [[Float]] = []
        var tokens: [[TokenID]] = []
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 8
        sp.stopAtEndOfText = false
        for m in [model, twin] {
            let a = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: m.config)
            try m.attach(a, scale: 0.8)
            logits.append(try m.logits(ids))
            tokens.append(try m.generate(prompt: ids, params: sp).tokens)
            try m.detach(a)
        }
        let d = maxAbsDiff(logits[0], logits[1])
        print("DoRA on \(dtype) against its F32 twin: max abs logit difference \(d)")
        #expect(d < 1e-4, "\(dtype) DoRA logits against the twin: \(d)")
        #expect(tokens[0] == tokens[1])
        #expect(maxAbsDiff(logits[0], try model.logits(ids)) > 1e-2)  // the adapter matters

        // A fresh adapter's magnitudes, then training with dropout.
        var c = LoRAConfig()
        c.r = 4; c.loraAlpha = 8; c.useDoRA = true; c.loraDropout = 0.1; c.initLoraWeights = .random
        c.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
        var cfg = TrainerParams()
        cfg.learningRate = 5e-3; cfg.warmupSteps = 0; cfg.maxSteps = 3; cfg.batchSize = 2; cfg.blockSize = 16
        var rng = SplitMix64(seed: 5)
        let batches = (0..<3).map { _ in (0..<2).map { _ in (0..<16).map { _ in TokenID(rng.next() % 101) } } }
        var results: [(magnitudes: [Float], losses: [Double], params: [Float])] = []
        for m in [model, twin] {
            let a = try Adapter(config: c, modelConfig: m.config)
            try a.initialize(from: m, seed: 9)
            let magnitudes = a.slots.flatMap { Array(UnsafeBufferPointer(start: a.magnitude($0)!, count: $0.outFeatures)) }
            let trainer = try Trainer(model: m, adapter: a, config: cfg)
            let losses = try batches.map { try trainer.step(ids: $0) }
            results.append((magnitudes, losses, Array(UnsafeBufferPointer(start: a.params.base, count: a.params.count))))
        }
        #expect(results[0].magnitudes == results[1].magnitudes)
        for (a, b) in zip(results[0].losses, results[1].losses) { #expect(abs(a - b) < 1e-5, "loss \(a) vs \(b)") }
        #expect(maxAbsDiff(results[0].params, results[1].params) < trajectoryTolerance)

        // Merge and unmerge.
        let adapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: model.config)
        let base = try model.logits(ids)
        try model.attach(adapter)
        let onTheFly = try model.logits(ids)
        try model.merge(adapter)
        #expect(model.dtype == dtype)
        let merged = try model.logits(ids)
        try model.unmerge(adapter)
        try model.detach(adapter)
        let bound: Float = dtype == .bf16 ? 0.5 : 0.25
        #expect(maxAbsDiff(merged, onTheFly) < bound, "\(dtype) merged vs on the fly")
        #expect(maxAbsDiff(try model.logits(ids), base) < bound, "\(dtype) base after unmerge")
    }

    /// PiSSA and OLoRA on a reduced-precision base: the residual W − s·B·A is
    /// stored in the base's dtype, so residual + adapter computes the base
    /// within one rounding of the dtype (bounds as mergeAndUnmergeReRound's),
    /// and the base leaves its dtype unchanged.
    @Test(arguments: reducedDTypes)
    func pissaAndOLoRALeaveTheResidualInTheDType(dtype: WeightDType) throws {
        for initialization in [LoRAConfig.Initialization.pissa(niter: nil), .olora] {
            let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
            let ids: [TokenID] = [5, 17, 2, 99, 40, 41, 7]
            let before = try model.logits(ids)
            var c = LoRAConfig()
            c.r = 4; c.loraAlpha = 8; c.initLoraWeights = initialization
            c.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
            let adapter = try Adapter(config: c, modelConfig: model.config)
            try adapter.initialize(from: model, seed: 3)
            #expect(model.dtype == dtype)
            try model.attach(adapter)
            let d = maxAbsDiff(try model.logits(ids), before)
            let bound: Float = dtype == .bf16 ? 0.5 : 0.25
            #expect(d < bound, "\(dtype) \(initialization): residual + adapter vs base \(d)")
            // The residual alone is no longer the base: a large part of W moved into the adapter.
            try model.setEnabled(adapter, false)
            #expect(maxAbsDiff(try model.logits(ids), before) > 1e-2)
        }
    }

    /// Merging into a reduced-precision base re-rounds: close to the adapter
    /// applied on the fly, and unmerge comes back within the dtype's rounding.
    @Test(arguments: reducedDTypes)
    func mergeAndUnmergeReRound(dtype: WeightDType) throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: dtype)
        let adapter = try Adapter.load(directory: Fixtures.path("lora/all"), modelConfig: model.config)
        let ids: [TokenID] = [5, 17, 2, 99, 40, 41, 7]
        let base = try model.logits(ids)
        try model.attach(adapter)
        let onTheFly = try model.logits(ids)
        try model.merge(adapter)
        let merged = try model.logits(ids)
        try model.unmerge(adapter)
        let unmerged = try model.logits(ids)  // applied on the fly again
        try model.detach(adapter)
        let after = try model.logits(ids)
        // Bounds: the weights move by one rounding of the dtype (2⁻⁸ relative for bf16,
        // 2⁻¹¹ for f16, half a q8_0 step), on logits of size ~10 in this model.
        let bound: Float = dtype == .bf16 ? 0.5 : 0.25
        let dMerged = maxAbsDiff(merged, onTheFly)
        let dUnmerged = maxAbsDiff(unmerged, onTheFly)
        let dAfter = maxAbsDiff(after, base)
        #expect(dMerged < bound && dMerged > 0, "\(dtype) merged vs on the fly: \(dMerged)")
        #expect(dUnmerged < bound, "\(dtype) unmerged vs on the fly: \(dUnmerged)")
        #expect(dAfter < bound, "\(dtype) base after unmerge: \(dAfter)")
    }
}

/// Malformed Q8_0 files: clear errors, no model.
@Suite struct QuantizedFileTests {
    /// Saves gpt2-a as q8_0, then rewrites model.safetensors with `edit` applied to its tensors.
    func broken(_ edit: (inout [TensorData]) -> Void) throws -> String {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: .q8_0)
        let dir = try Fixtures.tempDir()
        try model.save(directory: dir)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        var tensors = file.tensors.map { t in
            TensorData(name: t.name, dtype: t.dtype, shape: t.shape, bytes: Array(file.rawBytes(t)))
        }
        edit(&tensors)
        try SafeTensorsWriter.write(tensors, to: dir + "/model.safetensors", metadata: ["format": "pt", "liblora.dtype": "q8_0"])
        return dir
    }

    func expectInvalid(_ dir: String, _ fragment: String) {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try Model.load(directory: dir)
            Issue.record("loaded a malformed q8_0 file (\(fragment))")
        } catch let LoRAError.invalidFile(_, reason) {
            #expect(reason.contains(fragment), "\(reason)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    let name = "transformer.h.1.mlp.c_fc.weight"

    @Test func missingScales() throws {
        expectInvalid(try broken { $0.removeAll { $0.name == name + ".q8_0_scale" } }, "has no scales")
    }

    @Test func missingValues() throws {
        expectInvalid(try broken { $0.removeAll { $0.name == name + ".q8_0" } }, "no values")
    }

    @Test func wrongBlockCount() throws {
        // [2, 192] scales for 48 input rows; one block row instead of two.
        expectInvalid(
            try broken { ts in
                guard let i = ts.firstIndex(where: { $0.name == name + ".q8_0_scale" }) else { return }
                ts[i] = TensorData(name: ts[i].name, dtype: .F16, shape: [1, 192], bytes: Array(ts[i].bytes.prefix(2 * 192)))
            }, "blocks of 32")
    }

    @Test func wrongValueShape() throws {
        expectInvalid(
            try broken { ts in
                guard let i = ts.firstIndex(where: { $0.name == name + ".q8_0" }) else { return }
                ts[i] = TensorData(name: ts[i].name, dtype: .I8, shape: [192, 48], bytes: ts[i].bytes)
            }, "the config needs")
    }

    @Test func nanScale() throws {
        expectInvalid(
            try broken { ts in
                guard let i = ts.firstIndex(where: { $0.name == name + ".q8_0_scale" }) else { return }
                var b = ts[i].bytes
                b[10] = 0x00; b[11] = 0x7E  // F16 NaN
                ts[i] = TensorData(name: ts[i].name, dtype: .F16, shape: ts[i].shape, bytes: b)
            }, "NaN")
    }

    @Test func wrongDTypes() throws {
        expectInvalid(
            try broken { ts in
                guard let i = ts.firstIndex(where: { $0.name == name + ".q8_0_scale" }) else { return }
                let n = ts[i].shape.reduce(1, *)
                ts[i] = TensorData(name: ts[i].name, dtype: .F32, shape: ts[i].shape, bytes: [UInt8](repeating: 0, count: 4 * n))
            }, "expected F16")
        expectInvalid(
            try broken { ts in
                guard let i = ts.firstIndex(where: { $0.name == name + ".q8_0" }) else { return }
                ts[i] = TensorData(name: ts[i].name, dtype: .U8, shape: ts[i].shape, bytes: ts[i].bytes)
            }, "expected I8")
    }

    @Test func floatsAndQ8ForOneWeight() throws {
        expectInvalid(
            try broken { ts in
                ts.append(TensorData(name: name, shape: [48, 192], floats: [Float](repeating: 0, count: 48 * 192)))
            }, "both as floats and as q8_0")
    }

    @Test func unknownSavedDType() throws {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        let dir = try Fixtures.tempDir()
        try model.save(directory: dir)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        let tensors = file.tensors.map { TensorData(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(file.rawBytes($0))) }
        try SafeTensorsWriter.write(tensors, to: dir + "/model.safetensors", metadata: ["liblora.dtype": "int3"])
        expectInvalid(dir, "unknown liblora.dtype")
    }
}

/// baseMatmul's panel and GEMV paths against a naive product on the
/// dequantized weights, with shapes beyond one panel (several K panels and
/// column blocks, rows longer than a panel; 130 rows take the sgemm panels)
/// and both Q8_0 scale layouts.
@Suite struct BaseMatmulTests {
    /// Float32 sums of K terms of size ~1 in another order than the Double reference: ~K·2⁻²⁴·√K at worst.
    static func tolerance(_ K: Int) -> Float { 1e-4 + 1e-6 * Float(K) }

    func matrix(
        _ dtype: WeightDType, rows: Int, cols: Int, inputAlongRows: Bool, seed: UInt64, values given: [Float]? = nil
    ) throws -> (BaseMatrix, ByteBlock, [Float]) {
        var rng = SplitMix64(seed: seed)
        let values = given ?? (0..<rows * cols).map { _ in rng.nextGaussian() }
        let probe = BaseMatrix(
            dtype: dtype, rows: rows, cols: cols, inputAlongRows: inputAlongRows, data: UnsafeMutableRawPointer(bitPattern: 64)!,
            scales: nil)
        let block = try ByteBlock(count: probe.dataBytes + 2 * probe.scaleCount + 64)
        let scales = dtype == .q8_0 ? (block.base + probe.dataBytes).bindMemory(to: UInt16.self, capacity: probe.scaleCount) : nil
        let m = BaseMatrix(dtype: dtype, rows: rows, cols: cols, inputAlongRows: inputAlongRows, data: block.base, scales: scales)
        try m.store(values, name: "test")
        return (m, block, m.dequantized())
    }

    /// Storing a matrix a panel of rows at a time (as a load converts it) gives the bytes of storing it whole.
    @Test(arguments: [WeightDType.bf16, .f16, .q8_0], [true, false])
    func storingByRowPanelsEqualsStoringWhole(dtype: WeightDType, inputAlongRows: Bool) throws {
        let (rows, cols) = (100, 45)  // 100 = 3·32 + 4: a partial last block either way
        let (whole, wholeBlock, values) = try matrix(dtype, rows: rows, cols: cols, inputAlongRows: inputAlongRows, seed: 3)
        var rng = SplitMix64(seed: 3)
        let src = (0..<rows * cols).map { _ in rng.nextGaussian() }
        let (parts, partsBlock, _) = try matrix(dtype, rows: rows, cols: cols, inputAlongRows: inputAlongRows, seed: 4)
        for r0 in stride(from: 0, to: rows, by: 32) {
            let r1 = min(rows, r0 + 32)
            try src.withUnsafeBufferPointer { try parts.store($0.baseAddress! + r0 * cols, rows: r0..<r1, name: "test") }
        }
        #expect(parts.dequantized() == values)
        let bytes = whole.dataBytes + 2 * whole.scaleCount
        #expect(memcmp(wholeBlock.base, partsBlock.base, bytes) == 0)
        if dtype == .q8_0 && inputAlongRows {
            // A range that splits a block is refused.
            #expect(throws: LoRAError.self) {
                try src.withUnsafeBufferPointer { try parts.store($0.baseAddress!, rows: 0..<40, name: "t") }
            }
        }
    }

    @Test(arguments: [WeightDType.bf16, .f16, .q8_0], [(1, 1100, 300), (2, 1100, 300), (2, 70, 5000), (1, 17_000, 20), (130, 600, 1040)])
    func panelsAndGemvMatchNaiveProducts(dtype: WeightDType, shape: (Int, Int, Int)) throws {
        try BLAS.load()
        let (M, K, N) = shape
        var rng = SplitMix64(seed: 5)
        let a = (0..<M * K).map { _ in rng.nextGaussian() }
        for inputAlongRows in [true, false] {
            // op(W) = W [K, N] and Wᵀ with W [N, K], in both scale layouts.
            for transW in [false, true] {
                let (rows, cols) = transW ? (N, K) : (K, N)
                let (m, block, w) = try matrix(dtype, rows: rows, cols: cols, inputAlongRows: inputAlongRows, seed: 9)
                var want = [Float](repeating: 0, count: M * N)
                for i in 0..<M {
                    for n in 0..<N {
                        var s: Double = 0
                        for k in 0..<K { s += Double(a[i * K + k]) * Double(transW ? w[n * K + k] : w[k * N + n]) }
                        want[i * N + n] = Float(s) + 0.5
                    }
                }
                var got = [Float](repeating: 0.5, count: M * N)
                a.withUnsafeBufferPointer { ap in
                    got.withUnsafeMutableBufferPointer { gp in
                        baseMatmul(
                            transW: transW, M: M, N: N, K: K, A: ap.baseAddress!, lda: K, W: m, beta: 1, C: gp.baseAddress!, ldc: N)
                    }
                }
                withExtendedLifetime(block) {}
                let d = maxAbsDiff(got, want)
                #expect(d < Self.tolerance(K), "\(dtype) M \(M) K \(K) N \(N) transW \(transW) rows-input \(inputAlongRows): \(d)")
            }
        }
    }
    /// The column-split tests' operands: A [61, 790] and C [61, 700] of
    /// Gaussians (a partial row panel, K block and column tile).
    static func splitOperands() -> (M: Int, K: Int, N: Int, a: [Float], c0: [Float]) {
        let (M, K, N) = (61, 790, 700)
        var rng = SplitMix64(seed: 8)
        let a = (0..<M * K).map { _ in rng.nextGaussian() }
        let c0 = (0..<M * N).map { _ in rng.nextGaussian() }
        return (M, K, N, a, c0)
    }

    /// The packed GEMM of many rows on a BF16/F16/Q8_0 weight: a column's sums do
    /// not depend on how the columns are split among the workers, so results
    /// do not depend on the thread count (both forms, both betas; a partial
    /// row panel, a partial K block, partial column tiles). Its values against
    /// a Double reference: panelsAndGemvMatchNaiveProducts (130 rows).
    @Test(arguments: [WeightDType.bf16, .f16, .q8_0])
    func packedGemmDoesNotDependOnTheColumnSplit(dtype: WeightDType) throws {
        guard lb_gemm_packed_available(lb_kernels_level(), dtype.code) != 0 else { return }
        let (M, K, N, a, c0) = Self.splitOperands()
        for transW in [false, true] {
            let (rows, cols) = transW ? (N, K) : (K, N)
            let (m, block, _) = try matrix(dtype, rows: rows, cols: cols, inputAlongRows: !transW, seed: 12)
            var wholes: [[Float]] = []
            for beta0: Int32 in [0, 1] {
                func run(_ splits: [Int]) -> [Float] {
                    var c = c0
                    var scratch = [Float](repeating: .nan, count: lb_gemm_packed_scratch_floats())
                    for (n0, n1) in zip(splits, splits.dropFirst()) {
                        lb_gemm_packed_lowp(
                            dtype.code, transW ? 0 : 1, transW ? 1 : 0, Int32(M), Int32(K), a, Int32(K), m.data, m.scales,
                            Int32(cols), &c, Int32(N), Int32(n0), Int32(n1), beta0, &scratch)
                    }
                    return c
                }
                let whole = run([0, N])
                #expect(run([0, 512, N]) == whole, "\(dtype) transW \(transW) beta0 \(beta0)")
                #expect(run([0, 32, 480, 672, N]) == whole, "\(dtype) transW \(transW) beta0 \(beta0)")
                #expect(whole.allSatisfy { $0.isFinite })
                wholes.append(whole)
            }
            // beta0 1 overwrites C, 0 adds to it: the two differ by C's old values.
            #expect(maxAbsDiff(zip(wholes[0], c0).map { $0 - $1 }, wholes[1]) < 1e-3)
            withExtendedLifetime(block) {}
        }
    }

    /// The AMX product of a BF16 weight (each activation split into three
    /// bf16 parts): against a Double reference within the tolerance of the
    /// F32 products, and, as the packed GEMM, the same bits for every split
    /// of the columns (both forms, both betas, partial tiles of rows,
    /// columns and k). Runs only where the CPU has AMX.
    @Test(.enabled(if: lb_gemm_amx_available() != 0))
    func amxGemmMatchesReferenceAndDoesNotDependOnTheColumnSplit() throws {
        let (M, K, N, a, c0) = Self.splitOperands()
        for transW in [false, true] {
            let (rows, cols) = transW ? (N, K) : (K, N)
            let (m, block, w) = try matrix(.bf16, rows: rows, cols: cols, inputAlongRows: !transW, seed: 12)
            let weights = m.data.assumingMemoryBound(to: UInt16.self)
            for beta0: Int32 in [0, 1] {
                func run(_ splits: [Int]) -> [Float] {
                    var c = c0
                    var scratch = [Float](repeating: .nan, count: lb_gemm_packed_scratch_floats())
                    for (n0, n1) in zip(splits, splits.dropFirst()) {
                        lb_gemm_amx_bf16(
                            transW ? 1 : 0, Int32(M), Int32(K), a, Int32(K), weights, Int32(cols), &c, Int32(N), Int32(n0),
                            Int32(n1), beta0, &scratch)
                    }
                    return c
                }
                let whole = run([0, N])
                #expect(run([0, 512, N]) == whole, "transW \(transW) beta0 \(beta0)")
                #expect(run([0, 32, 480, 672, N]) == whole, "transW \(transW) beta0 \(beta0)")
                var want = [Float](repeating: 0, count: M * N)
                for i in 0..<M {
                    for n in 0..<N {
                        var s: Double = beta0 == 1 ? 0 : Double(c0[i * N + n])
                        for k in 0..<K { s += Double(a[i * K + k]) * Double(transW ? w[n * K + k] : w[k * N + n]) }
                        want[i * N + n] = Float(s)
                    }
                }
                let d = maxAbsDiff(whole, want)
                #expect(d < Self.tolerance(K), "transW \(transW) beta0 \(beta0): \(d)")
            }
            withExtendedLifetime(block) {}
        }
    }

    /// The three bf16 parts hold all 24 bits of each activation: against a
    /// weight with one 1 per column, the AMX product returns the activations
    /// bit for bit (two parts, or a wrong third, would be off by ~2^-17).
    @Test(.enabled(if: lb_gemm_amx_available() != 0))
    func amxGemmKeepsEveryBitOfTheActivations() throws {
        let (M, K, N) = (45, 100, 70)
        var rng = SplitMix64(seed: 30)
        let a = (0..<M * K).map { _ in rng.nextGaussian() * 3 }
        let pick = (0..<N).map { ($0 * 7) % K }
        for transW in [false, true] {
            let (rows, cols) = transW ? (N, K) : (K, N)
            var values = [Float](repeating: 0, count: rows * cols)
            for n in 0..<N { values[transW ? n * K + pick[n] : pick[n] * N + n] = 1 }
            let (m, block, _) = try matrix(.bf16, rows: rows, cols: cols, inputAlongRows: !transW, seed: 0, values: values)
            var c = [Float](repeating: .nan, count: M * N)
            var scratch = [Float](repeating: .nan, count: lb_gemm_packed_scratch_floats())
            lb_gemm_amx_bf16(
                transW ? 1 : 0, Int32(M), Int32(K), a, Int32(K), m.data.assumingMemoryBound(to: UInt16.self), Int32(cols), &c,
                Int32(N), 0, Int32(N), 1, &scratch)
            let want = (0..<M * N).map { a[($0 / N) * K + pick[$0 % N]] }
            #expect(c == want, "transW \(transW)")
            withExtendedLifetime(block) {}
        }
    }

    /// A few rows at once (an engine step) give each row's decode result bit
    /// for bit, as with F32 weights: a sequence's numbers do not depend on
    /// the other rows of its step. K = 1100 spans several column panels;
    /// K = 70 ends in a short tile of rows and a short Q8_0 block, across
    /// N = 1100 columns.
    @Test(arguments: [WeightDType.bf16, .f16, .q8_0], [3, 16, 100])
    func fewRowsEqualDecodePerRow(dtype: WeightDType, M: Int) throws {
        try BLAS.load()
        for (K, N) in [(1100, 300), (70, 1100)] { try fewRowsEqualDecodePerRow(dtype: dtype, M: M, K: K, N: N) }
    }

    private func fewRowsEqualDecodePerRow(dtype: WeightDType, M: Int, K: Int, N: Int) throws {
        var rng = SplitMix64(seed: 6)
        let a = (0..<M * K).map { _ in rng.nextGaussian() }
        for transW in [false, true] {
            let (rows, cols) = transW ? (N, K) : (K, N)
            let (m, block, _) = try matrix(dtype, rows: rows, cols: cols, inputAlongRows: !transW, seed: 10)
            for beta: Float in [0, 1] {
                let c0 = (0..<M * N).map { _ in rng.nextGaussian() }
                var many = c0
                var one = c0
                a.withUnsafeBufferPointer { ap in
                    many.withUnsafeMutableBufferPointer { gp in
                        baseMatmul(
                            transW: transW, M: M, N: N, K: K, A: ap.baseAddress!, lda: K, W: m, beta: beta, C: gp.baseAddress!,
                            ldc: N)
                    }
                    one.withUnsafeMutableBufferPointer { gp in
                        for i in 0..<M {
                            baseMatmul(
                                transW: transW, M: 1, N: N, K: K, A: ap.baseAddress! + i * K, lda: K, W: m, beta: beta,
                                C: gp.baseAddress! + i * N, ldc: N)
                        }
                    }
                }
                withExtendedLifetime(block) {}
                #expect(many == one, "\(dtype) M \(M) K \(K) N \(N) transW \(transW) beta \(beta)")
            }
        }
    }
}

/// The KV cache in bf16 (`kvCacheDType`) against transformers with each
/// block's keys and values rounded to bf16 as c_attn produces them
/// (Fixtures/lowp/expected-kv-bf16: gpt2-a's F32 weights).
@Suite struct BF16KVCacheTests {
    private static func model() throws -> Model {
        try Model.load(directory: Fixtures.path("gpt2-a"), kvCacheDType: .bf16)
    }

    /// Prefill (keys and values converted from the cache for the F32 path), decode
    /// (the bf16 matrix–vector kernels) and a prefill cut in two: every position's logits.
    @Test func cachedLogitsMatchTransformers() throws {
        let model = try Self.model()
        let exp = try SafeTensorsFile(path: Fixtures.path("lowp/expected-kv-bf16.safetensors"))
        let f32 = try Model.load(directory: Fixtures.path("gpt2-a"))
        for k in 0..<4 {
            let ids = try exp.ints("seq\(k).ids").tokenIDs
            let want = try exp.floats("seq\(k).logits")
            let whole = try InferenceSession(model: model, batch: 1, capacity: ids.count)
            #expect(whole.kvCacheDType == .bf16)
            let prefill = try whole.forward(ids, batch: 1, lastOnly: false)
            #expect(maxAbsDiff(prefill, want) < logitsTolerance, "seq\(k) (T=\(ids.count)) prefill")
            let split = min(5, ids.count)
            let stepwise = try InferenceSession(model: model, batch: 1, capacity: ids.count)
            var got = try stepwise.forward(Array(ids[0..<split]), batch: 1, lastOnly: false)
            for t in split..<ids.count { got += try stepwise.forward([ids[t]], batch: 1, lastOnly: false) }
            #expect(maxAbsDiff(got, want) < logitsTolerance, "seq\(k) (T=\(ids.count)) decode")
            if k == 3 {
                // The rounding is real: an F32 cache gives other logits.
                let exact = try InferenceSession(model: f32, batch: 1, capacity: ids.count)
                #expect(maxAbsDiff(try exact.forward(ids, batch: 1, lastOnly: false), prefill) > 10 * logitsTolerance)
            }
        }
        for side in ["left", "right"] {
            let ids = try exp.ints("batch_\(side).ids").tokenIDs
            let mask = try exp.ints("batch_\(side).mask").map { Int32($0) }
            let shape = try #require(exp["batch_\(side).ids"]).shape
            let session = try InferenceSession(model: model, batch: shape[0], capacity: shape[1])
            var got = try session.forward(ids, batch: shape[0], attentionMask: mask, lastOnly: false)
            let V = model.config.vocabSize
            for r in 0..<mask.count where mask[r] == 0 { for v in 0..<V { got[r * V + v] = 0 } }
            #expect(maxAbsDiff(got, try exp.floats("batch_\(side).logits")) < logitsTolerance, "\(side) padding")
        }
    }

    /// Greedy text through generate and the engine (whole prompts and prompts cut into chunks of 2).
    @Test func greedyGenerationMatchesTransformers() throws {
        let model = try Self.model()
        let (requests, wants) = try Fixtures.greedyRequests(
            SafeTensorsFile(path: Fixtures.path("lowp/expected-kv-bf16.safetensors")))
        for (k, q) in requests.enumerated() {
            #expect(try q.prompt + model.generate(prompt: q.prompt, params: q.params).tokens == wants[k], "greedy\(k)")
        }
        for tokensPerStep in [512, 2] {
            var p = EngineParams()
            p.maxSequences = 2
            p.maxTokensPerStep = tokensPerStep
            let engine = try Engine(model: model, params: p)
            #expect(engine.kvCacheDType == .bf16)
            for (k, r) in try engine.generate(requests).enumerated() {
                #expect(requests[k].prompt + r.tokens == wants[k], "engine greedy\(k), \(tokensPerStep) tokens a step")
            }
        }
    }

    /// Only f32 and bf16 hold a KV cache; a session keeps the dtype it was created with.
    @Test func otherDTypesAreRefused() throws {
        for d in [WeightDType.f16, .q8_0] {
            #expect(throws: LoRAError.self) { try Model.load(directory: Fixtures.path("gpt2-a"), kvCacheDType: d) }
        }
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        #expect(model.kvCacheDType == .f32)
        #expect(throws: LoRAError.self) { try model.setKVCacheDType(.q8_0) }
        #expect(model.kvCacheDType == .f32)
        let before = try InferenceSession(model: model, batch: 1, capacity: 4)
        try model.setKVCacheDType(.bf16)
        #expect(before.kvCacheDType == .f32)
        #expect(try InferenceSession(model: model, batch: 1, capacity: 4).kvCacheDType == .bf16)
        #expect(try model.converted(to: .bf16).kvCacheDType == .bf16)
    }
}
