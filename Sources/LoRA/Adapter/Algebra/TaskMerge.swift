import Foundation

/// The task-arithmetic merges of PEFT's add_weighted_adapter (peft/utils/merge_utils.py):
/// TIES, DARE (linear and TIES) and magnitude pruning, with their density and
/// sign election.
public struct TaskMerge: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// Keep the top `density` of each tensor by magnitude, elect a sign per
        /// entry, average the weighted entries that agree with it.
        case ties
        /// Keep each entry with probability `density`, rescaled by 1/density; weighted sum.
        case dareLinear = "dare_linear"
        /// DARE's random pruning, then TIES's sign election and disjoint merge.
        case dareTies = "dare_ties"
        /// Keep the top `density` of each tensor by magnitude; weighted sum.
        case magnitudePrune = "magnitude_prune"
    }

    /// How TIES elects the sign of an entry: the sign of the sum of the
    /// (pruned) values, or of the sum of their signs.
    public enum MajoritySignMethod: String, Sendable, CaseIterable {
        case total, frequency
    }

    public var kind: Kind
    /// The fraction of entries kept, in (0, 1] (1 keeps all, as PEFT).
    public var density: Double
    public var majoritySignMethod: MajoritySignMethod
    /// Seed of DARE's random masks (liblora's own generator: PEFT's come
    /// from torch's, so DARE results match PEFT in distribution only).
    public var seed: UInt64

    public init(kind: Kind, density: Double, majoritySignMethod: MajoritySignMethod = .total, seed: UInt64 = 0) {
        self.kind = kind
        self.density = density
        self.majoritySignMethod = majoritySignMethod
        self.seed = seed
    }

    func validate() throws {
        guard density.isFinite, density > 0, density <= 1 else {
            throw LoRAError.invalidArgument("density must be in (0, 1], got \(density)")
        }
    }

    /// Merges equally shaped task tensors with weights (PEFT's ties, dare_linear,
    /// dare_ties, magnitude_prune on one stack of tensors), in float32 as PEFT.
    func merge(_ tasks: [[Float]], weights: [Float], rng: inout SplitMix64) -> [Float] {
        let n = tasks.first?.count ?? 0
        var pruned = tasks
        switch kind {
        case .ties, .magnitudePrune:
            for i in pruned.indices { TaskMerge.magnitudePrune(&pruned[i], density: density) }
        case .dareLinear, .dareTies:
            for i in pruned.indices { TaskMerge.randomPrune(&pruned[i], density: density, rng: &rng) }
        }
        var out = [Float](repeating: 0, count: n)
        switch kind {
        case .magnitudePrune, .dareLinear:
            for (t, w) in zip(pruned, weights) { for j in 0..<n { out[j] += t[j] * w } }
        case .ties, .dareTies:
            // Sign election on the unweighted pruned values, then the mean of the
            // weighted values that carry the elected sign (zeros never do).
            for j in 0..<n {
                var votes: Float = 0
                for t in pruned {
                    let v = t[j]
                    votes += majoritySignMethod == .total ? v : (v > 0 ? 1 : (v < 0 ? -1 : 0))
                }
                let elected: Float = votes >= 0 ? 1 : -1
                var sum: Float = 0
                var kept: Float = 0
                for (t, w) in zip(pruned, weights) {
                    let v = t[j]
                    let sign: Float = v > 0 ? 1 : (v < 0 ? -1 : 0)
                    if sign == elected { sum += v * w; kept += 1 }
                }
                out[j] = sum / max(kept, 1)
            }
        }
        return out
    }

    /// Keeps the int(density·n) entries of largest magnitude (torch.topk's set), zeroes the rest.
    static func magnitudePrune(_ t: inout [Float], density: Double) {
        if density >= 1 { return }
        let k = Int(density * Double(t.count))
        let order = t.indices.sorted { abs(t[$0]) != abs(t[$1]) ? abs(t[$0]) > abs(t[$1]) : $0 < $1 }
        for i in order[k...] { t[i] = 0 }
    }

    /// Keeps each entry with probability density, dividing kept ones by density (DARE).
    static func randomPrune(_ t: inout [Float], density: Double, rng: inout SplitMix64) {
        if density >= 1 { return }
        let d = Float(density)
        for i in t.indices { t[i] = Double(rng.nextFloat()) < density ? t[i] / d : 0 }
    }
}

