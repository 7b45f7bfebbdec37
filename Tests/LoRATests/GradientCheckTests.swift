import Foundation
import LoRA
import Testing

// Kernel-level checks (STYLE.md, "Tests"): every backward kernel of
// Kernels/ (each beside its forward) against central finite differences of that forward
// kernel, and matmulForward/attentionForward against naive loops in Double.
//
// Method: a scalar loss L = Σ out ⊙ R with R random, so the upstream gradient
// handed to the backward kernel is R. Each checked input entry x is moved to
// x ± h in Float, the Float32 forward kernel is run, L is summed in Double and
// (L(x+h) − L(x−h)) / ((x+h) − (x−h)) is compared with the analytic gradient.
// Backward kernels accumulate, so their outputs start from random values that
// are subtracted afterwards: this checks `+=` and that nothing else is touched.

/// Step for the smooth kernels: truncation h²·|f‴|/6 ≈ 2e-5 and Float32
/// rounding of the forward ≈ eps·|L|/(2h) ≈ 3e-5, both far below the tolerance.
private let smoothStep: Float = 1e-2
/// Step for the activations: relu's kink must stay out of [x − h, x + h]
/// (points within 1e-3 of it are skipped); ≈ 1e-4 rounding noise at this h.
private let activationStep: Float = 1e-3
/// Relative L2 error per checked tensor, ‖fd − analytic‖ / ‖fd‖: the budget
/// above gives ≤ 2e-4 in practice (50x margin), while a wrong sign, constant
/// or dropped term lands well above 1e-2.
private let gradientTolerance = 1e-2
/// At most this many entries of a tensor are perturbed (a random subset
/// beyond that): each perturbation costs two forward passes.
private let maxCheckedEntries = 50

// MARK: - Buffers and helpers

/// A test-owned Float buffer (kernels never allocate; the caller does).
private final class Buffer {
    let p: FloatPtr
    let count: Int

