// The thin layer between include/lora.h and the Swift core: handles, status
// codes, the thread-local error, params structs read up to struct_size.
import CLoraABI
import CLoraSupport
import Foundation
import LoRA

/// Errors that exist only at the C boundary.
enum CError: Error {
    case bufferTooSmall(String)
}

func statusOf(_ error: Error) -> lora_status {
    switch error {
    case let e as LoRAError:
        switch e {
        case .invalidArgument: return LORA_INVALID_ARGUMENT
        case .invalidFile: return LORA_INVALID_FILE
        case .io: return LORA_IO_ERROR
        case .unsupported: return LORA_UNSUPPORTED
        case .backend: return LORA_BACKEND_ERROR
        case .numerical: return LORA_NUMERICAL_ERROR
        case .aborted: return LORA_ABORTED
        case .wrongState: return LORA_WRONG_STATE
        }
    case CError.bufferTooSmall: return LORA_BUFFER_TOO_SMALL
    default: return LORA_ERROR
    }
}

func messageOf(_ error: Error) -> String {
    if case CError.bufferTooSmall(let m) = error { return m }
    return "\(error)"
}

/// Runs an entry point: clears the thread's error, maps a thrown error to its status and message.
@inline(__always)
func guarded(_ body: () throws -> Void) -> lora_status {
    lb_set_error(nil)
    do {
        try body()
        return LORA_OK
    } catch {
        lb_set_error(messageOf(error))
        return statusOf(error)
    }
}

func invalid(_ m: String) -> LoRAError { .invalidArgument(m) }

/// Writes a params struct's defaults into the caller's first `size` bytes
/// (at most this library's struct), struct_size set to the bytes written:
/// a program built against an older, smaller struct gets nothing past it.
func writeDefaults<T>(_ p: UnsafeMutablePointer<T>?, _ defaults: T, size: Int) {
    guard let p else { return }
    // A size_t above Int.max arrives negative: more than the library's struct.
    let n = size < 0 ? MemoryLayout<T>.size : min(size, MemoryLayout<T>.size)
    guard n >= MemoryLayout<UInt32>.size else { return }
    var d = defaults
    withUnsafeMutableBytes(of: &d) { raw in
        raw.storeBytes(of: UInt32(n), as: UInt32.self)
        UnsafeMutableRawPointer(p).copyMemory(from: raw.baseAddress!, byteCount: n)
    }
}

/// The bytes the plain lora_*_default_params functions write: each struct as
/// 0.1.0 declared it (as 0.2.0 does for the structs added then), so programs
/// built against those headers get no byte past their struct.
enum FrozenParamsSize {
    static let model = 8, sampling = 56, adapter = 72, combine = 32, trainer = 72, train = 32, engine = 16
    static let request = 72
}

/// Reads a params struct: NULL → defaults; struct_size bytes from the caller
/// over the defaults; a struct_size larger than this library's struct is an error.
func readParams<T>(_ p: UnsafePointer<T>?, defaults: T, name: String) throws -> T {
    guard let p else { return defaults }
    let size = Int(UnsafeRawPointer(p).load(as: UInt32.self))
    guard size >= MemoryLayout<UInt32>.size else {
        throw invalid(
            "\(name).struct_size \(size) is too small; fill the struct with \(name.replacingOccurrences(of: "lora_", with: "lora_"))'s default_params function"
        )
    }
    guard size <= MemoryLayout<T>.size else {
        throw invalid(
            "\(name).struct_size \(size) is larger than this library's \(MemoryLayout<T>.size) bytes (header newer than the library?)")
    }
    var out = defaults
    withUnsafeMutableBytes(of: &out) { dst in
        dst.copyMemory(from: UnsafeRawBufferPointer(start: UnsafeRawPointer(p), count: size))
    }
    return out
}

func string(_ p: UnsafePointer<CChar>?, _ what: String) throws -> String {
    guard let p else { throw invalid("\(what) is NULL") }
    guard let s = String(validatingCString: p) else { throw invalid("\(what) is not valid UTF-8") }
    return s
}

func out<T>(_ p: UnsafeMutablePointer<T>?, _ what: String) throws -> UnsafeMutablePointer<T> {
    guard let p else { throw invalid("\(what) is NULL") }
    return p
}

func finite(_ x: Float, _ what: String) throws -> Float {
    guard x.isFinite else { throw invalid("\(what) must be a finite number") }
    return x
}

func count(_ n: Int, _ what: String, max: Int = 1 << 40) throws -> Int {
    guard n >= 0, n <= max else { throw invalid("\(what) \(n) is out of range") }
    return n
}

// MARK: handles

final class ModelBox {
    let model: Model
    init(_ m: Model) { model = m }
}

final class AdapterBox {
    let adapter: Adapter
    weak var model: ModelBox?
    init(_ a: Adapter, model: ModelBox) { adapter = a; self.model = model }
}

final class TrainerBox {
    let trainer: Trainer
    let model: ModelBox
    let adapter: AdapterBox?
    init(_ t: Trainer, model: ModelBox, adapter: AdapterBox?) { trainer = t; self.model = model; self.adapter = adapter }
}

/// Every handle liblora has returned and not yet freed, with its kind. An
/// entry point looks each handle up here before touching it, so a freed
/// handle, a pointer liblora never returned or a handle of another kind is
/// LORA_INVALID_ARGUMENT, not a crash, and freeing a handle twice does
/// nothing. (An address that a newer handle of the same kind reuses is that
/// handle.) The lookup takes a strong reference under the lock, so a free on
/// another thread cannot pull the object from under a call already past it.
final class HandleTable: @unchecked Sendable {
    private var live: [UnsafeMutableRawPointer: AnyObject.Type] = [:]

