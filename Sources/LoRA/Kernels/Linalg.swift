import CLoraSupport

// Dense factorisations through LAPACKE (row-major), for the adapter algebra.

public struct SVDResult {
    /// U [m, k], S [k] (descending), Vt [k, n] with k = min(m, n).
    public var u: [Float]
    public var s: [Float]
    public var vt: [Float]
    public let m: Int, n: Int, k: Int
}

public enum Linalg {
    static func check(_ info: Int32, _ what: String) throws {
        if info == -1000 { throw LoraError.backend("LAPACKE is not available (install liblapacke; scripts/bootstrap.sh does)") }
        if info < 0 { throw LoraError.invalidArgument("\(what): LAPACK rejected argument \(-info)") }
        if info > 0 { throw LoraError.numerical("\(what) did not converge (LAPACK info \(info))") }
    }

    static func checkFinite(_ a: [Float], _ what: String) throws {
        for x in a where !x.isFinite { throw LoraError.numerical("\(what): the matrix holds NaN or infinite values") }
    }

    /// Thin SVD of a [m, n] row-major (sgesdd).
    public static func svd(_ a: [Float], m: Int, n: Int) throws -> SVDResult {
        guard m >= 1, n >= 1, a.count == m * n else { throw LoraError.invalidArgument("svd: bad shape [\(m), \(n)]") }
        try checkFinite(a, "svd")
        try BLAS.load()
        let k = min(m, n)
        var work = a
        var s = [Float](repeating: 0, count: k), u = [Float](repeating: 0, count: m * k), vt = [Float](repeating: 0, count: k * n)
        let info = work.withUnsafeMutableBufferPointer { w in
            s.withUnsafeMutableBufferPointer { sp in
                u.withUnsafeMutableBufferPointer { up in
                    vt.withUnsafeMutableBufferPointer { vp in
                        lb_sgesdd(CChar(UInt8(ascii: "S")), Int32(m), Int32(n), w.baseAddress, Int32(n), sp.baseAddress,
                                  up.baseAddress, Int32(k), vp.baseAddress, Int32(n))
                    }
                }
            }
        }
        try check(info, "sgesdd")
        return SVDResult(u: u, s: s, vt: vt, m: m, n: n, k: k)
    }

    /// Thin QR of a [m, n] row-major with m ≥ n: Q [m, n] with orthonormal columns, R [n, n] upper triangular.
    public static func qr(_ a: [Float], m: Int, n: Int) throws -> (q: [Float], r: [Float]) {
        guard m >= n, n >= 1, a.count == m * n else { throw LoraError.invalidArgument("qr: bad shape [\(m), \(n)] (needs m ≥ n)") }
        try checkFinite(a, "qr")
        try BLAS.load()
        var q = a
        var tau = [Float](repeating: 0, count: n)
        var info = q.withUnsafeMutableBufferPointer { qp in
            tau.withUnsafeMutableBufferPointer { lb_sgeqrf(Int32(m), Int32(n), qp.baseAddress, Int32(n), $0.baseAddress) }
        }
        try check(info, "sgeqrf")
        var r = [Float](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { r[i * n + j] = q[i * n + j] } }
        info = q.withUnsafeMutableBufferPointer { qp in
            tau.withUnsafeBufferPointer { lb_sorgqr(Int32(m), Int32(n), Int32(n), qp.baseAddress, Int32(n), $0.baseAddress) }
        }
        try check(info, "sorgqr")
        return (q, r)
    }
}