    init(_ values: [Float]) {
        count = values.count
        p = .allocate(capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
        for i in 0..<count { p[i] = values[i] }
    }

    convenience init(count: Int, value: Float = 0) {
        self.init([Float](repeating: value, count: count))
    }

    deinit { p.deallocate() }

    subscript(i: Int) -> Float {
        get { p[i] }
        set { p[i] = newValue }
    }

    var values: [Float] { Array(UnsafeBufferPointer(start: p, count: count)) }
}

private func gaussian(_ n: Int, _ rng: inout SplitMix64, scale: Float = 1, shift: Float = 0) -> [Float] {
    (0..<n).map { _ in rng.nextGaussian() * scale + shift }
}

private func uniform(_ n: Int, _ rng: inout SplitMix64, in range: ClosedRange<Float>) -> [Float] {
    (0..<n).map { _ in range.lowerBound + rng.nextFloat() * (range.upperBound - range.lowerBound) }
}

/// All of `candidates` when there are few, else a random subset of maxCheckedEntries.
private func sample(_ candidates: [Int], _ rng: inout SplitMix64) -> [Int] {
    guard candidates.count > maxCheckedEntries else { return candidates }
    var c = candidates
    for i in 0..<maxCheckedEntries {
        let j = i + Int(rng.next() % UInt64(c.count - i))
        c.swapAt(i, j)
    }
    return Array(c[0..<maxCheckedEntries])
}

/// Σ out[i] · r[i] in Double over `count` entries.
private func weightedSum(_ out: Buffer, _ r: [Float]) -> Double {
    var s = 0.0
    for i in 0..<r.count { s += Double(out[i]) * Double(r[i]) }
    return s
}

/// `after − before`: what a backward kernel added to a pre-filled buffer.
private func added(_ after: Buffer, _ before: [Float]) -> [Float] {
    (0..<before.count).map { after[$0] - before[$0] }
}

private struct GradientError: CustomStringConvertible {
    var relative: Double
    var maxAbs: Double
    var fdNorm: Double
    var checked: Int
    var description: String {
        "relative L2 error \(relative), max |Δ| \(maxAbs), ‖fd‖ \(fdNorm) over \(checked) entries"
    }
}

/// Central differences of `loss` at entries `indices` of `x`, against
/// `analytic` (indexed like `x`). `x` is restored afterwards.
private func gradientError(
    _ x: Buffer, at indices: [Int], analytic: [Float], h: Float,
    loss: () -> Double
) -> GradientError {
    var diff2 = 0.0
    var fd2 = 0.0
    var maxAbs = 0.0
    for i in indices {
        let x0 = x[i]
        let up = x0 + h
        let down = x0 - h
        x[i] = up
        let lUp = loss()
        x[i] = down
        let lDown = loss()
        x[i] = x0
        let fd = (lUp - lDown) / (Double(up) - Double(down))
        let d = fd - Double(analytic[i])
        diff2 += d * d
        fd2 += fd * fd
        maxAbs = max(maxAbs, abs(d))
    }
    let fdNorm = fd2.squareRoot()
    let relative = fdNorm > 0 ? diff2.squareRoot() / fdNorm : (diff2 == 0 ? 0 : .infinity)
    return GradientError(
        relative: relative, maxAbs: maxAbs,
        fdNorm: fdNorm, checked: indices.count)
}

/// Expects the analytic gradient of `name` to match finite differences.
/// `vanishes`: the true gradient is zero, so both sides must be exactly zero.
private func expectGradient(
    _ name: String, _ x: Buffer, at indices: [Int], analytic: [Float],
    h: Float = smoothStep, vanishes: Bool = false, loss: () -> Double,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let e = gradientError(x, at: indices, analytic: analytic, h: h, loss: loss)
    if vanishes {
        #expect(e.fdNorm == 0 && e.maxAbs == 0, "\(name): expected a zero gradient (\(e))", sourceLocation: sourceLocation)
        return
    }
    // A vanishing reference would make any analytic gradient "match".
    #expect(e.fdNorm > 1e-3, "\(name): finite differences vanish (\(e))", sourceLocation: sourceLocation)
    #expect(e.relative < gradientTolerance, "\(name): \(e)", sourceLocation: sourceLocation)
}

// MARK: - Backward kernels against finite differences

@Suite struct GradientCheckTests {
    /// y[M, N] = x[M, K] · W[K, N] + b; M = 1 runs the sgemv forward path.
    @Test(arguments: [1, 5])
    func matmulBackwardMatchesFiniteDifferences(M: Int) throws {
        try BLAS.load()
        var rng = SplitMix64(seed: 0x6d61_746d + UInt64(M))
        let K = 7
        let N = 6
        let x = Buffer(gaussian(M * K, &rng))
        let w = Buffer(gaussian(K * N, &rng, scale: 1 / Float(K).squareRoot()))
        let b = Buffer(gaussian(N, &rng))
        let r = gaussian(M * N, &rng)
        let out = Buffer(count: M * N)
        func loss() -> Double {
            matmulForward(out: out.p, inp: x.p, weight: conv1D(w, K, N), bias: b.p, M: M, K: K, N: N)
            return weightedSum(out, r)
        }

        let dout = Buffer(r)
        let dx0 = gaussian(M * K, &rng)
        let dw0 = gaussian(K * N, &rng)
        let db0 = gaussian(N, &rng)
        let dx = Buffer(dx0)
        let dw = Buffer(dw0)
        let db = Buffer(db0)
        matmulBackward(
            dinp: dx.p, dweight: dw.p, dbias: db.p, dout: dout.p, inp: x.p, weight: conv1D(w, K, N),
            M: M, K: K, N: N, accumulate: true)
        expectGradient("dinp", x, at: Array(0..<(M * K)), analytic: added(dx, dx0), loss: loss)
        expectGradient("dweight", w, at: Array(0..<(K * N)), analytic: added(dw, dw0), loss: loss)
        expectGradient("dbias", b, at: Array(0..<N), analytic: added(db, db0), loss: loss)

        // accumulate: false overwrites dinp (stale values must not leak in).
        let dxFresh = Buffer(gaussian(M * K, &rng, scale: 100))
        matmulBackward(
            dinp: dxFresh.p, dweight: nil, dbias: nil, dout: dout.p, inp: x.p, weight: conv1D(w, K, N),
            M: M, K: K, N: N, accumulate: false)
        expectGradient("dinp (overwrite)", x, at: Array(0..<(M * K)), analytic: dxFresh.values, loss: loss)
    }

