import Foundation

/// SplitMix64: a small seeded generator whose whole state is one UInt64, so
/// it can be saved in checkpoints and resumed bit for bit.
package struct SplitMix64: RandomNumberGenerator, Sendable, Equatable {
    package var state: UInt64

    package init(seed: UInt64) { state = seed }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    package mutating func nextFloat() -> Float { Float(next() >> 40) * (1.0 / 16777216.0) }

    /// Uniform in [0, 1) with 53 random bits.
    package mutating func nextDouble() -> Double { Double(next() >> 11) * (1.0 / 9007199254740992.0) }

    /// Standard normal (Box–Muller).
    package mutating func nextGaussian() -> Float {
        var u1 = nextDouble()
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = nextDouble()
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }
}

@inline(__always) private func _log(_ x: Double) -> Double { Foundation.log(x) }
@inline(__always) private func _cos(_ x: Double) -> Double { Foundation.cos(x) }
