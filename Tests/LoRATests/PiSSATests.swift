import Foundation
import LoRA
import Testing

/// Step-0 logits of a PiSSA/OLoRA model (residual base + A0, B0) against the
/// base: only float32 rounding of W_res + s·B·A versus W separates them
/// (measured ≤ 3e-6 on gpt2-a, PEFT's own gap is 2.7e-6).
private let stepZeroTolerance: Float = 1e-5
/// Our PiSSA factors against PEFT's, after fixing each singular pair's sign:
/// two float32 SVDs (LAPACK sgesdd here, torch's there) agree to rounding
/// amplified by the singular-value gaps (σ_5/σ_4 is 0.94–0.99 on gpt2-a);
/// measured ≤ 8.6e-6 on the factors and ≤ 4.8e-6 on s·B·A.
private let pissaFactorTolerance: Float = 5e-5

@Suite struct PiSSATests {
    let config: GPT2Config
    let expected: SafeTensorsFile
    let ids: [TokenID]
    init() throws {
        config = try GPT2Config.load(path: Fixtures.path("gpt2-a/config.json"))
        expected = try SafeTensorsFile(path: Fixtures.path("pissa/expected.safetensors"))
        ids = try expected.ints("ids").tokenIDs
    }

    func base() throws -> Model { try Model.load(directory: Fixtures.path("gpt2-a")) }
    func load(_ path: String) throws -> Adapter { try Adapter.load(directory: Fixtures.path(path), modelConfig: config) }