    @Test func layerNormBackwardMatchesFiniteDifferences() throws {
        var rng = SplitMix64(seed: 0x6c6e)
        let rows = 3
        let C = 20
        // Rows with different offsets and spreads, weights around 1.
        var xs: [Float] = []
        for r in 0..<rows { xs += gaussian(C, &rng, scale: 0.5 + Float(r), shift: Float(r) - 1) }
        let x = Buffer(xs)
        let w = Buffer(gaussian(C, &rng, scale: 0.2, shift: 1))
        let b = Buffer(gaussian(C, &rng))
        let r = gaussian(rows * C, &rng)
        let eps: Float = 1e-5
        let out = Buffer(count: rows * C)
        func loss() -> Double {
            layerNormForward(out: out.p, mean: nil, rstd: nil, inp: x.p, weight: w.p, bias: b.p, rows: rows, C: C, eps: eps)
            return weightedSum(out, r)
        }

        let mean = Buffer(count: rows)
        let rstd = Buffer(count: rows)
        layerNormForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: x.p, weight: w.p, bias: b.p, rows: rows, C: C, eps: eps)
        let dout = Buffer(r)
        let dx0 = gaussian(rows * C, &rng)
        let dw0 = gaussian(C, &rng)
        let db0 = gaussian(C, &rng)
        let dx = Buffer(dx0)
        let dw = Buffer(dw0)
        let db = Buffer(db0)
        layerNormBackward(
            dinp: dx.p, dweight: dw.p, dbias: db.p, dout: dout.p, inp: x.p, weight: w.p,
            mean: mean.p, rstd: rstd.p, rows: rows, C: C)
        expectGradient("dinp", x, at: Array(0..<(rows * C)), analytic: added(dx, dx0), loss: loss)
        expectGradient("dweight", w, at: Array(0..<C), analytic: added(dw, dw0), loss: loss)
        expectGradient("dbias", b, at: Array(0..<C), analytic: added(db, db0), loss: loss)
    }

    /// n = 37: two full 16-wide vectors and a tail, in both directions.
    @Test(arguments: Activation.allCases)
    func activationBackwardMatchesFiniteDifferences(_ act: Activation) {
        var rng = SplitMix64(seed: 0x6163_74)
        let n = 37
        let x = Buffer(uniform(n, &rng, in: -4...4))
        let r = gaussian(n, &rng)
        let out = Buffer(count: n)
        func loss() -> Double {
            activationForward(act, out: out.p, inp: x.p, n: n)
            return weightedSum(out, r)
        }
        let d = Buffer(r)
        activationBackward(act, d: d.p, pre: x.p, n: n)
        let indices = (0..<n).filter { act != .relu || abs(x[$0]) > 1e-3 }
        expectGradient(act.rawValue, x, at: indices, analytic: d.values, h: activationStep, loss: loss)
    }

    /// The model's layout: q, k, v of head `h` interleaved in a qkv buffer of
    /// row stride 3C, the output in an [T, C] buffer; past = 0 as in training.
    /// Both product paths: attention.c's kernels (where the CPU has AVX-512)
    /// and sgemm with the few-row kernels.
    @Test(arguments: [1, 7, 64, 65, 130], [false, true])
    func attentionBackwardMatchesFiniteDifferences(T: Int, scaled: Bool) throws {
        for own in Set([false, attentionKernel]) {
            try checkAttentionBackward(T: T, past: 0, scaled: scaled, masked: false, ownKernel: own)
        }
    }

    /// Beyond training's use: cached keys before the queries, and a key mask
    /// (backward recomputes the weights with the same mask).
    @Test(arguments: [(3, 2), (70, 5)])
    func attentionBackwardWithPastAndMask(T: Int, past: Int) throws {
        for own in Set([false, attentionKernel]) {
            try checkAttentionBackward(T: T, past: past, scaled: true, masked: true, ownKernel: own)
        }
    }

    /// Training's attention dropout (GPT-2's attn_pdrop): the weights are
    /// dropped after the softmax; backward drops ∂L/∂P̃ with the same mask and
    /// mixes the values with the dropped weights. The mask is fixed, so the
    /// function is smooth and finite differences apply.
    @Test(arguments: [1, 7, 70])
    func attentionBackwardWithDropout(T: Int) throws {
        // A stream whose first weight is kept (with one key, a dropped weight has no gradient).
        let first = (0..<64).first { f -> Bool in
            var w: Float = 1
            AttentionDropout(p: 0.3, keep: 1, key: 0x5eed_d20b, first: UInt64(f), block: 80).apply(row: &w, i: 0, count: 1)
            return w != 0
        }!
        let dropout = AttentionDropout(p: 0.3, keep: 1 / (1 - Float(0.3)), key: 0x5eed_d20b, first: UInt64(first), block: 80)
        for own in Set([false, attentionKernel]) {
            try checkAttentionBackward(T: T, past: 0, scaled: true, masked: false, ownKernel: own, dropout: dropout)
        }
    }

