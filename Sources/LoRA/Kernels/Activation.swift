import CLoraSupport

// Activation functions, forward and backward. The math is in the C kernels
// (CLoraSupport/kernels_body.h, one formula per LB_ACT_* value, vectorised
// for the CPU's instruction set); this file maps names onto formulas and
// splits the work across the workers.

/// The activation functions of the MLP, named as transformers' ACT2FN
/// (the names GPT2Config's `activation_function` takes).
public enum Activation: String, CaseIterable, Sendable {
    case geluNew = "gelu_new"
    case gelu = "gelu"
    case geluPytorchTanh = "gelu_pytorch_tanh"
    case geluFast = "gelu_fast"
    case geluPython = "gelu_python"
    case quickGelu = "quick_gelu"
    case relu = "relu"
    case silu = "silu"
    case swish = "swish"
    case tanh = "tanh"
    case sigmoid = "sigmoid"
    case linear = "linear"
}

extension Activation {
    /// The C kernels' formula (LB_ACT_*).
    var kernel: Int32 {
        switch self {
        case .geluNew, .geluPytorchTanh, .geluFast: return LB_ACT_GELU_TANH
        case .gelu, .geluPython: return LB_ACT_GELU_ERF
        case .quickGelu: return LB_ACT_QUICK_GELU
        case .relu: return LB_ACT_RELU
        case .silu, .swish: return LB_ACT_SILU
        case .tanh: return LB_ACT_TANH
        case .sigmoid: return LB_ACT_SIGMOID
        case .linear: return LB_ACT_LINEAR
        }
    }
}

/// out[n] = act(inp[n])  (out may alias inp)
package func activationForward(_ act: Activation, out: FloatPtr, inp: ConstFloatPtr, n: Int) {
    let kind = act.kernel
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        lb_activation_forward(kind, out + r.lowerBound, inp + r.lowerBound, r.count)
    }
}

/// d[n] = d[n] · act′(pre[n])  (in place: d holds ∂L/∂act(pre) on entry, ∂L/∂pre on exit).
package func activationBackward(_ act: Activation, d: FloatPtr, pre: ConstFloatPtr, n: Int) {
    let kind = act.kernel
    parallelChunks(n, minChunk: elementwiseChunk, align: 16) { _, r in
        lb_activation_backward(kind, d + r.lowerBound, pre + r.lowerBound, r.count)
    }
}