    static let allTargets: LoRAConfig.Targets = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])

    func fresh(
        _ initialization: LoRAConfig.Initialization, r: Int = 4, alpha: Double = 8, rslora: Bool = false,
        targets: LoRAConfig.Targets = allTargets, modelConfig: GPT2Config? = nil
    ) throws -> Adapter {
        var c = LoRAConfig()
        c.r = r; c.loraAlpha = alpha; c.useRSLoRA = rslora; c.targetModules = targets
        c.initLoraWeights = initialization
        return try Adapter(config: c, modelConfig: modelConfig ?? config)
    }

    static func initialization(_ name: String) throws -> LoRAConfig.Initialization {
        try #require(LoRAConfig.Initialization(peftName: name))
    }

    @Test(arguments: ["pissa", "pissa_niter_4", "olora"])
    func stepZeroLogitsAreUnchanged(initName: String) throws {
        let model = try base()
        let before = try model.logits(ids)
        let weightsBefore = Array(model.weights.block.buffer)
        let adapter = try fresh(try Self.initialization(initName))
        try adapter.initialize(from: model, seed: 7)
        // The base weights did change (a large part of W moved into the adapter)...
        #expect(maxAbsDiff(Array(model.weights.block.buffer), weightsBefore) > 0.1)
        #expect(adapter.initialParams != nil)
        // ...but residual + adapter computes what the base computed.
        try model.attach(adapter)
        let d = maxAbsDiff(try model.logits(ids), before)
        #expect(d < stepZeroTolerance, "\(initName): max |Δ logits| at step 0 = \(d)")
        // Disabling the adapter leaves the residual model: no longer the base.
        try model.setEnabled(adapter, false)
        #expect(maxAbsDiff(try model.logits(ids), before) > 1e-2)
    }

    /// PEFT's PiSSA (fixtures: `pissa/<case>/initial`) against ours, up to the
    /// sign of each singular-vector pair: the products s·B·A (sign-free) and
    /// the factors with the sign fixed per pair.
    @Test(arguments: ["pissa", "pissa_patterns", "pissa_rslora"])
    func pissaMatchesPEFTUpToSigns(caseName: String) throws {
        let peft = try load("pissa/\(caseName)/initial")
        #expect(peft.config.initLoraWeights == .pissa(niter: nil))
        let model = try base()
        let ours = try Adapter(config: peft.config, modelConfig: config)
        try ours.initialize(from: model, seed: 1)
        #expect(ours.slots == peft.slots)
        for (s, p) in zip(ours.slots, peft.slots) {
            let inF = s.inFeatures
            let outF = s.outFeatures
            let r = s.r
            let mine = product(ours, s)
            let theirs = product(peft, p)
            #expect(maxAbsDiff(mine, theirs) < pissaFactorTolerance, "\(s.moduleName): max |Δ(s·B·A)| = \(maxAbsDiff(mine, theirs))")
            var worstA: Float = 0
            var worstB: Float = 0
            var worstAbs: Float = 0
            for j in 0..<r {
                var dot: Float = 0
                for i in 0..<inF { dot += ours.A(s)[j * inF + i] * peft.A(p)[j * inF + i] }
                let sign: Float = dot < 0 ? -1 : 1
                for i in 0..<inF {
                    let x = ours.A(s)[j * inF + i]
                    let y = peft.A(p)[j * inF + i]
                    worstA = max(worstA, abs(sign * x - y)); worstAbs = max(worstAbs, abs(abs(x) - abs(y)))
                }
                for o in 0..<outF {
                    let x = ours.B(s)[o * r + j]
                    let y = peft.B(p)[o * r + j]
                    worstB = max(worstB, abs(sign * x - y)); worstAbs = max(worstAbs, abs(abs(x) - abs(y)))
                }
            }
            #expect(
                worstA < pissaFactorTolerance && worstB < pissaFactorTolerance && worstAbs < pissaFactorTolerance,
                "\(s.moduleName): max |Δ| A \(worstA), B \(worstB), |values| \(worstAbs)")
        }
        // The residual model + our A0, B0 gives PEFT's step-0 logits.
        try model.attach(ours)
        #expect(maxAbsDiff(try model.logits(ids), try expected.floats("logits.\(caseName).init")) < logitsTolerance)
    }

    /// pissa_niter_N against the exact top-r part. Without oversampling (torch
    /// uses q = r) the randomized subspace converges like (σ_{r+1}/σ_r)^(2N+1):
    /// - on a spectrum halving at each step, N = 4: 0.5⁹ ≈ 2e-3, and the error
    ///   of the rank-r product is smaller by σ_r/σ_1 = 1/8 → 2.4e-4; with a
    ///   factor 4 for an unlucky Gaussian draw, 1e-3 (measured: 6e-7);
    /// - gpt2-a's weights are random (flat spectra, σ_{r+1}/σ_r 0.94–0.99),
    ///   where no r-dimensional subspace is much better than another: the
    ///   residual ‖W − s·B·A‖_F stays within 5% of the Eckart–Young optimum
    ///   (a numpy replica over 300 draws per module: median 1.008, max 1.027;
    ///   here ≤ 1.010).
    @Test func randomizedPiSSAApproximatesTheTopRPart() throws {
        // A c_attn weight with σ_i = 2^-i (layer 0), built as Q_U·diag(σ)·Q_Vᵀ.
        let model = try base()
        let inF = config.nEmbd
        let outF = 3 * config.nEmbd
        var rng = SplitMix64(seed: 99)
        let qu = try Linalg.qr((0..<outF * inF).map { _ in rng.nextGaussian() }, m: outF, n: inF).q  // [out, in]
        let qv = try Linalg.qr((0..<inF * inF).map { _ in rng.nextGaussian() }, m: inF, n: inF).q  // [in, in]
        let conv = try #require(model.weights.layers[0].attnW.f32)
        for i in 0..<inF {
            for o in 0..<outF {
                var acc: Float = 0
                for k in 0..<inF { acc += qu[o * inF + k] * Float(pow(0.5, Double(k))) * qv[i * inF + k] }
                conv[i * outF + o] = acc
            }
        }
        let snapshot = Array(model.weights.block.buffer)
        func topPart(_ initName: String) throws -> [Float] {
            model.weights.block.base.update(from: snapshot, count: snapshot.count)
            let a = try fresh(try Self.initialization(initName), targets: .names(["transformer.h.0.attn.c_attn"]))
            try a.initialize(from: model, seed: 5)
            return product(a, a.slots[0])
        }
        let exact = try topPart("pissa")
        let fast = try topPart("pissa_niter_4")
        let rel = frobenius(zip(exact, fast).map { $0 - $1 }) / frobenius(exact)
        #expect(rel < 1e-3, "decaying spectrum: ‖P_niter − P_exact‖/‖P_exact‖ = \(rel)")

        // gpt2-a as it is: residual norms against the optimum.
        let plain = try base()
        let a = try fresh(.pissa(niter: 4))
        try a.initialize(from: try base(), seed: 5)
        for s in a.slots {
            let w = denseWeight(plain, s)
            let svd = try Linalg.svd(w, m: s.outFeatures, n: s.inFeatures)
            let optimum = svd.s.dropFirst(s.r).reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
            let residual = frobenius(zip(w, product(a, s)).map { $0 - $1 })
            #expect(residual <= 1.05 * optimum, "\(s.moduleName): ‖W − s·B·A‖ = \(residual), optimum \(optimum)")
            #expect(residual >= optimum * (1 - 1e-5), "\(s.moduleName): better than Eckart–Young?")
        }
    }

    /// OLoRA as PEFT defines it on W [out, in]: B = Q[:, :r] (orthonormal
    /// columns), A = R[:r] (upper trapezoidal), so the first r columns of W
    /// equal those of B·A. PEFT 0.21 takes W in Conv1D's [in, out] layout
    /// instead; this pins the orientation.
    @Test func oloraFactorsTheTransposedConv1DWeight() throws {
        let model = try base()
        let a = try fresh(.olora)
        let plain = try base()
        try a.initialize(from: model, seed: 0)
        for s in a.slots {
            let r = s.r
            let inF = s.inFeatures
            let outF = s.outFeatures
            for j in 0..<r { for i in 0..<min(j, inF) { #expect(a.A(s)[j * inF + i] == 0) } }
            var worstOrtho: Float = 0
            for j in 0..<r {
                for k in 0..<r {
                    var dot: Float = 0
                    for o in 0..<outF { dot += a.B(s)[o * r + j] * a.B(s)[o * r + k] }
                    worstOrtho = max(worstOrtho, abs(dot - (j == k ? 1 : 0)))
                }
            }
            #expect(worstOrtho < 1e-5, "\(s.moduleName): BᵀB − I = \(worstOrtho)")
            let w = denseWeight(plain, s)
            let p = product(a, s)
            var worst: Float = 0
            for o in 0..<outF { for j in 0..<r { worst = max(worst, abs(p[o * inF + j] / s.scaling - w[o * inF + j])) } }
            #expect(worst < 1e-5, "\(s.moduleName): the first r columns of B·A differ from W's by \(worst)")
        }
    }

    /// PEFT's trained PiSSA adapter converted with PEFT's initial one, by us:
    /// the same bytes as PEFT's converted adapter (cat and negation are exact),
    /// and on the original base the logits of residual + trained adapter.
    @Test(arguments: ["pissa", "pissa_patterns", "pissa_rslora"])
    func conversionOfPEFTsAdapterIsPEFTs(caseName: String) throws {
        let trained = try load("pissa/\(caseName)/trained")
        let initial = try load("pissa/\(caseName)/initial")
        let conv = try trained.convertedForOriginalBase(initial: initial)
        let c = trained.config
        #expect(conv.config.r == 2 * c.r)
        #expect(conv.config.loraAlpha == (c.useRSLoRA ? c.loraAlpha * 2.0.squareRoot() : 2 * c.loraAlpha))
        #expect(conv.config.rankPattern.map(\.value) == c.rankPattern.map { 2 * $0.value })
        #expect(conv.config.initLoraWeights == .kaiming)
        for (s, n) in zip(trained.slots, conv.slots) {
            #expect(n.moduleName == s.moduleName && n.r == 2 * s.r && abs(n.scaling - s.scaling) <= 1e-6 * s.scaling)
        }
        let dir = try Fixtures.tempDir()
        try conv.save(directory: dir)
        let peftDir = Fixtures.path("pissa/\(caseName)/converted/")
        let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + Adapter.weightsFile))
        #expect(
            ours == (try Data(contentsOf: URL(fileURLWithPath: peftDir + Adapter.weightsFile))), "\(caseName): tensors differ from PEFT's")
        // adapter_config.json byte for byte, but for target_modules' order: PEFT writes a set,
        // whose order changes even between two saves in one process (deepcopy rebuilds it).
        let peftConfig = try LoRAConfig.load(path: peftDir + Adapter.configFile)
        var mine = conv.config
        mine.targetModules = peftConfig.targetModules
        #expect(Set(targetNames(mine)) == Set(targetNames(conv.config)))
        let peftBytes = try String(contentsOfFile: peftDir + Adapter.configFile, encoding: .utf8)
        #expect(mine.json() == peftBytes, "\(caseName): adapter_config.json differs from PEFT's:\n\(mine.json())")
        // On the original base.
        let model = try base()
        try model.attach(try Adapter.load(directory: dir, modelConfig: config))
        let logits = try model.logits(ids)
        #expect(maxAbsDiff(logits, try expected.floats("logits.\(caseName).converted")) < logitsTolerance)
        #expect(maxAbsDiff(logits, try expected.floats("logits.\(caseName).trained")) < logitsTolerance)
        // The raw PiSSA adapter saves with its init value, as PEFT's does.
        let raw = try Fixtures.tempDir()
        try trained.save(directory: raw)
        #expect(
            try String(contentsOfFile: raw + "/" + Adapter.configFile, encoding: .utf8)
                == String(contentsOfFile: Fixtures.path("pissa/\(caseName)/trained/" + Adapter.configFile), encoding: .utf8))
    }

    /// Our own init, "trained" (perturbed deterministically), converted and
    /// loaded back onto the unmodified base: the logits of residual + adapter.
    /// With LORA_EXPORT_OLORA=DIR, the OLoRA case also writes its converted
    /// adapter and logits to DIR for `scripts/make_pissa_fixtures.py --check-olora DIR`.
    @Test(arguments: [("pissa", false), ("pissa_niter_4", false), ("olora", false), ("pissa", true), ("olora", true)])
    func convertedAdapterReproducesTheResidualModelOnTheOriginalBase(initName: String, rslora: Bool) throws {
        let residual = try base()
        let adapter = try fresh(try Self.initialization(initName), r: 3, alpha: 5, rslora: rslora)
        try adapter.initialize(from: residual, seed: 11)
        var rng = SplitMix64(seed: 3)
        for i in 0..<adapter.params.count { adapter.params.base[i] += 0.05 * rng.nextGaussian() }
        try residual.attach(adapter)
        let target = try residual.logits(ids)
        #expect(maxAbsDiff(target, try base().logits(ids)) > 1e-2, "the perturbation should move the logits")

        let conv = try adapter.convertedForOriginalBase()
        #expect(conv.config.r == 6 && conv.config.initLoraWeights == .kaiming)
        #expect(conv.config.loraAlpha == (rslora ? 5 * 2.0.squareRoot() : 10))
        let dir = try Fixtures.tempDir()
        try conv.save(directory: dir)
        let original = try base()
        let reloaded = try Adapter.load(directory: dir, modelConfig: config)
        try original.attach(reloaded)
        let logits = try original.logits(ids)
        let d = maxAbsDiff(logits, target)
        #expect(d < logitsTolerance, "\(initName) rslora \(rslora): max |Δ| = \(d)")

        if initName == "olora", !rslora, let out = ProcessInfo.processInfo.environment["LORA_EXPORT_OLORA"], !out.isEmpty {
            try conv.save(directory: out)
            try SafeTensorsWriter.write(
                [
                    TensorData(
                        name: "ids", dtype: .I64, shape: [ids.count],
                        bytes: ids.flatMap { withUnsafeBytes(of: Int64($0).littleEndian, Array.init) }),
                    TensorData(name: "logits", shape: [ids.count, config.vocabSize], floats: target),
                ],
                to: out + "/expected.safetensors")
        }
    }

    /// rsLoRA with rank/alpha patterns: PEFT refuses to convert it; alpha and
    /// the alpha_pattern values times √2 keep every module's scaling.
    @Test func rsLoRAWithPatternsConvertsToo() throws {
        var c = LoRAConfig()
        c.r = 4; c.loraAlpha = 6; c.useRSLoRA = true; c.targetModules = Self.allTargets
        c.rankPattern = [("attn.c_proj", 2), ("h.1.mlp.c_fc", 6)]; c.alphaPattern = [("mlp.c_proj", 3.5)]
        c.initLoraWeights = .pissa(niter: 3)
        let residual = try base()
        let a = try Adapter(config: c, modelConfig: config)
        try a.initialize(from: residual, seed: 4)
        var rng = SplitMix64(seed: 6)
        for i in 0..<a.params.count { a.params.base[i] += 0.05 * rng.nextGaussian() }
        try residual.attach(a)
        let conv = try a.convertedForOriginalBase()
        #expect(conv.config.rankPattern.map(\.value) == [4, 12])
        #expect(conv.config.alphaPattern.map(\.value) == [3.5 * 2.0.squareRoot()])
        for (s, n) in zip(a.slots, conv.slots) { #expect(n.r == 2 * s.r && abs(n.scaling - s.scaling) <= 1e-6 * s.scaling) }
        let original = try base()
        try original.attach(conv)
        #expect(maxAbsDiff(try original.logits(ids), try residual.logits(ids)) < logitsTolerance)
    }

    @Test func savedConfigsKeepTheInitValue() throws {
        for name in ["pissa", "pissa_niter_4", "olora"] {
            let a = try fresh(try Self.initialization(name))
            try a.initialize(from: try base(), seed: 1)
            let dir = try Fixtures.tempDir()
            try a.save(directory: dir)
            let o = try #require(try JSON.parse(Array(Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json")))).objectValue)
            #expect(o["init_lora_weights"] == .string(name))
            #expect(try Adapter.load(directory: dir, modelConfig: config).config.initLoraWeights == a.config.initLoraWeights)
            try a.convertedForOriginalBase().save(directory: dir)
            let c = try #require(try JSON.parse(Array(Data(contentsOf: URL(fileURLWithPath: dir + "/adapter_config.json")))).objectValue)
            #expect(c["init_lora_weights"] == .bool(true) && c["r"] == .number(JSONNumber(8)))
        }
    }

    @Test func badInputIsAnErrorAndChangesNothing() throws {
        // NaN in a base weight: named, and neither the model nor the adapter changes.
        let model = try base()
        try #require(model.weights.layers[1].fcW.f32)[7] = .nan
        let bits = model.weights.block.buffer.map(\.bitPattern)
        let a = try fresh(.pissa(niter: nil))
        expectError(contains: "transformer.h.1.mlp.c_fc") { try a.initialize(from: model, seed: 1) }
        expectError(contains: "NaN") { try a.initialize(from: model, seed: 1) }
        expectError(contains: "NaN") { try fresh(.olora).initialize(from: model, seed: 1) }
        #expect(model.weights.block.buffer.map(\.bitPattern) == bits)
        #expect(a.params.buffer.allSatisfy { $0 == 0 } && a.initialParams == nil)

        // r larger than min(in, out) = 48.
        for initialization in [LoRAConfig.Initialization.pissa(niter: nil), .pissa(niter: 2), .olora] {
            expectError(contains: "exceeds min(in, out) = 48") {
                try fresh(initialization, r: 49, targets: .names(["mlp.c_proj"])).initialize(from: try base(), seed: 1)
            }
        }
        // An adapter for another model shape.
        let other = try Model.load(directory: Fixtures.path("gpt2-b"))
        expectError(contains: "another model shape") { try fresh(.pissa(niter: nil)).initialize(from: other, seed: 1) }
        // PiSSA divides by the scaling.
        expectError(contains: "positive scaling") { try fresh(.pissa(niter: nil), alpha: 0).initialize(from: try base(), seed: 1) }
        expectError(contains: "positive scaling") { try fresh(.pissa(niter: 1), alpha: -4).initialize(from: try base(), seed: 1) }
        // The seed-only init refuses PiSSA/OLoRA.
        expectError(contains: "initialize(from:seed:)") { try fresh(.olora).initialize(seed: 1) }
        // Conversion needs initial weights that fit.
        expectError(contains: "no initial weights") { _ = try fresh(.pissa(niter: nil)).convertedForOriginalBase() }
        let trained = try load("pissa/pissa/trained")
        expectError(contains: "does not have the modules") {
            _ = try trained.convertedForOriginalBase(initial: try load("pissa/pissa_rslora/initial"))
        }
        let nan = try load("pissa/pissa/trained")
        nan.params.base[3] = .infinity
        expectError(contains: "NaN or infinite") { _ = try nan.convertedForOriginalBase(initial: try load("pissa/pissa/initial")) }
        let nanInitial = try load("pissa/pissa/initial")
        nanInitial.params.base[0] = .nan
        expectError(contains: "NaN or infinite") { _ = try trained.convertedForOriginalBase(initial: nanInitial) }
        // A merged adapter cannot be initialised again.
        let m = try base()
        let merged = try fresh(.pissa(niter: nil))
        try merged.initialize(from: m, seed: 1)
        try m.merge(merged)
        expectError(contains: "merged") { try merged.initialize(from: m, seed: 1) }
    }

    // MARK: helpers

    func targetNames(_ c: LoRAConfig) -> [String] {
        if case .names(let n)? = c.targetModules { return n }
        return []
    }

    func expectError(contains fragment: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("no error (expected one mentioning \(fragment))", sourceLocation: sourceLocation)
        } catch let e as LoRAError {
            #expect("\(e)".contains(fragment), "\(e)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("not a LoRAError: \(error)", sourceLocation: sourceLocation)
        }
    }
}