    static func name(_ type: AnyObject.Type) -> String {
        switch type {
        case is ModelBox.Type: return "lora_model"
        case is AdapterBox.Type: return "lora_adapter"
        case is TrainerBox.Type: return "lora_trainer"
        case is EngineBox.Type: return "lora_engine"
        default: return String(describing: type)
        }
    }

    func insert<T: AnyObject>(_ object: T) -> OpaquePointer {
        let p = Unmanaged.passRetained(object).toOpaque()
        lb_handles_lock()
        live[p] = T.self
        lb_handles_unlock()
        return OpaquePointer(p)
    }

    func object<T: AnyObject>(_ p: OpaquePointer, _ type: T.Type, _ what: String) throws -> T {
        let raw = UnsafeMutableRawPointer(p)
        lb_handles_lock()
        defer { lb_handles_unlock() }
        guard let kind = live[raw] else {
            throw invalid("\(what) is not a live \(Self.name(T.self)) handle (freed already, or not returned by liblora)")
        }
        guard kind == T.self else { throw invalid("\(what) is a \(Self.name(kind)) handle, not a \(Self.name(T.self))") }
        return Unmanaged<T>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Forgets the handle and drops its reference; nothing for a handle that
    /// is not live or of another kind.
    func remove<T: AnyObject>(_ p: OpaquePointer, _ type: T.Type) {
        let raw = UnsafeMutableRawPointer(p)
        lb_handles_lock()
        guard live[raw] == T.self else {
            lb_handles_unlock()
            return
        }
        live[raw] = nil
        lb_handles_unlock()
        Unmanaged<T>.fromOpaque(raw).release()
    }
}

let handles = HandleTable()

func box<T: AnyObject>(_ p: OpaquePointer?, _ type: T.Type, _ what: String) throws -> T {
    guard let p else { throw invalid("\(what) is NULL") }
    return try handles.object(p, type, what)
}

func retain<T: AnyObject>(_ object: T) -> OpaquePointer { handles.insert(object) }

func release<T: AnyObject>(_ p: OpaquePointer?, _ type: T.Type) {
    guard let p else { return }
    handles.remove(p, type)
}

/// Copies UTF-8 text into a caller buffer with a terminating NUL.
func writeText(_ text: String, _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int, _ needed: UnsafeMutablePointer<Int>?) throws {
    let bytes = Array(text.utf8)
    needed?.pointee = bytes.count
    if buf == nil && capacity > 0 { throw invalid("the output buffer is NULL but its capacity is \(capacity)") }
    guard let buf, capacity >= bytes.count + 1 else {
        if buf == nil && capacity == 0 && needed != nil { throw CError.bufferTooSmall("the text needs \(bytes.count + 1) bytes") }
        throw CError.bufferTooSmall("the text needs \(bytes.count + 1) bytes (with the NUL), the buffer holds \(capacity)")
    }
    for (i, b) in bytes.enumerated() { buf[i] = CChar(bitPattern: b) }
    buf[bytes.count] = 0
}

// MARK: status and versions

@_cdecl("lora_status_string")
public func lora_status_string(_ status: lora_status) -> UnsafePointer<CChar> {
    let name: StaticString
    switch status {
    case LORA_OK: name = "LORA_OK"
    case LORA_ERROR: name = "LORA_ERROR"
    case LORA_INVALID_ARGUMENT: name = "LORA_INVALID_ARGUMENT"
    case LORA_INVALID_FILE: name = "LORA_INVALID_FILE"
    case LORA_IO_ERROR: name = "LORA_IO_ERROR"
    case LORA_UNSUPPORTED: name = "LORA_UNSUPPORTED"
    case LORA_BUFFER_TOO_SMALL: name = "LORA_BUFFER_TOO_SMALL"
    case LORA_ABORTED: name = "LORA_ABORTED"
    case LORA_NUMERICAL_ERROR: name = "LORA_NUMERICAL_ERROR"
    case LORA_BACKEND_ERROR: name = "LORA_BACKEND_ERROR"
    case LORA_WRONG_STATE: name = "LORA_WRONG_STATE"
    default: name = "LORA_UNKNOWN_STATUS"
    }
    return UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("lora_last_error")
public func lora_last_error() -> UnsafePointer<CChar> { lb_get_error() }

/// "MAJOR.MINOR.PATCH" from lora.h's macros (VERSION is the source; scripts/check_version.sh keeps them equal).
nonisolated(unsafe) let versionString: UnsafePointer<CChar> = {
    let text = "\(LORA_VERSION_MAJOR).\(LORA_VERSION_MINOR).\(LORA_VERSION_PATCH)"
    let p = UnsafeMutablePointer<CChar>.allocate(capacity: text.utf8.count + 1)
    text.withCString { p.initialize(from: $0, count: text.utf8.count + 1) }
    return UnsafePointer(p)
}()

@_cdecl("lora_version_string")
public func lora_version_string() -> UnsafePointer<CChar> { versionString }

@_cdecl("lora_version_number")
public func lora_version_number() -> UInt32 { UInt32(LORA_VERSION_MAJOR * 10000 + LORA_VERSION_MINOR * 100 + LORA_VERSION_PATCH) }

@_cdecl("lora_abi_version")
public func lora_abi_version() -> UInt32 { UInt32(LORA_ABI_VERSION) }
