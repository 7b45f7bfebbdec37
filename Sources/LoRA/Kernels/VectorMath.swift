import Foundation

// Vectorised exp and tanh for the elementwise kernels (GELU, softmax):
// libm's scalar expf/tanhf would cost more than the matrix products they sit
// between. Accuracy: within 2 ulp of expf over the float range (checked
// against libm in KernelTests).

public typealias Vec = SIMD16<Float>
public typealias VecI = SIMD16<Int32>

@inline(__always)
func vexp(_ xIn: Vec) -> Vec {
    let x = xIn.clamped(lowerBound: Vec(repeating: -87.33654), upperBound: Vec(repeating: 88.72283))
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
    // 2^n: n in [-126, 128]; split in two factors so 2^128 and subnormals work.
    let ni = unsafeBitCast(t, to: VecI.self) &- unsafeBitCast(magic, to: VecI.self)
    let n1 = ni &>> 1
    let n2 = ni &- n1
    let s1 = unsafeBitCast((n1 &+ 127) &<< 23, to: Vec.self)
    let s2 = unsafeBitCast((n2 &+ 127) &<< 23, to: Vec.self)
    var y = p * s1 * s2
    y.replace(with: 0, where: xIn .< Vec(repeating: -87.33654))
    return y
}

@inline(__always)
func vtanh(_ x: Vec) -> Vec {
    // tanh(x) = sign(x) · (1 − 2 / (exp(2|x|) + 1)); small |x| by its series
    // to keep relative accuracy near 0.
    let ax = unsafeBitCast(unsafeBitCast(x, to: SIMD16<UInt32>.self) & SIMD16<UInt32>(repeating: 0x7FFF_FFFF), to: Vec.self)
    let e = vexp(pointwiseMin(ax * 2, Vec(repeating: 40)))
    var big = Vec(repeating: 1) - Vec(repeating: 2) / (e + Vec(repeating: 1))
    let x2 = x * x
    // x − x³/3 + 2x⁵/15 − 17x⁷/315 + 62x⁹/2835 for |x| < 0.0625
    var small = Vec(repeating: 62.0 / 2835.0)
    small = small * x2 - Vec(repeating: 17.0 / 315.0)
    small = small * x2 + Vec(repeating: 2.0 / 15.0)
    small = small * x2 - Vec(repeating: 1.0 / 3.0)
    small = small * x2 * ax + ax
    big.replace(with: small, where: ax .< Vec(repeating: 0.0625))
    let neg = x .< Vec(repeating: 0)
    big.replace(with: -big, where: neg)
    return big
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