    /// attention.c's kernels against the sgemm path on GPT-2's head size
    /// (64) and on one wider than a tile (80: two column tiles, two k-blocks):
    /// outputs, log-sum-exps and all three gradients agree within 2e-5
    /// (relative to the largest entry; F32 sums of up to 130 terms in a
    /// different order), with keys from a cache (past), a key mask, and
    /// operands at GPT-2's strides.
    @Test(arguments: [64, 80], [(2, 0), (64, 0), (130, 0), (9, 37), (70, 5)])
    func attentionKernelAgreesWithTheSgemmPath(hd: Int, shape: (Int, Int)) throws {
        try BLAS.load()
        guard attentionKernel else { return }
        let (T, past) = shape
        let L = past + T
        let H = 3
        let C = H * hd
        let h = 1
        var rng = SplitMix64(seed: 0x6b65_726e &+ UInt64(hd * 1000 + T * 7 + past))
        let qkv = Buffer(gaussian(L * 3 * C, &rng))
        let dout = Buffer(gaussian(T * C, &rng))
        let mask: Buffer? = past > 0 ? Buffer((0..<L).map { $0 % 4 == 2 ? 0 : 1 }) : nil
        let qOff = past * 3 * C + h * hd
        let kOff = C + h * hd
        let vOff = 2 * C + h * hd
        func run(_ own: Bool) -> (out: [Float], lse: [Float], grad: [Float]) {
            let out = Buffer(count: T * C)
            let probs = Buffer(count: T * L, value: 7)
            let lse = Buffer(count: T)
            let dqkv = Buffer(count: L * 3 * C)
            let scratch = Buffer(count: attentionBackwardScratch(T: T, L: L, hd: hd), value: 1e3)
            let keyMask = mask.map { UnsafePointer($0.p) }
            attentionForward(
                out: out.p + h * hd, ldo: C, probs: probs.p, q: qkv.p + qOff, ldq: 3 * C, k: qkv.p + kOff, ldk: 3 * C,
                v: qkv.p + vOff, ldv: 3 * C, T: T, L: L, past: past, hd: hd, scale: 0.125, keyMask: keyMask, lse: lse.p,
                ownKernel: own)
            attentionBackward(
                dq: dqkv.p + qOff, ldq: 3 * C, dk: dqkv.p + kOff, dv: dqkv.p + vOff, ldk: 3 * C, scratch: scratch.p,
                dout: dout.p + h * hd, ldo: C, lse: lse.p, q: qkv.p + qOff, k: qkv.p + kOff, v: qkv.p + vOff, T: T, L: L,
                past: past, hd: hd, scale: 0.125, keyMask: keyMask, ownKernel: own)
            return (out.values, lse.values, dqkv.values)
        }
        let (a, b) = (run(true), run(false))
        for (name, x, y) in [("out", a.out, b.out), ("lse", a.lse, b.lse), ("dqkv", a.grad, b.grad)] {
            let peak = y.map { abs($0) }.max() ?? 0
            let worst = zip(x, y).map { abs($0 - $1) }.max() ?? 0
            #expect(peak > 0 && worst <= 2e-5 * max(1, peak), "hd=\(hd) T=\(T) past=\(past) \(name): \(worst) (peak \(peak))")
        }
    }

