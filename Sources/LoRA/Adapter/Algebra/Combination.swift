import Foundation

/// How `Adapter.combine` merges adapters (PEFT's add_weighted_adapter).
public enum CombinationMethod: Sendable, Equatable {
    /// Concatenate: rank Σr, exactly Σ wᵢ·ΔWᵢ.
    case cat
    /// Weighted sums of the A's and of the B's (ranks must be equal): not Σ wᵢ·ΔWᵢ when
    /// more than one adapter contributes (PEFT's `linear`, cross terms included).
    case linear
    /// Σ wᵢ·ΔWᵢ truncated to `rank` (default: the largest input rank) by SVD,
    /// optionally clamping the factors at the `clamp` quantile of their values.
    case svd(rank: Int?, clamp: Double?)
    /// PEFT's ties, dare_linear, dare_ties, magnitude_prune: the merge applied to
    /// the A's and to the B's (ranks must be equal, as `linear`).
    case taskMerge(TaskMerge)
    /// PEFT's ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd: the
    /// merge applied to the dense ΔWᵢ, then truncated to `rank` by SVD as `svd`.
    case taskMergeSVD(TaskMerge, rank: Int?, clamp: Double?)

    /// PEFT's combination_type name.
    public var peftName: String {
        switch self {
        case .cat: return "cat"
        case .linear: return "linear"
        case .svd: return "svd"
        case .taskMerge(let m): return m.kind.rawValue
        case .taskMergeSVD(let m, _, _): return m.kind.rawValue + "_svd"
        }
    }
}

extension Adapter {
    /// Combines adapters of one base model into a new adapter with
    /// add_weighted_adapter's semantics. The result has lora_alpha = r
    /// (scaling 1) and no rsLoRA: PEFT 0.21 keeps use_rslora from the first
    /// adapter, which would scale its own result by 1/√r instead of 1 (PR
    /// #3449); we write use_rslora false so the file means what it holds.
    /// `svd` computes the SVD from the stacked factors (QR + a small SVD),
    /// never forming an out×in matrix; the *_svd task merges must form each
    /// ΔW, since pruning and sign election act on its entries.
    public static func combine(
        _ inputs: [(adapter: Adapter, weight: Double)], method: CombinationMethod,
        name: String = "combined"
    ) throws -> Adapter {
        guard let first = inputs.first?.adapter else { throw LoRAError.invalidArgument("no adapter to combine") }
        try BLAS.load()  // the products below (ΔW of the *_svd merges) run on OpenBLAS
        for (a, w) in inputs {
            try a.refuseDoRA("combining")
            guard a.modelConfig == first.modelConfig else {
                throw LoRAError.invalidArgument("adapters \(first.name) and \(a.name) were made for different base models")
            }
            guard w.isFinite else { throw LoRAError.invalidArgument("combination weights must be finite") }
            for i in 0..<a.params.count where !a.params.base[i].isFinite {
                throw LoRAError.numerical("adapter \(a.name) holds NaN or infinite weights")
            }
        }
        // PEFT's rank per adapter: max(r, rank_pattern values).
        let ranks = inputs.map { in_ in max(in_.adapter.config.r, in_.adapter.config.rankPattern.map(\.value).max() ?? 0) }
        let newRank: Int
        switch method {
        case .cat: newRank = ranks.reduce(0, +)
        case .linear, .taskMerge:
            guard Set(inputs.flatMap { $0.adapter.slots.map(\.r) }).count == 1 else {
                throw LoRAError.invalidArgument("\(method.peftName) combination needs the same rank in every module of every adapter")
            }
            if case .taskMerge(let m) = method { try m.validate() }
            newRank = ranks[0]
        case .svd(let k, let clamp), .taskMergeSVD(_, let k, let clamp):
            newRank = k ?? (ranks.max() ?? 1)
            guard newRank >= 1 else { throw LoRAError.invalidArgument("svd rank must be >= 1") }
            if let clamp {
                guard clamp.isFinite, clamp > 0, clamp <= 1 else { throw LoRAError.invalidArgument("svd clamp must be in (0, 1]") }
            }
            if case .taskMergeSVD(let m, _, _) = method { try m.validate() }
        }
        // DARE's masks: one generator for the whole combination, drawn in module order.
        var rng: SplitMix64
        switch method {
        case .taskMerge(let m), .taskMergeSVD(let m, _, _): rng = SplitMix64(seed: m.seed)
        default: rng = SplitMix64(seed: 0)
        }
        // The union of adapted modules.
        var modules: [(layer: Int, target: LoRATarget)] = []
        for (a, _) in inputs {
            for s in a.slots where !modules.contains(where: { $0.layer == s.layer && $0.target == s.target }) {
                modules.append((s.layer, s.target))
            }
        }
        modules.sort { ($0.layer, $0.target.rawValue) < ($1.layer, $1.target.rawValue) }
        var c = first.config
        c.r = newRank; c.loraAlpha = Double(newRank); c.useRSLoRA = false
        c.rankPattern = []; c.alphaPattern = []; c.layersToTransform = nil; c.excludeModules = nil
        c.targetModules = .names(modules.map { LoRATarget.moduleName(layer: $0.layer, $0.target) })
        c.initLoraWeights = .kaiming
        let out = try Adapter(config: c, modelConfig: first.modelConfig, name: name)
        for (layer, target) in modules {
            guard let ns = out.slot(layer: layer, target: target) else { continue }
            let contributions = inputs.compactMap { in_ in
                in_.adapter.slot(layer: layer, target: target).map { (in_.adapter, $0, in_.weight) }
            }
            let nA = out.A(ns)
            let nB = out.B(ns)
            let inF = ns.inFeatures
            let outF = ns.outFeatures
            switch method {
            case .cat:
                var row = 0
                for (a, s, w) in contributions {
                    let f = Float(w) * s.scaling
                    for i in 0..<s.r { for j in 0..<inF { nA[(row + i) * inF + j] = a.A(s)[i * inF + j] * f } }
                    for o in 0..<outF { for i in 0..<s.r { nB[o * newRank + row + i] = a.B(s)[o * s.r + i] } }
                    row += s.r
                }
            case .linear:
                for (a, s, w) in contributions {
                    let (wA, wB) = factorWeights(w, s)
                    for i in 0..<s.countA { nA[i] += wA * a.A(s)[i] }
                    for i in 0..<s.countB { nB[i] += wB * a.B(s)[i] }
                }
            case .svd(_, let clamp):
                try svdCombine(contributions, rank: newRank, clamp: clamp, into: ns, of: out)
            case .taskMerge(let m):
                taskMergeFactors(contributions, m, into: ns, of: out, rng: &rng)
            case .taskMergeSVD(let m, _, let clamp):
                try taskMergeSVD(contributions, m, rank: newRank, clamp: clamp, into: ns, of: out, rng: &rng)
            }
        }
        return out
    }

