import CLoraSupport
import Foundation
import Testing

@testable import LoRA

/// BF16/F16/Q8_0 weights (CLoraSupport/lowp.c): conversions against Swift's
/// own Float16 and the bit definition of BF16, ggml's Q8_0 rule, and the
/// matrix–vector kernels against the F32 kernels on the dequantized weights,
/// which they must equal bit for bit.
@Suite(.serialized) struct LowPrecisionKernelTests {
    static let dtypes: [Int32] = [LB_DTYPE_BF16, LB_DTYPE_F16, LB_DTYPE_Q8_0]

    @Test func f16ConversionsAreSwiftsFloat16() {
        // Every half value converts exactly to F32.
        for bits in 0...UInt16.max {
            let h = Float16(bitPattern: bits)
            let f = lb_f16_to_f32(bits)
            if h.isNaN { #expect(f.isNaN) } else { #expect(f == Float(h), "f16 \(bits)") }
        }
        // F32 → F16 rounds to nearest even, like Float16(_:), across the range
        // (normal, subnormal, ties, overflow).
        var rng = SplitMix64(seed: 21)
        var samples: [Float] = [
            0, -0, 65504, 65519.99, 65520, 1e-8, 2.9802322e-8, 5.9604645e-8, 6.1035156e-5,
            .infinity, -.infinity, 1.00048828125, 1.00146484375,
        ]
        for _ in 0..<200_000 {
            let e = Int(rng.next() % 40) - 30
            samples.append(
                Float(
                    sign: rng.next() & 1 == 0 ? .plus : .minus, exponent: e,
                    significand: 1 + rng.nextFloat()))
            samples.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())))
        }
        for f in samples where !f.isNaN {
            #expect(lb_f32_to_f16(f) == Float16(f).bitPattern, "f32 \(f) (\(f.bitPattern))")
        }
        #expect(Float16(bitPattern: lb_f32_to_f16(.nan)).isNaN)
    }

    @Test func bf16RoundsToNearestEven() {
        func ref(_ f: Float) -> UInt16 {
            // Round the dropped 16 bits to nearest, ties to an even kept part.
            let u = f.bitPattern
            let keep = u >> 16
            let rest = u & 0xFFFF
            let up = rest > 0x8000 || (rest == 0x8000 && keep & 1 == 1)
            return UInt16(truncatingIfNeeded: up ? keep + 1 : keep)
        }
        var rng = SplitMix64(seed: 22)
        for _ in 0..<200_000 {
            let f = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
            if f.isNaN { #expect(lb_bf16_to_f32(lb_f32_to_bf16(f)).isNaN); continue }
            #expect(lb_f32_to_bf16(f) == ref(f), "\(f)")
            #expect(lb_bf16_to_f32(lb_f32_to_bf16(f)).bitPattern == UInt32(ref(f)) << 16)
        }
    }

    /// ggml's quantize_row_q8_0_ref, written out: d = amax/127, q = roundf(w/d).
    @Test func q8BlocksFollowGGML() {
        var rng = SplitMix64(seed: 23)
        let K = 70
        let N = 5  // two full blocks of 32 and a partial one of 6
        var w = (0..<(K * N)).map { _ in (rng.nextFloat() - 0.5) * 3 }
        for n in 0..<N { w[33 * N + n] = 0 }
        for k in 64..<K { w[k * N + 2] = 0 }  // an all-zero block: d = 0, q = 0
        var q = [Int8](repeating: 0, count: K * N)
        var d = [UInt16](repeating: 0, count: 3 * N)
        #expect(lb_quantize_q8_0_cols(&q, &d, w, Int32(K), Int32(N)) == 0)
        for n in 0..<N {
            for kb in 0..<3 {
                let rows = (kb * 32)..<min(K, kb * 32 + 32)
                let amax = rows.map { abs(w[$0 * N + n]) }.max() ?? 0
                let dd = amax / 127
                let inv: Float = dd != 0 ? 1 / dd : 0
                #expect(d[kb * N + n] == Float16(dd).bitPattern)
                for k in rows { #expect(q[k * N + n] == Int8((w[k * N + n] * inv).rounded(.toNearestOrAwayFromZero))) }
            }
        }
        // Rows layout: the transpose's blocks.
        var wt = [Float](repeating: 0, count: K * N)
        for k in 0..<K { for n in 0..<N { wt[n * K + k] = w[k * N + n] } }
        var qr = [Int8](repeating: 0, count: K * N)
        var dr = [UInt16](repeating: 0, count: N * 3)
        #expect(lb_quantize_q8_0_rows(&qr, &dr, wt, Int32(N), Int32(K)) == 0)
        for n in 0..<N { for kb in 0..<3 { #expect(dr[n * 3 + kb] == d[kb * N + n]) } }
        for k in 0..<K { for n in 0..<N { #expect(qr[n * K + k] == q[k * N + n]) } }
        w[5] = .nan
        #expect(lb_quantize_q8_0_cols(&q, &d, w, Int32(K), Int32(N)) == -1)
        w[5] = .infinity
        #expect(lb_quantize_q8_0_rows(&qr, &dr, w, Int32(N), Int32(K)) == -1)
        w[5] = 1e8  // the block's scale would overflow F16
        #expect(lb_quantize_q8_0_cols(&q, &d, w, Int32(K), Int32(N)) == -1)
    }

    /// Weights stored as dtype, plus their F32 dequantization.
    func store(_ dtype: Int32, _ w: [Float], rows: Int, cols: Int, colsLayout: Bool) -> (raw: [UInt8], d: [UInt16], f32: [Float]) {
        var raw: [UInt8]
        var d: [UInt16] = [0]
        switch dtype {
        case LB_DTYPE_BF16, LB_DTYPE_F16:
            let h = w.map { dtype == LB_DTYPE_BF16 ? lb_f32_to_bf16($0) : lb_f32_to_f16($0) }
            raw = h.withUnsafeBytes { Array($0) }
        default:
            var q = [Int8](repeating: 0, count: rows * cols)
            if colsLayout {
                d = [UInt16](repeating: 0, count: (rows + 31) / 32 * cols)
                _ = lb_quantize_q8_0_cols(&q, &d, w, Int32(rows), Int32(cols))
            } else {
                d = [UInt16](repeating: 0, count: rows * ((cols + 31) / 32))
                _ = lb_quantize_q8_0_rows(&q, &d, w, Int32(rows), Int32(cols))
            }
            raw = q.withUnsafeBytes { Array($0) }
        }
        var f = [Float](repeating: 0, count: rows * cols)
        raw.withUnsafeBytes { rp in
            if colsLayout {
                lb_dequant_cols(dtype, &f, Int32(cols), rp.baseAddress, d, Int32(rows), Int32(cols), 0, Int32(cols))
            } else {
                lb_dequant_rows(dtype, &f, Int32(cols), rp.baseAddress, d, Int32(cols), Int32(cols), 0, Int32(rows))
            }
        }
        return (raw, d, f)
    }

    /// Also with BF16/F16 converted in the few-row kernels' registers (the
    /// wide decode products' path on AMD CPUs, and Q8_0 rows').
    @Test(arguments: [0, 1] as [Int32])
    func kernelsEqualF32OnDequantizedWeights(inRegisters: Int32) {
        lb_set_lowp_in_registers(inRegisters)
        defer { lb_set_lowp_in_registers(-1) }
        var rng = SplitMix64(seed: 24)
        let levels: [Int32] = [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512].filter { lb_kernels_for($0) != nil }
        for (K, N) in [(1, 1), (9, 7), (70, 8), (40, 33), (96, 300), (768, 2304 / 8), (64, 768), (100, 2_500), (40, 4_500)] {
            let w = (0..<(K * N)).map { _ in (rng.nextFloat() - 0.5) * 0.4 }
            let x = (0..<max(K, N)).map { _ in rng.nextFloat() - 0.5 }
            let y0 = (0..<max(K, N)).map { _ in rng.nextFloat() }
            for dtype in Self.dtypes {
                let c = store(dtype, w, rows: K, cols: N, colsLayout: true)
                let r = store(dtype, w, rows: K, cols: N, colsLayout: false)
                for level in levels {
                    // The F32 kernel the reduced-precision one mirrors at this
                    // level; Q8_0 keeps k order where the AVX2 level splits
                    // F32's sums (gemm_small.c): the baseline's.
                    let ref = level
                    let split = lb_cols_split_at(level, LB_DTYPE_F32, Int32(K), Int32(N)) > 0
                    let colsRef = dtype == LB_DTYPE_Q8_0 && split ? LB_KERNELS_BASELINE : level
                    for beta0: Int32 in [0, 1] {
                        var a = Array(y0.prefix(N))
                        var b = a
                        lb_gemv_cols_at(colsRef, &a, x, c.f32, Int32(K), Int32(N), 0, Int32(N), beta0)
                        c.raw.withUnsafeBytes {
                            lb_gemv_cols_lowp(level, dtype, &b, x, $0.baseAddress, c.d, Int32(K), Int32(N), 0, Int32(N / 2), beta0)
                        }
                        c.raw.withUnsafeBytes {
                            lb_gemv_cols_lowp(level, dtype, &b, x, $0.baseAddress, c.d, Int32(K), Int32(N), Int32(N / 2), Int32(N), beta0)
                        }
                        #expect(a == b, "cols dtype \(dtype) level \(level) K \(K) N \(N)")
                        var ra = Array(y0.prefix(K))
                        var rb = ra
                        lb_gemv_rows_at(ref, &ra, x, r.f32, Int32(N), Int32(N), 0, Int32(K), beta0)
                        r.raw.withUnsafeBytes {
                            lb_gemv_rows_lowp(level, dtype, &rb, x, $0.baseAddress, r.d, Int32(N), Int32(N), 0, Int32(K), beta0)
                        }
                        #expect(ra == rb, "rows dtype \(dtype) level \(level) K \(K) N \(N)")
                    }
                }
            }
        }
    }

    /// The panels prefill and training multiply: every level gives the
    /// exact dequantized weights, also for panels not starting at column 0.
    @Test func panelsAreTheDequantizedWeightsAtEveryLevel() {
        var rng = SplitMix64(seed: 25)
        let levels: [Int32] = [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512].filter { lb_kernels_for($0) != nil }
        for (R, C) in [(1, 1), (9, 7), (70, 40), (65, 100)] {
            let w = (0..<(R * C)).map { _ in (rng.nextFloat() - 0.5) * 0.4 }
            for dtype in Self.dtypes {
                for colsLayout in [true, false] {
                    let s = store(dtype, w, rows: R, cols: C, colsLayout: colsLayout)
                    for level in levels {
                        for (r0, r1, c0, c1) in [(0, R, 0, C), (R / 3, R, C / 2 / 8 * 8, C), (1 % R, R, 0, max(1, C - 3))] {
                            let ldd = c1 - c0 + 2
                            var out = [Float](repeating: .nan, count: (r1 - r0) * ldd)
                            s.raw.withUnsafeBytes {
                                lb_dequant_panel_at(
                                    level, dtype, colsLayout ? 1 : 0, &out, Int32(ldd), $0.baseAddress, s.d, Int32(C), Int32(r0),
                                    Int32(r1), Int32(c0), Int32(c1))
                            }
                            var same = true
                            for r in r0..<r1 {
                                for c in c0..<c1 where out[(r - r0) * ldd + c - c0] != s.f32[r * C + c] { same = false }
                                for c in c1 - c0..<ldd where !out[(r - r0) * ldd + c].isNaN { same = false }
                            }
                            #expect(same, "panel dtype \(dtype) cols \(colsLayout) level \(level) \(R)x\(C) [\(r0),\(r1))x[\(c0),\(c1))")
                        }
                    }
                }
            }
        }
    }

    /// Few-row products on tiles converted just before use equal the F32
    /// few-row kernels on the whole dequantized weight, bit for bit, at every
    /// level, in both layouts, over column or row windows and K not a
    /// multiple of the tile (so each row's numbers are its decode result);
    /// BF16 and F16 also converted in the kernels' registers (AVX-512; the
    /// choice on AMD CPUs), at up to 32 rows of x (wide tiles) and above.
    @Test(arguments: [7, 40], [0, 1])
    func fewRowProductsOnTilesEqualTheDequantizedWeightsAtEveryLevel(M: Int, inRegisters: Int32) {
        lb_set_lowp_in_registers(inRegisters)
        defer { lb_set_lowp_in_registers(-1) }
        var rng = SplitMix64(seed: 26)
        let levels: [Int32] = [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512].filter { lb_kernels_for($0) != nil }
        // (300, 260): split by the AVX2 level (gemm_small.c), except Q8_0.
        for (R, C) in [(130, 70), (9, 200), (300, 260)] {
            let w = (0..<(R * C)).map { _ in (rng.nextFloat() - 0.5) * 0.4 }
            for dtype in Self.dtypes {
                for colsLayout in [true, false] {
                    let s = store(dtype, w, rows: R, cols: C, colsLayout: colsLayout)
                    for level in levels {
                        let split = lb_cols_split_at(level, LB_DTYPE_F32, Int32(R), Int32(C)) > 0
                        let colsRef = dtype == LB_DTYPE_Q8_0 && split ? LB_KERNELS_BASELINE : level
                        for beta0: Int32 in [1, 0] {
                            // Columns form: y[M, C] (+)= x[M, R] · W[R, C] over columns [3, C − 1).
                            let xc = (0..<(M * R)).map { _ in rng.nextFloat() - 0.5 }
                            let y0 = (0..<(M * C)).map { _ in rng.nextFloat() }
                            var got = y0
                            var want = y0
                            s.raw.withUnsafeBytes {
                                lb_gemm_cols_lowp_at(
                                    level, dtype, colsLayout ? 1 : 0, &got, Int32(C), xc, Int32(R), Int32(M), $0.baseAddress, s.d,
                                    Int32(R), Int32(C), 3, Int32(C - 1), beta0)
                            }
                            lb_gemm_cols_at(
                                colsRef, &want, Int32(C), xc, Int32(R), Int32(M), s.f32, Int32(R), Int32(C), 3, Int32(C - 1), beta0)
                            #expect(got == want, "cols dtype \(dtype) layout \(colsLayout) level \(level) \(R)x\(C) beta0 \(beta0)")
                            // Rows form: y[M, R] (+)= x[M, C] · W[R, C]ᵀ over rows [1, R), tiles of a few rows.
                            let xr = (0..<(M * C)).map { _ in rng.nextFloat() - 0.5 }
                            let z0 = (0..<(M * R)).map { _ in rng.nextFloat() }
                            var gotR = z0
                            var wantR = z0
                            var tile = [Float](repeating: 0, count: 3 * C)
                            s.raw.withUnsafeBytes {
                                lb_gemm_rows_lowp_at(
                                    level, dtype, colsLayout ? 1 : 0, &gotR, Int32(R), xr, Int32(C), Int32(M), $0.baseAddress, s.d,
                                    Int32(C), 1, Int32(R), beta0, &tile, tile.count)
                            }
                            lb_gemm_rows_at(level, &wantR, Int32(R), xr, Int32(C), Int32(M), s.f32, Int32(C), Int32(C), 1, Int32(R), beta0)
                            #expect(gotR == wantR, "rows dtype \(dtype) layout \(colsLayout) level \(level) \(R)x\(C) beta0 \(beta0)")
                        }
                    }
                }
            }
        }
    }
}