    private func checkAttentionBackward(
        T: Int, past: Int, scaled: Bool, masked: Bool, ownKernel: Bool, dropout: AttentionDropout? = nil
    ) throws {
        try BLAS.load()
        var rng = SplitMix64(seed: 0x6174_746e &+ UInt64(T * 131 + past * 7) &+ (scaled ? 1 : 0))
        let H = 2
        let hd = 8
        let C = H * hd
        let h = 1
        let L = past + T
        let scale: Float = scaled ? 1 / Float(hd).squareRoot() : 1
        // Rows 0..<L of qkv hold keys/values; the queries are its last T rows.
        let qkv = Buffer(gaussian(L * 3 * C, &rng))
        let qOff = past * 3 * C + h * hd
        let kOff = C + h * hd
        let vOff = 2 * C + h * hd
        let mask: Buffer? = masked ? Buffer((0..<L).map { $0 % 3 == 1 ? 0 : 1 }) : nil
        let r = gaussian(T * hd, &rng)
        let out = Buffer(count: T * C)
        let probs = Buffer(count: T * L)
        let lse = Buffer(count: T)
        func forward() {
            attentionForward(
                out: out.p + h * hd, ldo: C, probs: probs.p,
                q: qkv.p + qOff, ldq: 3 * C, k: qkv.p + kOff, ldk: 3 * C, v: qkv.p + vOff, ldv: 3 * C,
                T: T, L: L, past: past, hd: hd, scale: scale, keyMask: mask.map { UnsafePointer($0.p) },
                lse: lse.p, dropout: dropout, ownKernel: ownKernel)
        }
        func loss() -> Double {
            forward()
            var s = 0.0
            for t in 0..<T { for d in 0..<hd { s += Double(out[t * C + h * hd + d]) * Double(r[t * hd + d]) } }
            return s
        }

        forward()
        // dout in the [T, C] layout; other heads' columns hold values that must not be read.
        var doutValues = gaussian(T * C, &rng, scale: 100)
        for t in 0..<T { for d in 0..<hd { doutValues[t * C + h * hd + d] = r[t * hd + d] } }
        let dout = Buffer(doutValues)
        let dqkv0 = gaussian(L * 3 * C, &rng)
        let dqkv = Buffer(dqkv0)
        let scratch = Buffer(count: attentionBackwardScratch(T: T, L: L, hd: hd), value: 1e3)  // stale contents must not matter
        attentionBackward(
            dq: dqkv.p + qOff, ldq: 3 * C, dk: dqkv.p + kOff, dv: dqkv.p + vOff, ldk: 3 * C,
            scratch: scratch.p, dout: dout.p + h * hd, ldo: C, lse: lse.p,
            q: qkv.p + qOff, k: qkv.p + kOff, v: qkv.p + vOff,
            T: T, L: L, past: past, hd: hd, scale: scale, keyMask: mask.map { UnsafePointer($0.p) }, dropout: dropout,
            ownKernel: ownKernel)
        let grad = added(dqkv, dqkv0)
        if let dropout, T > 1 {
            // Some weights are dropped, and the dropped ones are zero.
            var dropped = 0
            for i in 0..<T {
                var row = [Float](repeating: 1, count: i + 1)
                row.withUnsafeMutableBufferPointer { dropout.apply(row: $0.baseAddress!, i: i, count: i + 1) }
                for j in 0...i where row[j] == 0 {
                    dropped += 1
                    #expect(probs[i * L + j] == 0, "weight (\(i), \(j)) is dropped")
                }
            }
            #expect(dropped > 0)
        }

        func entries(_ off: Int, rows: Int) -> [Int] {
            (0..<rows).flatMap { t in (0..<hd).map { off + t * 3 * C + $0 } }
        }
        let qs = entries(qOff, rows: T)
        let ks = entries(kOff, rows: L)
        let vs = entries(vOff, rows: L)
        let label =
            "T=\(T) past=\(past) scale=\(scale)\(masked ? " masked" : "")\(ownKernel ? " own kernel" : "")\(dropout != nil ? " dropout" : "")"
        // A single visible key has probability 1 whatever q and k are.
        let oneKey = L == 1
        expectGradient("dq \(label)", qkv, at: sample(qs, &rng), analytic: grad, vanishes: oneKey, loss: loss)
        expectGradient("dk \(label)", qkv, at: sample(ks, &rng), analytic: grad, vanishes: oneKey, loss: loss)
        expectGradient("dv \(label)", qkv, at: sample(vs, &rng), analytic: grad, loss: loss)

        // Nothing outside this head's q, k, v columns is written.
        let own = Set(qs + ks + vs)
        let stray = (0..<dqkv.count).filter { !own.contains($0) && dqkv[$0] != dqkv0[$0] }
        #expect(stray.isEmpty, "\(label): \(stray.count) entries outside the head changed")
    }

