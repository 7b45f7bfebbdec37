import CLoraSupport
import Foundation
import Testing

@testable import LoRA

/// The decode matrix–vector kernels (CLoraSupport/gemv.c) at every
/// instruction-set level this CPU runs, against double precision (and the
/// columns form bit for bit against its k-order FMA sum, or the AVX2
/// level's split order where it splits), on shapes
/// with vector tails and misaligned weights; and the worker pool
/// (CLoraSupport/pool.c) under nesting and concurrent submitters.
@Suite struct GemvPoolTests {
    /// Float32 sums of up to 3072 products of values in ±1: the error grows
    /// like √K·ε·max|term|; 1e-5 relative to the sum of |terms| leaves 20×.
    static let tolerance = 1e-5

    static var levels: [Int32] {
        [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512].filter { lb_kernels_for($0) != nil }
    }

    @Test func columnsMatchDoublePrecision() {
        var rng = SplitMix64(seed: 11)
        for (K, N) in [
            (1, 1), (3, 17), (33, 200), (48, 144), (768, 2304), (3072, 13), (100, 1_300), (769, 600), (20, 4_100), (3072, 768),
        ] {
            // One float of offset makes every row start off a cache line.
            for offset in [0, 1, 5] {
                let ldw = N + (N % 16 == 0 ? 0 : 3)
                var w = (0..<(offset + K * ldw)).map { _ in rng.nextFloat() * 2 - 1 }
                let x = (0..<K).map { _ in rng.nextFloat() * 2 - 1 }
                let y0 = (0..<N).map { _ in rng.nextFloat() }
                for level in Self.levels {
                    for beta0: Int32 in [0, 1] {
                        // Split into two calls at a column that is not a multiple of 16.
                        let cut = N / 3
                        var y = y0
                        w.withUnsafeMutableBufferPointer { wp in
                            let W = UnsafePointer(wp.baseAddress! + offset)
                            lb_gemv_cols_at(level, &y, x, W, Int32(K), Int32(ldw), 0, Int32(cut), beta0)
                            lb_gemv_cols_at(level, &y, x, W, Int32(K), Int32(ldw), Int32(cut), Int32(N), beta0)
                        }
                        var worst = 0.0
                        var sameBits = true
                        let kh = Int(lb_cols_split_at(level, LB_DTYPE_F32, Int32(K), Int32(ldw)))
                        for n in 0..<N {
                            var s = beta0 == 1 ? 0 : Double(y0[n])
                            var mag = abs(s)
                            for k in 0..<K {
                                let t = Double(x[k]) * Double(w[offset + k * ldw + n])
                                s += t; mag += abs(t)
                            }
                            let f = Self.columnSum(
                                x: x, w: Array(w[offset...]), ldw: ldw, K: K, n: n, start: beta0 == 1 ? 0 : y0[n], split: kh)
                            worst = max(worst, abs(Double(y[n]) - s) / max(mag, 1e-30))
                            sameBits = sameBits && y[n].bitPattern == f.bitPattern
                        }
                        #expect(worst < Self.tolerance, "cols level \(level) K \(K) N \(N) offset \(offset) beta0 \(beta0): \(worst)")
                        // Every level: one fused multiply-add per k, in k order,
                        // or in the AVX2 split order.
                        #expect(sameBits, "cols level \(level) K \(K) N \(N) offset \(offset) beta0 \(beta0): not the FMA sum in order")
                        if kh > 0 {
                            // Its two parts, as two workers compute them, added.
                            var p0 = y0
                            var p1 = [Float](repeating: .nan, count: N)
                            w.withUnsafeBufferPointer { wp in
                                let W = UnsafeRawPointer(wp.baseAddress! + offset)
                                lb_gemv_cols_part(level, LB_DTYPE_F32, &p0, x, W, Int32(K), Int32(ldw), 0, 0, Int32(N), beta0)
                                lb_gemv_cols_part(level, LB_DTYPE_F32, &p1, x, W, Int32(K), Int32(ldw), 1, 0, Int32(N), beta0)
                            }
                            #expect((0..<N).allSatisfy { (p0[$0] + p1[$0]).bitPattern == y[$0].bitPattern }, "parts K \(K) N \(N)")
                        }
                    }
                }
            }
        }
    }