extension Adapter {
    /// PEFT's non-SVD task merges (ties, dare_linear, dare_ties,
    /// magnitude_prune): the A's and the B's are merged as two stacks, with
    /// weights √|w·s|·sign(w·s) for A and √|w·s| for B. Equal ranks needed.
    static func taskMergeFactors(
        _ parts: [(Adapter, LoRASlot, Double)], _ m: TaskMerge, into ns: LoRASlot,
        of out: Adapter, rng: inout SplitMix64
    ) {
        var wA: [Float] = []
        var wB: [Float] = []
        var As: [[Float]] = []
        var Bs: [[Float]] = []
        for (a, s, w) in parts {
            let (fa, fb) = factorWeights(w, s)
            wA.append(fa)
            wB.append(fb)
            As.append(Array(UnsafeBufferPointer(start: a.A(s), count: s.countA)))
            Bs.append(Array(UnsafeBufferPointer(start: a.B(s), count: s.countB)))
        }
        let mA = m.merge(As, weights: wA, rng: &rng)
        let mB = m.merge(Bs, weights: wB, rng: &rng)
        out.A(ns).update(from: mA, count: ns.countA)
        out.B(ns).update(from: mB, count: ns.countB)
    }

    /// PEFT's *_svd task merges: each ΔWᵢ = sᵢ·Bᵢ·Aᵢ [out, in] densely, merged
    /// with the weights wᵢ, then truncated to `rank` by SVD (B = U_k·S_k, A = Vh_k).
    static func taskMergeSVD(
        _ parts: [(Adapter, LoRASlot, Double)], _ m: TaskMerge, rank k: Int, clamp: Double?,
        into ns: LoRASlot, of out: Adapter, rng: inout SplitMix64
    ) throws {
        let inF = ns.inFeatures
        let outF = ns.outFeatures
        var deltas: [[Float]] = []
        var weights: [Float] = []
        for (a, s, w) in parts {
            var d = [Float](repeating: 0, count: outF * inF)
            d.withUnsafeMutableBufferPointer { dp in
                gemm(
                    transA: false, transB: false, M: outF, N: inF, K: s.r, alpha: s.scaling, A: a.B(s), lda: s.r,
                    B: a.A(s), ldb: inF, beta: 0, C: dp.baseAddress!, ldc: inF)
            }
            deltas.append(d)
            weights.append(Float(w))
        }
        let merged = m.merge(deltas, weights: weights, rng: &rng)
        let svd = try Linalg.svd(merged, m: outF, n: inF)
        let kk = min(k, svd.k)
        var u = [Float](repeating: 0, count: outF * k)
        var vh = [Float](repeating: 0, count: k * inF)
        for j in 0..<kk {
            for o in 0..<outF { u[o * k + j] = svd.u[o * svd.k + j] * svd.s[j] }
            for i in 0..<inF { vh[j * inF + i] = svd.vt[j * inF + i] }
        }
        writeFactors(u: &u, vh: &vh, clamp: clamp, into: ns, of: out)
    }

    /// PEFT's weights of the A and B factors in linear and the factor task
    /// merges: √|w·s|·sign(w·s) for A, √|w·s| for B.
    static func factorWeights(_ w: Double, _ s: LoRASlot) -> (Float, Float) {
        let ws = w * Double(s.scaling)
        return (Float(ws.magnitude.squareRoot() * (ws >= 0 ? 1 : -1)), Float(ws.magnitude.squareRoot()))
    }

    /// Writes truncated-SVD factors into slot `ns` of `out`: A = Vh_k [k, in],
    /// B = U_k·S_k [out, k], clamped first at the `clamp` quantile when given.
    static func writeFactors(u: inout [Float], vh: inout [Float], clamp: Double?, into ns: LoRASlot, of out: Adapter) {
        if let clamp { clampAtQuantile(&u, &vh, clamp) }
        out.A(ns).update(from: vh, count: vh.count)
        out.B(ns).update(from: u, count: u.count)
    }

    /// torch.quantile (linear interpolation) of all values of U and Vh, both clamped to ±q.
    static func clampAtQuantile(_ u: inout [Float], _ vh: inout [Float], _ clamp: Double) {
        let all = (u + vh).sorted()
        let pos = clamp * Double(all.count - 1)
        let lo = Int(pos.rounded(.down))
        let hi = min(lo + 1, all.count - 1)
        let q = Float(Double(all[lo]) + (Double(all[hi]) - Double(all[lo])) * (pos - Double(lo)))
        for i in 0..<u.count { u[i] = min(max(u[i], -q), q) }
        for i in 0..<vh.count { vh[i] = min(max(vh[i], -q), q) }
    }
}