    /// Ignored rows (target −100) get a zero gradient; the checked function is gradScale · Σ loss.
    @Test func crossEntropyForwardBackwardMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 0x7863_65)
        let rows = 6
        let V = 37
        let targets: [Int32] = [3, -100, 36, 0, -100, 17]
        let gradScale: Float = 0.25
        let logits = Buffer(gaussian(rows * V, &rng, scale: 2))
        let scratch = Buffer(count: rows * V)
        func run(_ scale: Float) -> Double {
            scratch.p.update(from: logits.p, count: rows * V)
            return targets.withUnsafeBufferPointer {
                crossEntropyForwardBackward(logits: scratch.p, targets: $0.baseAddress!, rows: rows, V: V, gradScale: scale)
            }
        }
        func loss() -> Double { Double(gradScale) * run(0) }

        // The returned loss against log-softmax in Double.
        var reference = 0.0
        for r in 0..<rows where targets[r] >= 0 {
            let row = (0..<V).map { Double(logits[r * V + $0]) }
            let mx = row.max()!
            reference += mx + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - mx) }) - row[Int(targets[r])]
        }
        let total = run(gradScale)
        #expect(abs(total - reference) < 1e-5 * reference, "loss \(total) vs \(reference)")

        let grad = scratch.values
        expectGradient("dlogits", logits, at: Array(0..<(rows * V)), analytic: grad, loss: loss)
        for r in 0..<rows where targets[r] < 0 {
            #expect(grad[(r * V)..<((r + 1) * V)].allSatisfy { $0 == 0 }, "ignored row \(r) has a gradient")
        }
    }

    /// Repeated ids and positions: their gradients must add up.
    @Test func embeddingBackwardMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 0x656d_62)
        let vocab = 7
        let positionsCount = 5
        let C = 6
        let ids: [Int32] = [1, 4, 1, 6, 0, 4, 4, 2, 1]
        let positions: [Int32] = [0, 1, 2, 3, 4, 0, 1, 2, 3]
        let n = ids.count
        let wte = Buffer(gaussian(vocab * C, &rng))
        let wpe = Buffer(gaussian(positionsCount * C, &rng))
        let r = gaussian(n * C, &rng)
        let out = Buffer(count: n * C)
        func loss() -> Double {
            ids.withUnsafeBufferPointer { ip in
                positions.withUnsafeBufferPointer { pp in
                    embeddingForward(
                        out: out.p, ids: ip.baseAddress!, positions: pp.baseAddress!,
                        wte: BaseMatrix(f32: wte.p, rows: vocab, cols: C, inputAlongRows: false),
                        wpe: BaseMatrix(f32: wpe.p, rows: positionsCount, cols: C, inputAlongRows: false), n: n, C: C)
                }
            }
            return weightedSum(out, r)
        }
        let dout = Buffer(r)
        let dwte0 = gaussian(vocab * C, &rng)
        let dwpe0 = gaussian(positionsCount * C, &rng)
        let dwte = Buffer(dwte0)
        let dwpe = Buffer(dwpe0)
        ids.withUnsafeBufferPointer { ip in
            positions.withUnsafeBufferPointer { pp in
                embeddingBackward(
                    dwte: dwte.p, dwpe: dwpe.p, dout: dout.p, ids: ip.baseAddress!,
                    positions: pp.baseAddress!, n: n, C: C)
            }
        }
        // Token 3 never occurs, so part of dwte is legitimately zero.
        expectGradient("dwte", wte, at: Array(0..<(vocab * C)), analytic: added(dwte, dwte0), loss: loss)
        expectGradient("dwpe", wpe, at: Array(0..<(positionsCount * C)), analytic: added(dwpe, dwpe0), loss: loss)
        #expect((3 * C..<4 * C).allSatisfy { dwte[$0] == dwte0[$0] }, "an unused token row changed")
    }
}

// MARK: - Forward kernels against naive references

/// Float32 with any summation order: |Δ| ≤ n·u·Σ|terms| for n terms
/// (u = eps/2; Higham's γ_n), the same bound for sgemm, sgemv and the bias add.
private func dotProductBound(terms: Int, absSum: Double) -> Double {
    Double(terms) * Double(Float.ulpOfOne) / 2 * absSum + 1e-30
}

/// Attention: the score error (hd·u·|q||k|·scale ≲ 1e-6 for unit inputs)
/// becomes a relative error of the probabilities; plus exp's 2 ulp and the
/// normalisation. 1e-5 (absolute, inputs ~ N(0, 1), |v| ≲ 5) leaves > 10x margin.
private let attentionReferenceTolerance = 1e-5

