import CLoraSupport
import Foundation
import LoRA
import Testing

@Suite struct KernelTests {
    /// exp and tanh of the C kernels (the only implementation), in every
    /// instruction set this CPU runs: exp as exp_shift with shift 0, tanh as
    /// the tanh activation.
    @Test func vectorExpAndTanhAreAccurate() {
        let levels: [Int32] = [LB_KERNELS_BASELINE, LB_KERNELS_AVX2, LB_KERNELS_AVX512]
        for k in levels.compactMap({ lb_kernels_for($0)?.pointee }) {
            func exp(_ x: Float) -> Float { var v = [x]; k.exp_shift(&v, 1, 0); return v[0] }
            func tanh(_ x: Float) -> Float { var v: [Float] = [0]; k.activation_forward(LB_ACT_TANH, &v, [x], 1); return v[0] }
            var worstExp: Float = 0
            var worstTanh: Float = 0
            var x: Float = -87
            while x < 88 {
                let e = exp(x)
                let r = Foundation.expf(x)
                worstExp = max(worstExp, abs(e - r) / r)
                x += 0.01234
            }
            x = -20
            while x < 20 {
                worstTanh = max(worstTanh, abs(tanh(x) - Foundation.tanhf(x)))
                x += 0.000731
            }
            #expect(worstExp < 4e-7, "exp relative error \(worstExp)")
            #expect(worstTanh < 3e-7, "tanh absolute error \(worstTanh)")
            #expect(exp(-200) == 0)
            #expect(exp(-Float.infinity) == 0)
        }
    }

    @Test func activationsMatchTransformers() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("activations.safetensors"))
        let x = try f.floats("x")
        for act in Activation.allCases {
            var out = [Float](repeating: 0, count: x.count)
            x.withUnsafeBufferPointer { xp in
                out.withUnsafeMutableBufferPointer { op in
                    activationForward(act, out: op.baseAddress!, inp: xp.baseAddress!, n: x.count)
                }
            }
            let d = maxAbsDiff(out, try f.floats(act.rawValue))
            #expect(d < 2e-6, "\(act.rawValue): max |Δ| = \(d)")
        }
    }

    @Test func openBLASCoreChoice() {
        // The decision rule: only an older kernel set than the CPU supports is replaced.
        #expect(String(cString: lb_preferred_core("Prescott", 1, 1)) == "SkylakeX")
        #expect(String(cString: lb_preferred_core("Haswell", 1, 1)) == "SkylakeX")
        #expect(lb_preferred_core("SkylakeX", 1, 1) == nil)
        #expect(lb_preferred_core("Cooperlake", 1, 1) == nil)
        #expect(String(cString: lb_preferred_core("Prescott", 0, 1)) == "Haswell")
        #expect(lb_preferred_core("Zen", 0, 1) == nil)
        #expect(lb_preferred_core("Prescott", 0, 0) == nil)
        if lb_cpu_has_avx512() != 0 && ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil {
            #expect(["SkylakeX", "Cooperlake", "SapphireRapids"].contains(BLAS.coreName))
        }
    }
}
