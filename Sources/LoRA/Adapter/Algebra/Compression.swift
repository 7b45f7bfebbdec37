import Foundation

/// What rank compression did to one module.
public struct CompressionReport: Sendable {
    public let moduleName: String
    public let oldRank: Int
    public let newRank: Int
    /// Σ_{i≤k} σᵢ² / Σ σᵢ² of ΔW = scale·B·A.
    public let retainedEnergy: Double
    /// ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F (the Eckart–Young optimum for rank k).
    public let relativeError: Double
    /// The singular values of ΔW (at most the old rank).
    public let singularValues: [Float]
}

public enum RankTarget: Sendable {
    /// The same rank k for every module.
    case fixed(Int)
    /// Per module, the smallest rank that keeps this fraction of ΔW's energy (Σσ²), in (0, 1].
    case energy(Double)
}

extension RankTarget {
    func validate() throws {
        switch self {
        case .fixed(let k): guard k >= 1 else { throw LoRAError.invalidArgument("rank must be >= 1, got \(k)") }
        case .energy(let e):
            guard e.isFinite, e > 0, e <= 1 else { throw LoRAError.invalidArgument("energy threshold must be in (0, 1], got \(e)") }
        }
    }

    /// The rank this target picks for singular values `s` (descending), at most `limit`,
    /// with the report of what it keeps.
    func pick(_ s: [Float], limit: Int, moduleName: String, oldRank: Int) -> CompressionReport {
        let sq = s.map { Double($0) * Double($0) }
        let total = sq.reduce(0, +)
        var k: Int
        switch self {
        case .fixed(let n): k = n
        case .energy(let e):
            k = limit
            var acc = 0.0
            for (i, v) in sq.enumerated() {
                acc += v
                if total == 0 || acc >= e * total - 1e-12 * total { k = i + 1; break }
            }
        }
        k = max(1, min(k, limit))
        let kept = sq.prefix(k).reduce(0, +)
        return CompressionReport(
            moduleName: moduleName, oldRank: oldRank, newRank: k,
            retainedEnergy: total > 0 ? kept / total : 1,
            relativeError: total > 0 ? max(0, (total - kept) / total).squareRoot() : 0,
            singularValues: Array(s.prefix(max(k, min(s.count, 64)))))
    }
}

extension LoRAConfig {
    /// Per-module ranks with scaling 1 everywhere: r (and lora_alpha) = the
    /// most common rank, the others as rank_pattern/alpha_pattern by full
    /// module name; explicit module names as targets.
    mutating func setRanks(_ ranks: [(moduleName: String, rank: Int)]) {
        let counts = Dictionary(ranks.map { ($0.rank, 1) }, uniquingKeysWith: +)
        let base = counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key < $1.key }?.key ?? 1
        r = base
        loraAlpha = Double(base)
        useRSLoRA = false
        rankPattern = []
        alphaPattern = []
        for (name, k) in ranks where k != base {
            rankPattern.append((name, k))
            alphaPattern.append((name, Double(k)))
        }
        targetModules = .names(ranks.map(\.moduleName))
        layersToTransform = nil
        excludeModules = nil
    }
}

extension Adapter {
    /// The best low-rank approximation of each module's ΔW = scale·B·A,
    /// computed without forming the out×in matrix: QR of B and of Aᵀ, SVD of
    /// the small r×r core, new A and B from the factors. The result has
    /// scaling 1 in every module (lora_alpha = r, per-module ranks written as
    /// rank_pattern/alpha_pattern) so PEFT loads it as it is.
    public func compressed(to target: RankTarget, name: String? = nil) throws -> (Adapter, [CompressionReport]) {
        try target.validate()
        try refuseDoRA("compressing")
        if case .fixed(let k) = target, let s = slots.first(where: { $0.r < k }) {
            throw LoRAError.invalidArgument("rank \(k) exceeds the rank \(s.r) of \(s.moduleName)")
        }
        // Factor every module.
        struct Factored { var slot: LoRASlot; var qb: [Float]; var qa: [Float]; var svd: SVDResult }
        var factored: [Factored] = []
        for s in slots {
            let r = s.r
            let b = Array(UnsafeBufferPointer(start: B(s), count: s.countB))  // [out, r]
            var at = [Float](repeating: 0, count: s.inFeatures * r)  // Aᵀ [in, r]
            let a = A(s)
            for i in 0..<r { for j in 0..<s.inFeatures { at[j * r + i] = a[i * s.inFeatures + j] } }
            guard s.outFeatures >= r, s.inFeatures >= r else {
                throw LoRAError.unsupported("\(s.moduleName): rank \(r) exceeds the module's dimensions")
            }
            let (qb, rb) = try Linalg.qr(b, m: s.outFeatures, n: r)
            let (qa, ra) = try Linalg.qr(at, m: s.inFeatures, n: r)
            // core = scaling · R_B · R_Aᵀ  [r, r]
            var core = [Float](repeating: 0, count: r * r)
            for i in 0..<r {
                for j in 0..<r {
                    var acc: Float = 0
                    for t in 0..<r { acc += rb[i * r + t] * ra[j * r + t] }
                    core[i * r + j] = s.scaling * acc
                }
            }
            factored.append(Factored(slot: s, qb: qb, qa: qa, svd: try Linalg.svd(core, m: r, n: r)))
        }
        let reports = factored.map { target.pick($0.svd.s, limit: $0.slot.r, moduleName: $0.slot.moduleName, oldRank: $0.slot.r) }
        let ranks = reports.map(\.newRank)
        var c = config
        c.setRanks(reports.map { ($0.moduleName, $0.newRank) })
        let out = try Adapter(config: c, modelConfig: modelConfig, name: name ?? self.name)
        for (f, k) in zip(factored, ranks) {
            guard let ns = out.slot(layer: f.slot.layer, target: f.slot.target), ns.r == k, abs(ns.scaling - 1) < 1e-6 else {
                throw LoRAError.invalidArgument("internal: compressed module \(f.slot.moduleName) did not get rank \(k)")
            }
            let r = f.slot.r
            let nb = out.B(ns)
            let na = out.A(ns)
            // B' = Q_B · U_k · √Σ_k  [out, k];  A' = √Σ_k · V_kᵀ · Q_Aᵀ  [k, in]
            for j in 0..<k {
                let root = f.svd.s[j].squareRoot()
                for o in 0..<ns.outFeatures {
                    var acc: Float = 0
                    for t in 0..<r { acc += f.qb[o * r + t] * f.svd.u[t * r + j] }
                    nb[o * k + j] = acc * root
                }
                for i in 0..<ns.inFeatures {
                    var acc: Float = 0
                    for t in 0..<r { acc += f.svd.vt[j * r + t] * f.qa[i * r + t] }
                    na[j * ns.inFeatures + i] = acc * root
                }
            }
        }
        return (out, reports)
    }
}