struct AttentionCase: Sendable, CustomTestStringConvertible {
    var T: Int, L: Int, past: Int
    /// Keys hidden by the mask; nil: no mask.
    var hidden: [Int]?
    var testDescription: String { "T=\(T) L=\(L) past=\(past) mask=\(hidden.map { "\($0)" } ?? "none")" }
}

@Suite struct GradientCheckReferenceTests {
    @Test(arguments: [1, 4, 33], [false, true])
    func matmulForwardMatchesNaiveLoops(M: Int, accumulate: Bool) throws {
        try BLAS.load()
        for withBias in [false, true] {
            for K in [0, 19] {
                var rng = SplitMix64(seed: UInt64(M * 100 + K) &+ (accumulate ? 7 : 0) &+ (withBias ? 13 : 0))
                let N = 13
                let x = Buffer(gaussian(M * K, &rng))
                let w = Buffer(gaussian(K * N, &rng))
                let b = Buffer(gaussian(N, &rng))
                let start = gaussian(M * N, &rng)
                let out = Buffer(start)
                matmulForward(
                    out: out.p, inp: x.p, weight: conv1D(w, K, N), bias: withBias ? UnsafePointer(b.p) : nil,
                    M: M, K: K, N: N, accumulate: accumulate)
                var worst = 0.0
                var bad = 0
                for m in 0..<M {
                    for n in 0..<N {
                        var ref = accumulate ? Double(start[m * N + n]) : 0
                        var absSum = abs(ref)
                        if withBias { ref += Double(b[n]); absSum += abs(Double(b[n])) }
                        for k in 0..<K {
                            let t = Double(x[m * K + k]) * Double(w[k * N + n])
                            ref += t
                            absSum += abs(t)
                        }
                        let d = abs(Double(out[m * N + n]) - ref)
                        worst = max(worst, d)
                        if d > dotProductBound(terms: K + 2, absSum: absSum) { bad += 1 }
                    }
                }
                #expect(bad == 0, "M=\(M) K=\(K) bias=\(withBias) accumulate=\(accumulate): \(bad) entries off, max |Δ| \(worst)")
            }
        }
    }

    static let attentionCases: [AttentionCase] = [
        AttentionCase(T: 1, L: 1, past: 0, hidden: nil),
        AttentionCase(T: 1, L: 9, past: 8, hidden: [2, 5]),
        AttentionCase(T: 1, L: 12, past: 5, hidden: [0, 3, 9]),  // keys beyond past + i are not seen
        AttentionCase(T: 1, L: 4, past: 3, hidden: [0, 1, 2, 3]),  // nothing visible: zeros
        AttentionCase(T: 6, L: 6, past: 0, hidden: [0]),  // row 0 sees nothing: zeros
        AttentionCase(T: 5, L: 5, past: 0, hidden: nil),
        AttentionCase(T: 70, L: 70, past: 0, hidden: nil),
        AttentionCase(T: 130, L: 130, past: 0, hidden: nil),
        AttentionCase(T: 67, L: 70, past: 3, hidden: [1, 40, 68]),
    ]