/// s·B·A as [out, in].
func product(_ a: Adapter, _ s: LoRASlot) -> [Float] {
    var p = [Float](repeating: 0, count: s.outFeatures * s.inFeatures)
    for o in 0..<s.outFeatures {
        for t in 0..<s.r {
            let b = s.scaling * a.B(s)[o * s.r + t]
            for i in 0..<s.inFeatures { p[o * s.inFeatures + i] += b * a.A(s)[t * s.inFeatures + i] }
        }
    }
    return p
}

/// A module's base weight as PEFT's [out, in].
func denseWeight(_ m: Model, _ s: LoRASlot) -> [Float] {
    let l = m.weights.layers[s.layer]
    let matrix: BaseMatrix
    switch s.target {
    case .attnCAttn: matrix = l.attnW
    case .attnCProj: matrix = l.attnProjW
    case .mlpCFC: matrix = l.fcW
    case .mlpCProj: matrix = l.mlpProjW
    }
    let conv = matrix.dequantized()
    var w = [Float](repeating: 0, count: s.outFeatures * s.inFeatures)
    for i in 0..<s.inFeatures { for o in 0..<s.outFeatures { w[o * s.inFeatures + i] = conv[i * s.outFeatures + o] } }
    return w
}

func frobenius(_ x: [Float]) -> Double { x.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot() }