    /// Output n of the columns form in its order: the FMA sum over k in k
    /// order from `start`, or, where the AVX2 level splits the product at
    /// `split`, the parts [0, split) (from `start`) and [split, K) (from 0)
    /// added, each taking row (i mod 8)·s + i/8 at index i < 8s, s = its
    /// rows / 8, then the rest in order (gemm_small.c).
    static func columnSum(x: [Float], w: [Float], ldw: Int, K: Int, n: Int, start: Float, split: Int) -> Float {
        func part(_ lo: Int, _ hi: Int, _ from: Float, spread: Bool) -> Float {
            var f = from
            let s = spread ? (hi - lo) / 8 : 0
            for i in 0..<(hi - lo) {
                let k = lo + (s > 1 && i < 8 * s ? (i % 8) * s + i / 8 : i)
                f.addProduct(x[k], w[k * ldw + n])
            }
            return f
        }
        if split == 0 { return part(0, K, start, spread: false) }
        return part(0, split, start, spread: true) + part(split, K, 0, spread: true)
    }

    @Test func rowsMatchDoublePrecision() {
        var rng = SplitMix64(seed: 12)
        for (R, C) in [(1, 1), (7, 15), (9, 48), (130, 768), (5, 769), (2304, 8), (9, 3)] {
            for offset in [0, 3] {
                let ldw = C + 2
                var w = (0..<(offset + R * ldw)).map { _ in rng.nextFloat() * 2 - 1 }
                let x = (0..<C).map { _ in rng.nextFloat() * 2 - 1 }
                let y0 = (0..<R).map { _ in rng.nextFloat() }
                for level in Self.levels {
                    for beta0: Int32 in [0, 1] {
                        var y = y0
                        let cut = R / 2 + 1
                        w.withUnsafeMutableBufferPointer { wp in
                            let W = UnsafePointer(wp.baseAddress! + offset)
                            lb_gemv_rows_at(level, &y, x, W, Int32(C), Int32(ldw), 0, Int32(min(cut, R)), beta0)
                            lb_gemv_rows_at(level, &y, x, W, Int32(C), Int32(ldw), Int32(min(cut, R)), Int32(R), beta0)
                        }
                        var worst = 0.0
                        for r in 0..<R {
                            var s = 0.0
                            var mag = 0.0
                            for c in 0..<C {
                                let t = Double(w[offset + r * ldw + c]) * Double(x[c])
                                s += t; mag += abs(t)
                            }
                            if beta0 == 0 { s += Double(y0[r]); mag += abs(Double(y0[r])) }
                            worst = max(worst, abs(Double(y[r]) - s) / max(mag, 1e-30))
                        }
                        #expect(worst < Self.tolerance, "rows level \(level) R \(R) C \(C) offset \(offset) beta0 \(beta0): \(worst)")
                    }
                }
            }
        }
    }