    @Test(arguments: attentionCases)
    func attentionForwardMatchesNaiveLoops(_ c: AttentionCase) throws {
        try BLAS.load()
        var rng = SplitMix64(seed: UInt64(c.T * 1000 + c.L * 10 + c.past))
        let T = c.T
        let L = c.L
        let past = c.past
        let H = 2
        let hd = 8
        let C = H * hd
        let h = 1
        let scale = 1 / Float(hd).squareRoot()
        let q = Buffer(gaussian(T * 3 * C, &rng))  // q in a qkv-like buffer (row stride 3C)
        let kv = Buffer(gaussian(L * 2 * C, &rng))  // k and v interleaved (row stride 2C)
        let mask = c.hidden.map { hidden in Buffer((0..<L).map { hidden.contains($0) ? 0 : 1 }) }
        let sentinel: Float = 7
        let out = Buffer(count: T * C, value: sentinel)
        let probs = Buffer(gaussian(T * L, &rng))
        let lse = Buffer(gaussian(T, &rng))
        attentionForward(
            out: out.p + h * hd, ldo: C, probs: probs.p,
            q: q.p + h * hd, ldq: 3 * C, k: kv.p + h * hd, ldk: 2 * C, v: kv.p + C + h * hd, ldv: 2 * C,
            T: T, L: L, past: past, hd: hd, scale: scale, keyMask: mask.map { UnsafePointer($0.p) },
            lse: lse.p)

        var worstOut = 0.0
        var worstProb = 0.0
        var worstLSE = 0.0
        for i in 0..<T {
            let visible = (0..<min(past + i + 1, L)).filter { c.hidden?.contains($0) != true }
            var p = [Double](repeating: 0, count: L)
            if visible.isEmpty {
                #expect(lse[i] == -.infinity, "\(c.testDescription): row \(i) sees no key, lse \(lse[i])")
            } else {
                var s = [Double](repeating: 0, count: L)
                for j in visible {
                    for d in 0..<hd { s[j] += Double(q[i * 3 * C + h * hd + d]) * Double(kv[j * 2 * C + h * hd + d]) }
                    s[j] *= Double(scale)
                }
                let mx = visible.map { s[$0] }.max()!
                var sum = 0.0
                for j in visible { p[j] = Foundation.exp(s[j] - mx); sum += p[j] }
                for j in visible { p[j] /= sum }
                worstLSE = max(worstLSE, abs(Double(lse[i]) - (mx + Foundation.log(sum))))
            }
            for j in 0..<L { worstProb = max(worstProb, abs(Double(probs[i * L + j]) - p[j])) }
            for d in 0..<hd {
                var o = 0.0
                for j in 0..<L { o += p[j] * Double(kv[j * 2 * C + C + h * hd + d]) }
                worstOut = max(worstOut, abs(Double(out[i * C + h * hd + d]) - o))
            }
        }
        #expect(worstProb < attentionReferenceTolerance, "\(c.testDescription): probs max |Δ| \(worstProb)")
        #expect(worstOut < attentionReferenceTolerance, "\(c.testDescription): out max |Δ| \(worstOut)")
        #expect(worstLSE < attentionReferenceTolerance, "\(c.testDescription): lse max |Δ| \(worstLSE)")
        let stray = (0..<T * C).filter { ($0 % C) / hd != h && out[$0] != sentinel }
        #expect(stray.isEmpty, "\(c.testDescription): other heads' output columns were written")
    }

    /// LayerNorm forward, and the mean/rstd that backward relies on.
    @Test func layerNormForwardMatchesNaiveLoops() {
        var rng = SplitMix64(seed: 0x6c6e_66)
        let rows = 4
        let C = 45
        let eps: Float = 1e-5
        var xs: [Float] = []
        for r in 0..<rows { xs += gaussian(C, &rng, scale: 0.1 + Float(r), shift: 3 * Float(r)) }
        let x = Buffer(xs)
        let w = Buffer(gaussian(C, &rng, shift: 1))
        let b = Buffer(gaussian(C, &rng))
        let out = Buffer(count: rows * C)
        let mean = Buffer(count: rows)
        let rstd = Buffer(count: rows)
        layerNormForward(out: out.p, mean: mean.p, rstd: rstd.p, inp: x.p, weight: w.p, bias: b.p, rows: rows, C: C, eps: eps)
        var worst = 0.0
        for r in 0..<rows {
            let row = (0..<C).map { Double(x[r * C + $0]) }
            let m = row.reduce(0, +) / Double(C)
            let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
            let s = 1 / (v + Double(eps)).squareRoot()
            #expect(abs(Double(mean[r]) - m) < 1e-5 * (1 + abs(m)), "row \(r) mean")
            #expect(abs(Double(rstd[r]) - s) < 1e-5 * s, "row \(r) rstd")
            for i in 0..<C {
                let y = (row[i] - m) * s * Double(w[i]) + Double(b[i])
                worst = max(worst, abs(Double(out[r * C + i]) - y))
            }
        }
        // Normalised values are O(1); Float32 sums over C = 45 entries.
        #expect(worst < 1e-5, "max |Δ| \(worst)")
    }
}

/// An F32 Conv1D weight [K, N] as the matrix products take it.
private func conv1D(_ w: Buffer, _ K: Int, _ N: Int) -> BaseMatrix { BaseMatrix(f32: w.p, rows: K, cols: N, inputAlongRows: true) }
