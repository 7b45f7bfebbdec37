/// Every error the Swift core throws. The C ABI maps each case to a status code.
public enum LoRAError: Error, CustomStringConvertible, Equatable {
    /// A file is malformed or does not fit (message names the file and the problem).
    case invalidFile(path: String, reason: String)
    /// A file or directory could not be read or written.
    case io(path: String, reason: String)
    /// An argument is out of range or inconsistent.
    case invalidArgument(String)
    /// A feature that the input asks for is not implemented.
    case unsupported(String)
    /// OpenBLAS/LAPACKE missing or failing.
    case backend(String)
    /// Numerical failure (NaN/inf, non-convergence).
    case numerical(String)
    /// Work stopped by a callback.
    case aborted
    /// A call out of order (an adapter not attached, already merged, ...).
    case wrongState(String)

    public var description: String {
        switch self {
        case .invalidFile(let path, let reason): return "\(path): \(reason)"
        case .io(let path, let reason): return "\(path): \(reason)"
        case .invalidArgument(let m): return m
        case .unsupported(let m): return "unsupported: \(m)"
        case .backend(let m): return m
        case .numerical(let m): return m
        case .aborted: return "aborted by callback"
        case .wrongState(let m): return m
        }
    }
}
