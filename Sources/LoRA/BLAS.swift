import CLoraSupport

/// The BLAS/LAPACK back end: OpenBLAS and LAPACKE loaded at run time with the
/// kernel set that matches the CPU (see `CLoraSupport/blas.c`).
public enum BLAS {
    /// Loads OpenBLAS and LAPACKE once; throws when they are missing or wrong.
    public static func load() throws {
        if lb_load() != 0 {
            throw LoRAError.backend(String(cString: lb_load_error()))
        }
    }

    /// The OpenBLAS kernel set in use, e.g. "SkylakeX".
    public static var coreName: String { String(cString: lb_corename()) }
    /// The library that runs the F32 matrix products: "OpenBLAS", or
    /// "oneDNN" where libdnnl.so.2 loads (unless `LORA_SGEMM=openblas`).
    public static var sgemmLibrary: String { String(cString: lb_sgemm_library()) }
    /// The kernel set OpenBLAS chose on its own, before liblora intervened.
    public static var initialCoreName: String { String(cString: lb_corename_initial()) }
    /// True when liblora picked the kernel set (OPENBLAS_CORETYPE was unset
    /// and OpenBLAS chose an older one than the CPU supports).
    public static var coreWasChosen: Bool { lb_core_was_chosen() != 0 }
    public static var config: String { String(cString: lb_openblas_config()) }
    /// Worker threads of the kernels, for the whole process. Starts at
    /// OpenBLAS's own choice (OPENBLAS_NUM_THREADS or the CPU count); OpenBLAS
    /// itself then runs single-threaded and liblora splits the work.
    public static var threads: Int {
        get { Int(lb_get_num_threads()) }
        set { lb_set_num_threads(Int32(clamping: newValue)) }
    }
}
