import Foundation
import Testing
import LoRA
import CLoraSupport

@Suite struct KernelTests {
    @Test func vectorExpAndTanhAreAccurate() {
        var worstExp: Float = 0, worstTanh: Float = 0
        var x: Float = -87
        while x < 88 {
            let e = fastExp(x), r = Foundation.expf(x)
            worstExp = max(worstExp, abs(e - r) / r)
            x += 0.01234
        }
        x = -20
        while x < 20 {
            worstTanh = max(worstTanh, abs(fastTanh(x) - Foundation.tanhf(x)))
            x += 0.000731
        }
        #expect(worstExp < 4e-7, "exp relative error \(worstExp)")
        #expect(worstTanh < 3e-7, "tanh absolute error \(worstTanh)")
        #expect(fastExp(-200) == 0)
        #expect(fastExp(-Float.infinity) == 0)
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