    /// Writes the best rank-k factors of Σ wᵢ·sᵢ·Bᵢ·Aᵢ into slot `ns` of `out`: A = Vh_k, B = U_k·S_k (PEFT's split).
    private static func svdCombine(_ parts: [(Adapter, LoRASlot, Double)], rank k: Int, clamp: Double?, into ns: LoRASlot, of out: Adapter)
        throws
    {
        let inF = ns.inFeatures
        let outF = ns.outFeatures
        let R = parts.reduce(0) { $0 + $1.1.r }
        guard R > 0 else { return }
        guard R <= min(inF, outF) else {
            throw LoRAError.unsupported("\(ns.moduleName): the stacked rank \(R) exceeds the module's dimensions")
        }
        // Bcat [out, R] with the weights folded in; AcatT [in, R].
        var bcat = [Float](repeating: 0, count: outF * R)
        var acatT = [Float](repeating: 0, count: inF * R)
        var col = 0
        for (a, s, w) in parts {
            let f = Float(w) * s.scaling
            for o in 0..<outF { for i in 0..<s.r { bcat[o * R + col + i] = a.B(s)[o * s.r + i] * f } }
            for i in 0..<s.r { for j in 0..<inF { acatT[j * R + col + i] = a.A(s)[i * inF + j] } }
            col += s.r
        }
        let (qb, rb) = try Linalg.qr(bcat, m: outF, n: R)
        let (qa, ra) = try Linalg.qr(acatT, m: inF, n: R)
        var core = [Float](repeating: 0, count: R * R)
        for i in 0..<R {
            for j in 0..<R {
                var acc: Float = 0
                for t in 0..<R { acc += rb[i * R + t] * ra[j * R + t] }
                core[i * R + j] = acc
            }
        }
        let svd = try Linalg.svd(core, m: R, n: R)
        let kk = min(k, R)
        // U_k·S_k [out, k] and Vh_k [k, in] (columns beyond R stay zero).
        var u = [Float](repeating: 0, count: outF * k)
        var vh = [Float](repeating: 0, count: k * inF)
        for j in 0..<kk {
            for o in 0..<outF {
                var acc: Float = 0
                for t in 0..<R { acc += qb[o * R + t] * svd.u[t * R + j] }
                u[o * k + j] = acc * svd.s[j]
            }
            for i in 0..<inF {
                var acc: Float = 0
                for t in 0..<R { acc += svd.vt[j * R + t] * qa[i * R + t] }
                vh[j * inF + i] = acc
            }
        }
        writeFactors(u: &u, vh: &vh, clamp: clamp, into: ns, of: out)
    }
}
