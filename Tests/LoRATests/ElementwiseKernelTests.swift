import CLoraSupport
import Foundation
import Testing

@testable import LoRA

/// The element-wise C kernels exist in three instruction sets (baseline,
/// AVX2+FMA, AVX-512); each set this CPU can run is checked against
/// double-precision references, on lengths that exercise the vector tails.
@Suite struct ElementwiseKernelTests {
    static let levels: [Int32] = [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512]

    func sets() -> [(Int32, lb_kernel_set)] {
        Self.levels.compactMap { l in lb_kernels_for(l).map { (l, $0.pointee) } }
    }

    @Test func theBestSetIsInUse() {
        let level = lb_kernels_level()
        #expect(lb_kernels_for(level) != nil)
        // The CPU's best set: no higher level is runnable.
        for l in Self.levels where l > level { #expect(lb_kernels_for(l) == nil) }
        #expect(sets().count >= 1)
    }

    /// Dropout's masks are the same in every set, bit for bit, and are
    /// SplitMix64's outputs: element i of stream `key` from `first` is the
    /// generator seeded at key + first·φ, drawn i + 1 times.
    @Test func dropoutMasksAgreeAcrossSets() {
        let n = 1003
        let x = (0..<n).map { Float($0) * 0.01 - 3 }
        let key: UInt64 = 0x1234_5678_9abc_def0
        let first: UInt64 = 77
        let p: Float = 0.3
        let threshold = UInt64((p * 16_777_216).rounded(.up))
        let keep = 1 / (1 - p)
        var rng = SplitMix64(seed: key &+ first &* 0x9E37_79B9_7F4A_7C15 &- 0x9E37_79B9_7F4A_7C15)
        let ref = x.map { v -> Float in rng.next() >> 40 < threshold ? 0 : v * keep }
        #expect(ref.filter { $0 == 0 }.count > 250 && ref.filter { $0 == 0 }.count < 350)
        for (level, k) in sets() {
            var y = [Float](repeating: .nan, count: n)
            k.dropout(&y, x, n, key, first, threshold, keep)
            #expect(y == ref, "level \(level)")
        }
    }

    @Test func geluForwardAndBackward() {
        let n = 1001
        let x = (0..<n).map { Float($0 - 500) * 0.024 }  // -12 ... 12
        for (level, k) in sets() {
            var y = [Float](repeating: 0, count: n)
            k.gelu_tanh_forward(&y, x, n)
            var d = [Float](repeating: 0.5, count: n)
            k.gelu_tanh_backward(&d, x, n)
            var worstY = 0.0
            var worstD = 0.0
            for i in 0..<n {
                let v = Double(x[i])
                let c = (2 / Double.pi).squareRoot()
                let u = c * (v + 0.044715 * v * v * v)
                let t = Foundation.tanh(u)
                let ref = 0.5 * v * (1 + t)
                let dref = 0.5 * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * 0.044715 * v * v))
                worstY = max(worstY, abs(Double(y[i]) - ref) / max(1, abs(ref)))
                worstD = max(worstD, abs(Double(d[i]) - dref))
            }
            #expect(worstY < 1e-6, "level \(level): gelu error \(worstY)")
            #expect(worstD < 1e-6, "level \(level): gelu′ error \(worstD)")
        }
    }

    /// Every activation formula, forward and backward, in every instruction
    /// set, against double-precision references (the vector tails included).
    @Test func activationsForwardAndBackward() {
        let n = 1001
        let x = (0..<n).map { Float($0 - 500) * 0.024 + 0.0013 }  // -12 ... 12, never exactly 0 (relu's kink)
        func sig(_ v: Double) -> Double { 1 / (1 + Foundation.exp(-v)) }
        let refs: [(Int32, String, (Double) -> Double, (Double) -> Double)] = [
            (
                LB_ACT_GELU_ERF, "gelu", { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) },
                { 0.5 * (1 + erf($0 / 2.0.squareRoot())) + $0 * Foundation.exp(-0.5 * $0 * $0) / (2 * Double.pi).squareRoot() }
            ),
            (
                LB_ACT_QUICK_GELU, "quick_gelu", { $0 * sig(1.702 * $0) },
                {
                    let s = sig(1.702 * $0); return s + 1.702 * $0 * s * (1 - s)
                }
            ),
            (LB_ACT_RELU, "relu", { max($0, 0) }, { $0 > 0 ? 1 : 0 }),
            (
                LB_ACT_SILU, "silu", { $0 * sig($0) },
                {
                    let s = sig($0); return s * (1 + $0 * (1 - s))
                }
            ),
            (
                LB_ACT_TANH, "tanh", { Foundation.tanh($0) },
                {
                    let t = Foundation.tanh($0); return 1 - t * t
                }
            ),
            (
                LB_ACT_SIGMOID, "sigmoid", { sig($0) },
                {
                    let s = sig($0); return s * (1 - s)
                }
            ),
            (LB_ACT_LINEAR, "linear", { $0 }, { _ in 1 }),
        ]
        for (level, k) in sets() {
            for (act, name, f, df) in refs {
                var y = [Float](repeating: 0, count: n)
                k.activation_forward(act, &y, x, n)
                var d = [Float](repeating: 0.5, count: n)
                k.activation_backward(act, &d, x, n)
                var worstY = 0.0
                var worstD = 0.0
                for i in 0..<n {
                    let v = Double(x[i])
                    worstY = max(worstY, abs(Double(y[i]) - f(v)) / max(1, abs(f(v))))
                    worstD = max(worstD, abs(Double(d[i]) - 0.5 * df(v)))
                }
                #expect(worstY < 1e-6, "level \(level): \(name) error \(worstY)")
                #expect(worstD < 1e-6, "level \(level): \(name)′ error \(worstD)")
            }
        }
    }

    @Test func softmaxRows() {
        var rng = SplitMix64(seed: 4)
        for (level, k) in sets() {
            for n in [1, 15, 16, 17, 300] {
                var row = (0..<n).map { _ in (rng.nextFloat() - 0.5) * 30 }
                if n > 2 { row[1] = -.infinity }
                let src = row
                let lse = k.softmax_lse(&row, Int32(n))
                let mx = src.map(Double.init).max() ?? 0
                let z = src.reduce(0.0) { $0 + Foundation.exp(Double($1) - mx) }
                #expect(abs(Double(lse) - (mx + Foundation.log(z))) < 1e-5 * max(1, abs(mx)), "level \(level) n \(n): lse")
                let worst = (0..<n).map { abs(Double(row[$0]) - Foundation.exp(Double(src[$0]) - mx) / z) }.max() ?? 0
                #expect(worst < 1e-6, "level \(level) n \(n): softmax error \(worst)")
            }
            var masked = [Float](repeating: -.infinity, count: 19)
            #expect(k.softmax_lse(&masked, 19) == -.infinity)
            #expect(masked.allSatisfy { $0 == 0 })
            // exp(x − c): the recomputation of attention probabilities from their log-sum-exp.
            for n in [3, 16, 35] {
                var row = (0..<n).map { Float($0) * 0.37 - 4 }
                row[1] = -.infinity
                let src = row
                k.exp_shift(&row, Int32(n), 1.5)
                let worst =
                    (0..<n).map { i -> Double in
                        let want = Foundation.exp(Double(src[i]) - 1.5)
                        return abs(Double(row[i]) - want) / max(want, 1e-30)
                    }.max() ?? 0
                #expect(worst < 1e-6, "level \(level) n \(n): exp_shift relative error \(worst)")
            }
        }
    }

    @Test func softmaxBackwardRow() {
        var rng = SplitMix64(seed: 8)
        for (level, k) in sets() {
            for n in [1, 16, 41] {
                let p = (0..<n).map { _ in rng.nextFloat() }
                let d = (0..<n).map { _ in rng.nextFloat() - 0.5 }
                var dp = d
                k.softmax_backward(&dp, p, Int32(n), 0.125)
                let dot = (0..<n).reduce(0.0) { $0 + Double(p[$1]) * Double(d[$1]) }
                var worst = 0.0
                for i in 0..<n {
                    let want: Double = 0.125 * Double(p[i]) * (Double(d[i]) - dot)
                    worst = max(worst, abs(Double(dp[i]) - want))
                }
                #expect(worst < 1e-6, "level \(level) n \(n): error \(worst)")
            }
        }
    }

    @Test func crossEntropyRow() {
        var rng = SplitMix64(seed: 5)
        for (level, k) in sets() {
            for V in [33, 1000] {
                let logits = (0..<V).map { _ in (rng.nextFloat() - 0.5) * 20 }
                let target = V / 3
                var row = logits
                let loss = k.cross_entropy_row(&row, Int32(V), Int32(target), 0.25)
                let mx = logits.map(Double.init).max() ?? 0
                let z = logits.reduce(0.0) { $0 + Foundation.exp(Double($1) - mx) }
                let want = mx + Foundation.log(z) - Double(logits[target])
                #expect(abs(loss - want) < 1e-5 * max(1, want), "level \(level) V \(V): loss \(loss) vs \(want)")
                var worst = 0.0
                for i in 0..<V {
                    let g = 0.25 * (Foundation.exp(Double(logits[i]) - mx) / z - (i == target ? 1 : 0))
                    worst = max(worst, abs(Double(row[i]) - g))
                }
                #expect(worst < 1e-7, "level \(level) V \(V): gradient error \(worst)")
            }
        }
    }

    @Test func layerNormForwardAndInputGradient() {
        let rows = 3
        let C = 255
        var rng = SplitMix64(seed: 6)
        let x = (0..<rows * C).map { _ in rng.nextFloat() * 4 - 1 }
        let w = (0..<C).map { _ in rng.nextFloat() + 0.5 }
        let b = (0..<C).map { _ in rng.nextFloat() - 0.5 }
        let dy = (0..<rows * C).map { _ in rng.nextFloat() - 0.5 }
        for (level, k) in sets() {
            var y = [Float](repeating: 0, count: rows * C)
            var mean = [Float](repeating: 0, count: rows)
            var rstd = mean
            k.layernorm_forward(&y, &mean, &rstd, x, w, b, rows, Int32(C), 1e-5)
            var dx = [Float](repeating: 1, count: rows * C)  // accumulates
            k.layernorm_backward_input(&dx, dy, x, w, mean, rstd, rows, Int32(C))
            var worstY = 0.0
            var worstD = 0.0
            for r in 0..<rows {
                let xs = (0..<C).map { Double(x[r * C + $0]) }
                let m = xs.reduce(0, +) / Double(C)
                let v = xs.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
                let s = 1 / (v + 1e-5).squareRoot()
                let norm = xs.map { ($0 - m) * s }
                let dn = (0..<C).map { Double(w[$0]) * Double(dy[r * C + $0]) }
                let dnMean = dn.reduce(0, +) / Double(C)
                let dnNorm = zip(dn, norm).reduce(0) { $0 + $1.0 * $1.1 } / Double(C)
                for i in 0..<C {
                    worstY = max(worstY, abs(Double(y[r * C + i]) - (norm[i] * Double(w[i]) + Double(b[i]))))
                    worstD = max(worstD, abs(Double(dx[r * C + i]) - (1 + s * (dn[i] - dnMean - norm[i] * dnNorm))))
                }
            }
            #expect(worstY < 1e-5, "level \(level): LayerNorm error \(worstY)")
            #expect(worstD < 1e-5, "level \(level): LayerNorm input-gradient error \(worstD)")
        }
    }

    @Test func add() {
        let a = (0..<37).map { Float($0) * 0.5 }
        let b = (0..<37).map { Float($0) * -0.25 + 1 }
        for (level, k) in sets() {
            var out = [Float](repeating: 0, count: 37)
            k.add(&out, a, b, 37)
            #expect(out == zip(a, b).map { $0 + $1 }, "level \(level)")
        }
    }
}
