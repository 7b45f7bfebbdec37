import Foundation

extension Adapter {
    /// A LoRA adapter that approximates a full fine-tune: for each chosen
    /// module, the truncated SVD of ΔW = W_tuned − W_base (as PEFT's
    /// [out, in]), B = U_k·S_k and A = V_kᵀ with lora_alpha = r (scaling 1).
    /// Ranks: `.fixed(k)` or, per module, the smallest rank keeping an energy
    /// fraction (then written as rank_pattern/alpha_pattern). The reports give
    /// each module's retained energy and relative Frobenius error. With
    /// `loraBias`, the adapter also carries each module's bias change
    /// (PEFT's lora_bias, b = (bias_tuned − bias_base) / scaling), so merging
    /// it gives the tuned biases exactly (to float rounding).
    public static func extract(
        base: Model, tuned: Model, targetModules: LoRAConfig.Targets = .names(["c_attn"]),
        rank: RankTarget, loraBias: Bool = false, name: String = "extracted"
    ) throws -> (Adapter, [CompressionReport]) {
        guard base.config == tuned.config else { throw LoRAError.invalidArgument("the base and tuned models have different configs") }
        var probe = LoRAConfig()
        probe.targetModules = targetModules
        probe.r = 1
        let modules = try LoRATargeting.resolve(probe, model: base.config)
        try rank.validate()
        var factors: [(layer: Int, target: LoRATarget, k: Int, svd: SVDResult)] = []
        var reports: [CompressionReport] = []
        for (layer, target, _, _) in modules {
            let (inF, outF) = target.shape(base.config)
            let wb = base.weightMatrix(layer: layer, target: target).dequantized()
            let wt = tuned.weightMatrix(layer: layer, target: target).dequantized()
            var delta = [Float](repeating: 0, count: outF * inF)
            for i in 0..<inF { for o in 0..<outF { delta[o * inF + i] = wt[i * outF + o] - wb[i * outF + o] } }
            let svd = try Linalg.svd(delta, m: outF, n: inF)
            let name = LoRATarget.moduleName(layer: layer, target)
            if case .fixed(let k) = rank, k > svd.k { throw LoRAError.invalidArgument("rank \(k) exceeds the dimensions of \(name)") }
            let report = rank.pick(svd.s, limit: svd.k, moduleName: name, oldRank: svd.k)
            reports.append(report)
            let k = report.newRank
            factors.append((layer, target, k, svd))
        }
        var c = LoRAConfig()
        c.setRanks(factors.map { (LoRATarget.moduleName(layer: $0.layer, $0.target), $0.k) })
        c.loraBias = loraBias
        c.baseModelNameOrPath = base.directory
        let out = try Adapter(config: c, modelConfig: base.config, name: name)
        for f in factors {
            guard let s = out.slot(layer: f.layer, target: f.target), s.r == f.k else { continue }
            let n = f.svd.n
            let kk = f.svd.k
            for j in 0..<f.k {
                for o in 0..<s.outFeatures { out.B(s)[o * f.k + j] = f.svd.u[o * kk + j] * f.svd.s[j] }
                for i in 0..<s.inFeatures { out.A(s)[j * s.inFeatures + i] = f.svd.vt[j * n + i] }
            }
            if let b = out.loraBias(s) {
                let bb = base.biasPointer(layer: f.layer, target: f.target)
                let bt = tuned.biasPointer(layer: f.layer, target: f.target)
                for o in 0..<s.outFeatures { b[o] = (bt[o] - bb[o]) / s.scaling }
            }
        }
        return (out, reports)
    }
}