    /// The AVX2 rows kernel's sums, written out: 8 lanes of fused
    /// multiply-adds over c in c order (c ≡ lane mod 8), then lb_hsum256's
    /// tree ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). Pins the narrow
    /// kernel (C ≤ 8, eight rows' trees at once in shuffles) and the 3 × 4
    /// tiles to that order, bit for bit, also through the few-row entry.
    @Test func avx2RowsKeepTheirReductionTree() {
        guard Self.levels.contains(LB_KERNELS_AVX2) else { return }
        var rng = SplitMix64(seed: 14)
        for C in [1, 3, 7, 8, 9, 20] {
            let R = 29
            let ldw = C + 1
            let w = (0..<(R * ldw)).map { _ in rng.nextFloat() * 2 - 1 }
            let x = (0..<(2 * C)).map { _ in rng.nextFloat() * 2 - 1 }
            for m in 0..<2 {
                var want = [Float](repeating: 0, count: R)
                for r in 0..<R {
                    var lane = [Float](repeating: 0, count: 8)
                    for c in 0..<C { lane[c % 8] = lane[c % 8].addingProduct(w[r * ldw + c], x[m * C + c]) }
                    want[r] = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]))
                }
                var got = [Float](repeating: 0, count: R)
                let xm = Array(x[(m * C)..<(m * C + C)])
                lb_gemv_rows_at(LB_KERNELS_AVX2, &got, xm, w, Int32(C), Int32(ldw), 0, Int32(R), 1)
                #expect(got == want, "gemv rows C \(C) x row \(m)")
                var batched = [Float](repeating: 0, count: 2 * R)
                lb_gemm_rows_at(LB_KERNELS_AVX2, &batched, Int32(R), x, Int32(C), 2, w, Int32(C), Int32(ldw), 0, Int32(R), 1)
                #expect(Array(batched[(m * R)..<(m * R + R)]) == want, "gemm rows C \(C) x row \(m)")
            }
        }
    }

    /// Each output's sum runs in one order whatever the split: the same
    /// bits from one call as from many small ones.
    @Test func splitDoesNotChangeBits() {
        var rng = SplitMix64(seed: 13)
        let K = 200
        let N = 300
        let w = (0..<(K * N)).map { _ in rng.nextFloat() * 2 - 1 }
        let x = (0..<K).map { _ in rng.nextFloat() * 2 - 1 }
        for level in Self.levels {
            var whole = [Float](repeating: 0, count: N)
            var pieces = whole
            lb_gemv_cols_at(level, &whole, x, w, Int32(K), Int32(N), 0, Int32(N), 1)
            var n0 = 0
            while n0 < N {
                let n1 = min(N, n0 + 1 + n0 % 37); lb_gemv_cols_at(level, &pieces, x, w, Int32(K), Int32(N), Int32(n0), Int32(n1), 1);
                n0 = n1
            }
            #expect(whole == pieces, "cols level \(level)")
            var rw = [Float](repeating: 0, count: K)
            var rp = rw
            lb_gemv_rows_at(level, &rw, Array(w.prefix(N)), w, Int32(N), Int32(N), 0, Int32(K), 1)
            var r0 = 0
            while r0 < K {
                let r1 = min(K, r0 + 1 + r0 % 5);
                lb_gemv_rows_at(level, &rp, Array(w.prefix(N)), w, Int32(N), Int32(N), Int32(r0), Int32(r1), 1); r0 = r1
            }
            #expect(rw == rp, "rows level \(level)")
        }
    }

    /// The pool runs every chunk exactly once, also when jobs nest and when
    /// several threads submit at once (the later ones run their own chunks).
    /// The few-row kernels (CLoraSupport/gemm_small.c) give, for every row of
    /// x, the decode kernel's result on that row bit for bit, at every level:
    /// a sequence's numbers in a batched step are its solo numbers. Shapes
    /// cover row groups of 1–6, column panels with tails, K across the cols
    /// kernel's tiles (32 rows up to 32 rows of x, 64 beyond), N across tiles
    /// of 512 columns with a short last tile (2048 for one row on AVX2), more
    /// rows of x than the AVX2 kernel packs at once (132), rows of W and x
    /// across the AVX2 rows kernel's 3 × 4 tiles, C with vector tails, and
    /// split column ranges.
    @Test func fewRowKernelsEqualDecodeKernelsPerRow() {
        var rng = SplitMix64(seed: 13)
        for (M, K, N) in [
            (1, 1, 1), (2, 3, 17), (7, 65, 200), (13, 130, 80), (6, 768, 2304), (16, 769, 33), (3, 100, 1_300), (40, 70, 300),
            (1, 41, 2_100), (33, 70, 530), (140, 20, 40),
            // Split by the AVX2 level: a tail past 8·(part/8), a second part
            // for more rows than fit on the stack, more than 132 rows.
            (16, 769, 600), (40, 512, 300), (140, 300, 530),
        ] {
            let ldw = N + 3
            let ldx = K + 1
            let ldy = N + 5
            let w = (0..<(K * ldw)).map { _ in rng.nextFloat() * 2 - 1 }
            let x = (0..<(M * ldx)).map { _ in rng.nextFloat() * 2 - 1 }
            let y0 = (0..<(M * ldy)).map { _ in rng.nextFloat() }
            for level in Self.levels {
                for beta0: Int32 in [0, 1] {
                    let cut = N / 3
                    var batched = y0
                    lb_gemm_cols_at(level, &batched, Int32(ldy), x, Int32(ldx), Int32(M), w, Int32(K), Int32(ldw), 0, Int32(cut), beta0)
                    lb_gemm_cols_at(
                        level, &batched, Int32(ldy), x, Int32(ldx), Int32(M), w, Int32(K), Int32(ldw), Int32(cut), Int32(N), beta0)
                    var solo = y0
                    for m in 0..<M {
                        solo.withUnsafeMutableBufferPointer { yp in
                            x.withUnsafeBufferPointer { xp in
                                lb_gemv_cols_at(
                                    level, yp.baseAddress! + m * ldy, xp.baseAddress! + m * ldx, w, Int32(K), Int32(ldw), 0, Int32(N), beta0
                                )
                            }
                        }
                    }
                    #expect(batched == solo, "cols level \(level) M \(M) K \(K) N \(N) beta0 \(beta0)")
                }
            }
        }
        for (M, R, C) in [(1, 1, 1), (2, 7, 15), (7, 9, 48), (13, 130, 768), (5, 6, 769), (16, 50, 8), (17, 23, 37)] {
            let ldw = C + 2
            let ldx = C + 3
            let ldy = R + 1
            let w = (0..<(R * ldw)).map { _ in rng.nextFloat() * 2 - 1 }
            let x = (0..<(M * ldx)).map { _ in rng.nextFloat() * 2 - 1 }
            let y0 = (0..<(M * ldy)).map { _ in rng.nextFloat() }
            for level in Self.levels {
                for beta0: Int32 in [0, 1] {
                    let cut = R / 2 + 1
                    var batched = y0
                    lb_gemm_rows_at(level, &batched, Int32(ldy), x, Int32(ldx), Int32(M), w, Int32(C), Int32(ldw), 0, Int32(cut), beta0)
                    lb_gemm_rows_at(
                        level, &batched, Int32(ldy), x, Int32(ldx), Int32(M), w, Int32(C), Int32(ldw), Int32(cut), Int32(R), beta0)
                    var solo = y0
                    for m in 0..<M {
                        solo.withUnsafeMutableBufferPointer { yp in
                            x.withUnsafeBufferPointer { xp in
                                lb_gemv_rows_at(
                                    level, yp.baseAddress! + m * ldy, xp.baseAddress! + m * ldx, w, Int32(C), Int32(ldw), 0, Int32(R), beta0
                                )
                            }
                        }
                    }
                    #expect(batched == solo, "rows level \(level) M \(M) R \(R) C \(C) beta0 \(beta0)")
                }
            }
        }
    }

    @Test func poolRunsEveryChunkOnce() throws {
        try BLAS.load()
        let saved = BLAS.threads
        defer { BLAS.threads = saved }
        BLAS.threads = 3
        let threads = 4
        let rounds = 300
        let count = 1000
        let results = UnsafeMutablePointer<Int32>.allocate(capacity: threads * count)
        defer { results.deallocate() }
        results.initialize(repeating: 0, count: threads * count)
        let box = UncheckedBox(results)
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let mine = box.value + t * count
            for round in 0..<rounds {
                parallelChunks(count, minChunk: 7) { _, r in
                    // A nested split runs on the calling worker.
                    parallelChunks(r.count) { _, inner in
                        for i in inner { mine[r.lowerBound + i] &+= 1 }
                    }
                }
                if round % 100 == 0 { usleep(100) }
            }
        }
        for t in 0..<threads {
            #expect((0..<count).allSatisfy { results[t * count + $0] == Int32(rounds) }, "thread \(t)")
        }
    }
}

private struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
