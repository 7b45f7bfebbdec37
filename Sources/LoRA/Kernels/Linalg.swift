import CLoraSupport

// Dense factorisations through LAPACKE (row-major), for the adapter algebra.

package struct SVDResult {
    /// U [m, k], S [k] (descending), Vt [k, n] with k = min(m, n).
    package var u: [Float]
    package var s: [Float]
    package var vt: [Float]
    package let m: Int, n: Int, k: Int
}

package enum Linalg {
    static func check(_ info: Int32, _ what: String) throws {
        if info == -1000 { throw LoRAError.backend("LAPACKE is not available (install liblapacke; scripts/bootstrap.sh does)") }
        if info < 0 { throw LoRAError.invalidArgument("\(what): LAPACK rejected argument \(-info)") }
        if info > 0 { throw LoRAError.numerical("\(what) did not converge (LAPACK info \(info))") }
    }

    static func checkFinite(_ a: [Float], _ what: String) throws {
        for x in a where !x.isFinite { throw LoRAError.numerical("\(what): the matrix holds NaN or infinite values") }
    }

    /// Thin SVD of a [m, n] row-major (sgesdd).
    package static func svd(_ a: [Float], m: Int, n: Int) throws -> SVDResult {
        guard m >= 1, n >= 1, a.count == m * n else { throw LoRAError.invalidArgument("svd: bad shape [\(m), \(n)]") }
        try checkFinite(a, "svd")
        try BLAS.load()
        let k = min(m, n)
        var work = a
        var s = [Float](repeating: 0, count: k)
        var u = [Float](repeating: 0, count: m * k)
        var vt = [Float](repeating: 0, count: k * n)
        let info = work.withUnsafeMutableBufferPointer { w in
            s.withUnsafeMutableBufferPointer { sp in
                u.withUnsafeMutableBufferPointer { up in
                    vt.withUnsafeMutableBufferPointer { vp in
                        lb_sgesdd(
                            CChar(UInt8(ascii: "S")), Int32(m), Int32(n), w.baseAddress, Int32(n), sp.baseAddress,
                            up.baseAddress, Int32(k), vp.baseAddress, Int32(n))
                    }
                }
            }
        }
        try check(info, "sgesdd")
        return SVDResult(u: u, s: s, vt: vt, m: m, n: n, k: k)
    }

    /// Thin QR of a [m, n] row-major (sgeqrf + sorgqr), k = min(m, n): Q [m, k]
    /// with orthonormal columns, R [k, n] upper triangular (trapezoidal when
    /// m < n). LAPACK's Householder signs, as torch.linalg.qr.
    package static func qr(_ a: [Float], m: Int, n: Int) throws -> (q: [Float], r: [Float]) {
        guard m >= 1, n >= 1, a.count == m * n else { throw LoRAError.invalidArgument("qr: bad shape [\(m), \(n)]") }
        try checkFinite(a, "qr")
        try BLAS.load()
        let k = min(m, n)
        var work = a
        var tau = [Float](repeating: 0, count: k)
        var info = work.withUnsafeMutableBufferPointer { wp in
            tau.withUnsafeMutableBufferPointer { lb_sgeqrf(Int32(m), Int32(n), wp.baseAddress, Int32(n), $0.baseAddress) }
        }
        try check(info, "sgeqrf")
        var r = [Float](repeating: 0, count: k * n)
        for i in 0..<k { for j in i..<n { r[i * n + j] = work[i * n + j] } }
        // Q is formed in the first k columns (row stride n).
        info = work.withUnsafeMutableBufferPointer { wp in
            tau.withUnsafeBufferPointer { lb_sorgqr(Int32(m), Int32(k), Int32(k), wp.baseAddress, Int32(n), $0.baseAddress) }
        }
        try check(info, "sorgqr")
        if k == n { return (work, r) }
        var q = [Float](repeating: 0, count: m * k)
        for i in 0..<m { for j in 0..<k { q[i * k + j] = work[i * n + j] } }
        return (q, r)
    }

    /// The rank-q truncated SVD of a [m, n] row-major by randomized subspace
    /// iteration (Halko, Martinsson & Tropp 2009, algorithms 4.4 and 5.1), as
    /// torch.svd_lowrank(a, q, niter) computes it: work on the tall one of a
    /// and aᵀ; a Gaussian test matrix Ω [cols, q] from `rng`; Q = qr(a·Ω);
    /// `niter` times Q = qr(aᵀ·Q), Q = qr(a·Q); then the SVD of the small
    /// Qᵀ·a [q, cols]. Returns U [m, q], S [q] (descending), Vt [q, n].
    /// Without oversampling the subspace is exact only for a rank-q matrix;
    /// otherwise its error shrinks like (σ_{q+1}/σ_q)^(2·niter+1).
    package static func svdLowRank(
        _ a: [Float], m: Int, n: Int, rank q: Int, niter: Int,
        rng: inout SplitMix64
    ) throws -> SVDResult {
        guard m >= 1, n >= 1, a.count == m * n else { throw LoRAError.invalidArgument("svdLowRank: bad shape [\(m), \(n)]") }
        guard q >= 1, q <= min(m, n) else {
            throw LoRAError.invalidArgument("svdLowRank: rank \(q) must be in 1...\(min(m, n)) for a [\(m), \(n)] matrix")
        }
        guard niter >= 0 else { throw LoRAError.invalidArgument("svdLowRank: niter must be >= 0") }
        try checkFinite(a, "svdLowRank")
        try BLAS.load()
        // T = a (m ≥ n) or aᵀ (m < n): tall, [rows, cols].
        let transposed = m < n
        let rows = transposed ? n : m
        let cols = transposed ? m : n
        // T·X for X [cols, q] → [rows, q]; Tᵀ·Y for Y [rows, q] → [cols, q].
        func tTimes(_ x: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: rows * q)
            a.withUnsafeBufferPointer { ap in
                x.withUnsafeBufferPointer { xp in
                    out.withUnsafeMutableBufferPointer { op in
                        gemm(
                            transA: transposed, transB: false, M: rows, N: q, K: cols, alpha: 1, A: ap.baseAddress!, lda: n,
                            B: xp.baseAddress!, ldb: q, beta: 0, C: op.baseAddress!, ldc: q)
                    }
                }
            }
            return out
        }
        func tTransposedTimes(_ y: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: cols * q)
            a.withUnsafeBufferPointer { ap in
                y.withUnsafeBufferPointer { yp in
                    out.withUnsafeMutableBufferPointer { op in
                        gemm(
                            transA: !transposed, transB: false, M: cols, N: q, K: rows, alpha: 1, A: ap.baseAddress!, lda: n,
                            B: yp.baseAddress!, ldb: q, beta: 0, C: op.baseAddress!, ldc: q)
                    }
                }
            }
            return out
        }
        var omega = [Float](repeating: 0, count: cols * q)
        for i in 0..<omega.count { omega[i] = rng.nextGaussian() }
        var basis = try qr(tTimes(omega), m: rows, n: q).q
        for _ in 0..<niter {
            basis = try qr(tTransposedTimes(basis), m: cols, n: q).q
            basis = try qr(tTimes(basis), m: rows, n: q).q
        }
        // Small = Qᵀ·T [q, cols] = (Tᵀ·Q)ᵀ.
        let c = tTransposedTimes(basis)
        var small = [Float](repeating: 0, count: q * cols)
        for i in 0..<cols { for j in 0..<q { small[j * cols + i] = c[i * q + j] } }
        let core = try svd(small, m: q, n: cols)  // u [q, q], s [q], vt [q, cols]
        // T ≈ (Q·u) · S · vt.
        var tu = [Float](repeating: 0, count: rows * q)
        basis.withUnsafeBufferPointer { bp in
            core.u.withUnsafeBufferPointer { up in
                tu.withUnsafeMutableBufferPointer { op in
                    gemm(
                        transA: false, transB: false, M: rows, N: q, K: q, alpha: 1, A: bp.baseAddress!, lda: q,
                        B: up.baseAddress!, ldb: q, beta: 0, C: op.baseAddress!, ldc: q)
                }
            }
        }
        if !transposed { return SVDResult(u: tu, s: core.s, vt: core.vt, m: m, n: n, k: q) }
        // a = Tᵀ ≈ vtᵀ · S · (Q·u)ᵀ: U = vtᵀ [m, q], Vt = (Q·u)ᵀ [q, n].
        var u = [Float](repeating: 0, count: m * q)
        var vt = [Float](repeating: 0, count: q * n)
        for i in 0..<m { for j in 0..<q { u[i * q + j] = core.vt[j * m + i] } }
        for i in 0..<n { for j in 0..<q { vt[j * n + i] = tu[i * q + j] } }
        return SVDResult(u: u, s: core.s, vt: vt, m: m, n: n, k: q)
    }
}