@Suite struct LowRankLinalgTests {
    /// On a matrix of exact rank q the randomized SVD is exact (to float rounding), tall or wide.
    @Test(arguments: [(60, 20), (20, 60)])
    func svdLowRankIsExactOnRankQMatrices(m: Int, n: Int) throws {
        let q = 5
        var rng = SplitMix64(seed: 8)
        let left = (0..<m * q).map { _ in rng.nextGaussian() }
        let right = (0..<q * n).map { _ in rng.nextGaussian() }
        var a = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for t in 0..<q { a[i * n + j] += left[i * q + t] * right[t * n + j] } } }
        var g = SplitMix64(seed: 1)
        let d = try Linalg.svdLowRank(a, m: m, n: n, rank: q, niter: 2, rng: &g)
        #expect(d.u.count == m * q && d.s.count == q && d.vt.count == q * n)
        var back = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for t in 0..<q { back[i * n + j] += d.u[i * q + t] * d.s[t] * d.vt[t * n + j] } } }
        #expect(frobenius(zip(a, back).map { $0 - $1 }) / frobenius(a) < 1e-5)
        let dense = try Linalg.svd(a, m: m, n: n)
        for t in 0..<q { #expect(abs(d.s[t] - dense.s[t]) <= 1e-4 * dense.s[0]) }
        #expect(zip(d.s, d.s.dropFirst()).allSatisfy { $0 >= $1 })
        var rng2 = SplitMix64(seed: 1)
        #expect(throws: LoRAError.self) { try Linalg.svdLowRank(a, m: m, n: n, rank: min(m, n) + 1, niter: 1, rng: &rng2) }
        #expect(throws: LoRAError.self) { try Linalg.svdLowRank([.nan] + a.dropFirst(), m: m, n: n, rank: q, niter: 1, rng: &rng2) }
    }

    /// QR of a wide matrix (m < n): Q [m, m] orthogonal, R [m, n] upper trapezoidal, Q·R = A.
    @Test func qrOfAWideMatrix() throws {
        let m = 4
        let n = 9
        var rng = SplitMix64(seed: 2)
        let a = (0..<m * n).map { _ in rng.nextGaussian() }
        let (q, r) = try Linalg.qr(a, m: m, n: n)
        #expect(q.count == m * m && r.count == m * n)
        for i in 0..<m { for j in 0..<min(i, n) { #expect(r[i * n + j] == 0) } }
        var worst: Float = 0
        for i in 0..<m {
            for j in 0..<n {
                var acc: Float = 0
                for t in 0..<m { acc += q[i * m + t] * r[t * n + j] }
                worst = max(worst, abs(acc - a[i * n + j]))
            }
        }
        #expect(worst < 1e-5)
    }
}
