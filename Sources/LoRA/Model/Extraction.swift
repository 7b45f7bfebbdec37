import Foundation

extension Adapter {
    /// A LoRA adapter that approximates a full fine-tune: for each chosen
    /// module, the truncated SVD of ΔW = W_tuned − W_base (as PEFT's
    /// [out, in]), B = U_k·S_k and A = V_kᵀ with lora_alpha = r (scaling 1).
    /// Ranks: `.fixed(k)` or, per module, the smallest rank keeping an energy
    /// fraction (then written as rank_pattern/alpha_pattern). The reports give
    /// each module's retained energy and relative Frobenius error.
    public static func extract(base: Model, tuned: Model, targetModules: LoraConfig.Targets = .names(["c_attn"]),
                               rank: RankTarget, name: String = "extracted") throws -> (Adapter, [CompressionReport]) {
        guard base.config == tuned.config else { throw LoraError.invalidArgument("the base and tuned models have different configs") }
        var probe = LoraConfig()
        probe.targetModules = targetModules
        probe.r = 1
        let modules = try LoraTargeting.resolve(probe, model: base.config)
        let cap: Int
        switch rank {
        case .fixed(let k):
            guard k >= 1 else { throw LoraError.invalidArgument("rank must be >= 1") }
            cap = k
        case .energy(let e):
            guard e.isFinite, e > 0, e <= 1 else { throw LoraError.invalidArgument("energy threshold must be in (0, 1]") }
            cap = Int.max
        }
        var factors: [(layer: Int, target: LoraTarget, k: Int, svd: SVDResult)] = []
        var reports: [CompressionReport] = []
        for (layer, target, _, _) in modules {
            let (inF, outF) = target.shape(base.config)
            let wb = base.weightPointer(layer: layer, target: target), wt = tuned.weightPointer(layer: layer, target: target)
            var delta = [Float](repeating: 0, count: outF * inF)
            for i in 0..<inF { for o in 0..<outF { delta[o * inF + i] = wt[i * outF + o] - wb[i * outF + o] } }
            let svd = try Linalg.svd(delta, m: outF, n: inF)
            let sq = svd.s.map { Double($0) * Double($0) }
            let total = sq.reduce(0, +)
            var k = min(cap, svd.k)
            if case .energy(let e) = rank {
                var acc = 0.0
                k = svd.k
                for (i, v) in sq.enumerated() {
                    acc += v
                    if total == 0 || acc >= e * total - 1e-12 * total { k = i + 1; break }
                }
            }
            guard k <= svd.k else { throw LoraError.invalidArgument("rank \(k) exceeds the dimensions of \(LoraTarget.moduleName(layer: layer, target))") }
            let kept = sq.prefix(k).reduce(0, +)
            reports.append(CompressionReport(moduleName: LoraTarget.moduleName(layer: layer, target), oldRank: svd.k, newRank: k,
                                             retainedEnergy: total > 0 ? kept / total : 1,
                                             relativeError: total > 0 ? max(0, (total - kept) / total).squareRoot() : 0,
                                             singularValues: Array(svd.s.prefix(max(k, min(svd.k, 64))))))
            factors.append((layer, target, k, svd))
        }
        let counts = Dictionary(factors.map { ($0.k, 1) }, uniquingKeysWith: +)
        let baseRank = counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key < $1.key }?.key ?? 1
        var c = LoraConfig()
        c.r = baseRank; c.loraAlpha = Double(baseRank)
        c.targetModules = .names(factors.map { LoraTarget.moduleName(layer: $0.layer, $0.target) })
        for f in factors where f.k != baseRank {
            let n = LoraTarget.moduleName(layer: f.layer, f.target)
            c.rankPattern.append((n, f.k)); c.alphaPattern.append((n, Double(f.k)))
        }
        c.baseModelNameOrPath = base.directory
        let out = try Adapter(config: c, modelConfig: base.config, name: name)
        for f in factors {
            guard let s = out.slot(layer: f.layer, target: f.target), s.r == f.k else { continue }
            let n = f.svd.n, kk = f.svd.k
            for j in 0..<f.k {
                for o in 0..<s.outFeatures { out.B(s)[o * f.k + j] = f.svd.u[o * kk + j] * f.svd.s[j] }
                for i in 0..<s.inFeatures { out.A(s)[j * s.inFeatures + i] = f.svd.vt[j * n + i] }
            }
        }
        return (out, reports)
    }
}
