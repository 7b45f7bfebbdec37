import Foundation

// Vectorised exp and tanh for the elementwise kernels (GELU, softmax):
// libm's scalar expf/tanhf would cost more than the matrix products they sit
// between. Accuracy: within 2 ulp of expf over the float range (checked
// against libm in KernelTests).
//
// Only plain arithmetic, comparisons and bit operations are used: the
// standard library's pointwiseMin/Max and SIMD.replace(with:where:) do not
// vectorise for the baseline x86-64 target (10x slower).

public typealias Vec = SIMD16<Float>
public typealias VecI = SIMD16<Int32>

@inline(__always)
func vselect(_ m: SIMDMask<VecI>, _ a: Vec, _ b: Vec) -> Vec {
    let mi = unsafeBitCast(m, to: VecI.self)
    return unsafeBitCast((unsafeBitCast(a, to: VecI.self) & mi) | (unsafeBitCast(b, to: VecI.self) & ~mi), to: Vec.self)
}
@inline(__always) func vmin(_ a: Vec, _ b: Vec) -> Vec { vselect(a .< b, a, b) }
@inline(__always) func vmax(_ a: Vec, _ b: Vec) -> Vec { vselect(a .> b, a, b) }
@inline(__always) func vabs(_ a: Vec) -> Vec {
    unsafeBitCast(unsafeBitCast(a, to: VecI.self) & VecI(repeating: 0x7FFF_FFFF), to: Vec.self)
}

@inline(__always)
func vexp(_ xIn: Vec) -> Vec {
    let x = vmax(vmin(xIn, Vec(repeating: 88.72283)), Vec(repeating: -87.33654))
    // n = round(x / ln2) by the 1.5·2^23 trick; its bits hold n.
    let magic = Vec(repeating: 12582912.0)
    let t = x * Vec(repeating: 1.44269504088896341) + magic
    let n = t - magic
    var r = x - n * Vec(repeating: 0.693359375)
    r = r - n * Vec(repeating: -2.12194440e-4)
    var p = Vec(repeating: 1.9875691500e-4)
    p = p * r + Vec(repeating: 1.3981999507e-3)
    p = p * r + Vec(repeating: 8.3334519073e-3)
    p = p * r + Vec(repeating: 4.1665795894e-2)
    p = p * r + Vec(repeating: 1.6666665459e-1)
    p = p * r + Vec(repeating: 5.0000001201e-1)
    p = p * (r * r) + r + Vec(repeating: 1)
    // 2^n with n in [-126, 128]: two factors so 2^128 and subnormals work.
    let ni = unsafeBitCast(t, to: VecI.self) &- unsafeBitCast(magic, to: VecI.self)
    let n1 = ni &>> 1
    let n2 = ni &- n1
    let s1 = unsafeBitCast((n1 &+ 127) &<< 23, to: Vec.self)
    let s2 = unsafeBitCast((n2 &+ 127) &<< 23, to: Vec.self)
    let y = p * s1 * s2
    // exp(x) = 0 below the float range (and for -inf).
    let keep = unsafeBitCast(xIn .>= Vec(repeating: -87.33654), to: VecI.self)
    return unsafeBitCast(unsafeBitCast(y, to: VecI.self) & keep, to: Vec.self)
}

@inline(__always)
func vtanh(_ x: Vec) -> Vec {
    // tanh(x) = 1 − 2 / (exp(2x) + 1): absolute error ≈ 1e-7 everywhere
    // (relative accuracy is lost only where |tanh| < 1e-6, harmless here).
    Vec(repeating: 1) - Vec(repeating: 2) / (vexp(x + x) + Vec(repeating: 1))
}

/// 1 / (1 + exp(-x))
@inline(__always)
func vsigmoid(_ x: Vec) -> Vec {
    Vec(repeating: 1) / (Vec(repeating: 1) + vexp(-x))
}

@inline(__always)
func vload(_ p: UnsafePointer<Float>) -> Vec {
    UnsafeRawPointer(p).loadUnaligned(as: Vec.self)
}

@inline(__always)
func vstore(_ v: Vec, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec.self)
}

/// Applies a vector function over n floats (the tail padded through a temporary).
@inline(__always)
func vmap(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, _ n: Int, _ f: (Vec) -> Vec) {
    var i = 0
    while i + 16 <= n {
        vstore(f(vload(inp + i)), out + i)
        i += 16
    }
    if i < n {
        var tmp = Vec(repeating: 0)
        for j in 0..<(n - i) { tmp[j] = inp[i + j] }
        let r = f(tmp)
        for j in 0..<(n - i) { out[i + j] = r[j] }
    }
}

/// Scalar entry points over the vector code (for tests and odd sizes).
public func fastExp(_ x: Float) -> Float { vexp(Vec(repeating: x))[0] }
public func fastTanh(_ x: Float) -> Float { vtanh(Vec(repeating: x))[0] }
