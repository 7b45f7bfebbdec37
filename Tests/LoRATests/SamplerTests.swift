import Foundation
import Testing

@testable import LoRA

/// The sampler keeps its buffers per sequence and, with top_k below the
/// vocabulary, selects the k best with a heap instead of sorting all of
/// them: the token drawn must be the one the full sort gives, for every
/// setting and seed (the same candidates in the same order, the same sums).
@Suite struct SamplerTests {
    /// The sampler as it was before the heap: sort every candidate.
    static func fullSort(logits: [Float], history: [TokenID], params: SamplingParams, rng: inout SplitMix64) -> TokenID {
        var logits = logits
        let V = logits.count
        if params.repetitionPenalty != 1 {
            var seen = Set<TokenID>()
            for t in history where seen.insert(t).inserted && Int(t) < V {
                let v = logits[Int(t)]
                logits[Int(t)] = v < 0 ? v * params.repetitionPenalty : v / params.repetitionPenalty
            }
        }
        if params.temperature == 0 {
            var best = 0
            for i in 1..<V where logits[i] > logits[best] { best = i }
            return TokenID(best)
        }
        var idx = Array(0..<V)
        let inv = 1 / params.temperature
        for i in 0..<V { logits[i] *= inv }
        idx.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        var keep = V
        if params.topK > 0 { keep = min(keep, params.topK) }
        let mx = logits[idx[0]]
        var probs = [Double](repeating: 0, count: keep)
        var sum = 0.0
        for j in 0..<keep { let p = Foundation.exp(Double(logits[idx[j]] - mx)); probs[j] = p; sum += p }
        if params.topP < 1 {
            var cum = 0.0
            var cut = keep
            for j in 0..<keep {
                cum += probs[j] / sum
                if cum >= Double(params.topP) { cut = j + 1; break }
            }
            keep = max(1, cut)
            sum = probs[0..<keep].reduce(0, +)
        }
        var u = rng.nextDouble() * sum
        for j in 0..<keep {
            u -= probs[j]
            if u < 0 { return TokenID(idx[j]) }
        }
        return TokenID(idx[keep - 1])
    }

    @Test func heapSelectionDrawsWhatTheFullSortDraws() {
        var gen = SplitMix64(seed: 11)
        let V = 997
        var draws = 0
        var distinct = Set<TokenID>()
        for trial in 0..<40 {
            // Logits with ties (rounded to a coarse grid) so the index order matters.
            var logits = (0..<V).map { _ in Float(Int(gen.nextDouble() * 40) - 20) / 4 }
            if trial % 5 == 0 { logits = logits.map { $0 * 0.01 } }
            let history = (0..<12).map { _ in TokenID(Int(gen.nextDouble() * Double(V))) }
            var scratch = SamplerScratch()
            for topK in [0, 1, 2, 5, 40, V - 1, V, V + 5] {
                for (temperature, topP, penalty) in [(Float(0.7), Float(1), Float(1)), (1.3, 0.9, 1.2), (0.5, 0.3, 1)] {
                    var p = SamplingParams()
                    p.temperature = temperature; p.topK = topK; p.topP = topP; p.repetitionPenalty = penalty
                    var a = SplitMix64(seed: UInt64(trial * 1000 + topK))
                    var b = a
                    var l = logits
                    let got = Sampler.pick(logits: &l, history: history, params: p, rng: &a, scratch: &scratch)
                    let want = Self.fullSort(logits: logits, history: history, params: p, rng: &b)
                    #expect(got == want, "trial \(trial) top_k \(topK) T \(temperature) top_p \(topP): \(got) vs \(want)")
                    #expect(a == b)
                    draws += 1
                    distinct.insert(got)
                }
            }
        }
        #expect(draws == 40 * 8 * 3 && distinct.count > 50, "\(distinct.count) distinct tokens drawn")
    }
}
