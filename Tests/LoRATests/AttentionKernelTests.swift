import CLoraSupport
import Foundation
import Testing

/// attention.c's product at each instruction-set level the CPU runs
/// (AVX2, AVX-512) against its definition written out in Swift: each
/// output one fused multiply-add per k in k order, from zero or y, then
/// times alpha. Equal bit for bit (compared with ==, so a skipped masked
/// zero term may turn −0 into +0), so the AVX2 and AVX-512 forms agree with
/// each other too, whatever their tiles.
@Suite struct AttentionKernelTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var M: Int, N: Int, K: Int
        var transX: Bool
        var beta0: Bool
        var alpha: Float
        var causal: Int32
        var diag: Int
        var testDescription: String {
            "M=\(M) N=\(N) K=\(K) transX=\(transX) beta0=\(beta0) alpha=\(alpha) causal=\(causal) diag=\(diag)"
        }
    }

    /// Full tiles and every partial one (rows 1–5 of 6, 1–15 columns of a
    /// 16- or 64-column tile, a k-block of 64 and a remainder), each causal
    /// form with the diagonal inside, before and past the product.
    static let cases: [Case] = {
        var c: [Case] = []
        for (M, N, K) in [(1, 1, 1), (6, 16, 64), (7, 17, 65), (64, 64, 64), (13, 130, 64), (70, 64, 150), (5, 9, 3)] {
            for transX in [false, true] {
                c.append(Case(M: M, N: N, K: K, transX: transX, beta0: true, alpha: 0.125, causal: 0, diag: 0))
                c.append(Case(M: M, N: N, K: K, transX: transX, beta0: false, alpha: 1, causal: 0, diag: 0))
            }
        }
        for diag in [-3, 0, 5, 40, 200] {
            c.append(Case(M: 64, N: 130, K: 64, transX: false, beta0: true, alpha: 0.125, causal: LB_ATTN_CAUSAL_COLS, diag: diag))
            c.append(Case(M: 64, N: 64, K: 130, transX: false, beta0: true, alpha: 1, causal: LB_ATTN_CAUSAL_K_UPTO, diag: diag))
            c.append(Case(M: 130, N: 64, K: 64, transX: true, beta0: false, alpha: 1, causal: LB_ATTN_CAUSAL_K_FROM, diag: diag))
        }
        return c
    }()

    @Test(arguments: cases)
    func everyLevelEqualsTheFusedSumInKOrder(_ c: Case) throws {
        let levels = [LB_KERNELS_AVX2, LB_KERNELS_AVX512].filter { lb_attn_available_at($0) != 0 }
        guard !levels.isEmpty else { return }
        var state: UInt64 = 0x6174_746e &+ UInt64(c.M * 7919 + c.N * 131 + c.K + c.diag * 3 + Int(c.causal) * 17)
        func next() -> Float {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
        let ldx = (c.transX ? c.M : c.K) + 3
        let ldw = c.N + 5
        let ldy = c.N + 2
        var x = (0..<ldx * (c.transX ? c.K : c.M)).map { _ in next() }
        let (sxm, sxk) = c.transX ? (1, ldx) : (ldx, 1)
        // The causal forms' promise about x: masked terms are zero.
        for m in 0..<c.M {
            for k in 0..<c.K {
                let hidden =
                    (c.causal == LB_ATTN_CAUSAL_K_UPTO && k > c.diag + m)
                    || (c.causal == LB_ATTN_CAUSAL_K_FROM && k < m - c.diag)
                if hidden { x[m * sxm + k * sxk] = 0 }
            }
        }
        let w = (0..<ldw * c.K).map { _ in next() }
        let y0 = (0..<ldy * c.M).map { _ in next() }
        var want = y0
        for m in 0..<c.M {
            for n in 0..<c.N {
                var a: Float = c.beta0 ? 0 : y0[m * ldy + n]
                for k in 0..<c.K { a = a.addingProduct(x[m * sxm + k * sxk], w[k * ldw + n]) }
                want[m * ldy + n] = c.alpha != 1 ? a * c.alpha : a
            }
        }
        for level in levels {
            var y = y0
            y.withUnsafeMutableBufferPointer { yp in
                lb_attn_gemm_at(
                    level, yp.baseAddress!, Int32(ldy), x, sxm, sxk, Int32(c.M), w, Int32(ldw), Int32(c.K), Int32(c.N),
                    c.beta0 ? 1 : 0, c.alpha, c.causal, c.diag)
            }
            var bad = 0
            for m in 0..<c.M {
                // COLS: row m defines columns n ≤ diag + m only.
                let defined = c.causal == LB_ATTN_CAUSAL_COLS ? min(c.N, max(0, c.diag + m + 1)) : c.N
                for n in 0..<defined where y[m * ldy + n] != want[m * ldy + n] { bad += 1 }
                // Columns past a row's end are never written.
                for n in c.N..<ldy where y[m * ldy + n] != y0[m * ldy + n] { bad += 1 }
            }
            #expect(bad == 0, "level \(level): \(bad) outputs differ")
        }
    }

    /// The transpose at the CPU's level: an exact copy.
    @Test func transposeCopiesExactly() {
        guard lb_attn_available() != 0 else { return }
        for (rows, cols) in [(1, 1), (7, 64), (8, 64), (17, 5), (130, 64)] {
            let lds = cols + 3
            let ldd = rows + 5
            let src = (0..<rows * lds).map { Float($0) * 0.5 - 3 }
            var dst = [Float](repeating: -1, count: cols * ldd)
            dst.withUnsafeMutableBufferPointer { d in
                lb_attn_transpose(d.baseAddress!, Int32(ldd), src, Int32(lds), Int32(rows), Int32(cols))
            }
            var bad = 0
            for c in 0..<cols {
                for r in 0..<ldd where dst[c * ldd + r] != (r < rows ? src[r * lds + c] : -1) { bad += 1 }
            }
            #expect(bad == 0, "\(rows)×\(cols): \(bad) wrong")
        }
    }
}
