import Foundation

/// Learning-rate schedules as transformers' get_scheduler defines them
/// (a multiplier of the base rate at optimizer step k, counted from 0).
public enum LRScheduler: String, CaseIterable, Sendable {
    case constant
    case constantWithWarmup = "constant_with_warmup"
    case linear
    case cosine

    public func multiplier(step k: Int, warmup w: Int, total N: Int) -> Double {
        if self != .constant, k < w { return Double(k) / Double(max(1, w)) }
        switch self {
        case .constant, .constantWithWarmup: return 1
        case .linear: return max(0, Double(N - k) / Double(max(1, N - w)))
        case .cosine:
            let progress = Double(k - w) / Double(max(1, N - w))
            return max(0, 0.5 * (1 + cos(Double.pi * 2 * 0.5 * progress)))
        }
    }
}

/// AdamW exactly as torch.optim.AdamW updates (decoupled weight decay, bias
/// correction, eps added after the bias-corrected square root), over one
/// flat parameter block with its gradient and moment blocks.
struct AdamW {
    var beta1: Double
    var beta2: Double
    var eps: Double
    var weightDecay: Double

    /// A range of the parameter block updated as one torch param group:
    /// learning rate lr·lrFactor, weight decay on or off.
    struct Group: Sendable, Equatable {
        var range: Range<Int>
        var lrFactor: Double
        var decay: Bool
    }

    /// One update with base learning rate lr at step t (1-based), group by group.
    func update(params: FloatPtr, grads: ConstFloatPtr, m: FloatPtr, v: FloatPtr, groups: [Group], lr baseLR: Double, t: Int) {
        let b1 = Float(beta1)
        let b2 = Float(beta2)
        let bc1 = 1 - pow(beta1, Double(t))
        let bc2 = 1 - pow(beta2, Double(t))
        let bc2Sqrt = Float(bc2.squareRoot())
        let e = Float(eps)
        for group in groups {
            let lr = baseLR * group.lrFactor
            let stepSize = Float(lr / bc1)
            if weightDecay != 0 && group.decay {
                let f = Float(1 - lr * weightDecay)
                for i in group.range { params[i] *= f }
            }
            for i in group.range {
                let g = grads[i]
                m[i] += (g - m[i]) * (1 - b1)
                v[i] = v[i] * b2 + (1 - b2) * g * g
                let denom = v[i].squareRoot() / bc2Sqrt + e
                params[i] -= stepSize * (m[i] / denom)
            }
        }
    }
}

/// torch.nn.utils.clip_grad_norm_: scales the gradients by
/// min(1, maxNorm / (‖g‖ + 1e-6)) and returns ‖g‖ (the norm before clipping).
func clipGradNorm(_ g: FloatPtr, count: Int, maxNorm: Double?) -> Double {
    var sum = 0.0
    for i in 0..<count { sum += Double(g[i]) * Double(g[i]) }
    let norm = sum.squareRoot()
    if let maxNorm, norm.isFinite {
        let coef = Float(min(1, maxNorm / (norm + 1e-6)))
        if coef < 1 { for i in 0..<count { g[i] *= coef } }
    }
    return norm
}
