import CFuzzDriver
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Helpers shared by the harnesses.
public enum Fuzz {
    /// A private directory for this process's scratch files (in /dev/shm when
    /// available, so writing them costs no disk I/O).
    public static let scratchDirectory: String = {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp")
        let dir = "\(base)/liblora-fuzz-\(getpid())"
        mkdir(dir, 0o700)
        atexit {
            // Best-effort cleanup of the scratch files (names are fixed per harness).
            if let names = try? FileManager.default.contentsOfDirectory(atPath: Fuzz.scratchDirectory) {
                for n in names { unlink(Fuzz.scratchDirectory + "/" + n) }
            }
            rmdir(Fuzz.scratchDirectory)
        }
        return dir
    }()

    /// Writes `bytes` to `scratchDirectory/name` (replacing it) and returns the path.
    public static func write(_ bytes: UnsafeRawBufferPointer, name: String) -> String {
        let path = scratchDirectory + "/" + name
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "fuzz: cannot create \(path): \(String(cString: strerror(errno)))")
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            precondition(n > 0, "fuzz: cannot write \(path)")
            done += n
        }
        close(fd)
        return path
    }

    public static func write(_ bytes: [UInt8], name: String) -> String {
        bytes.withUnsafeBytes { write($0, name: name) }
    }

    /// The input as a buffer (libFuzzer may pass a null pointer with size 0).
    public static func buffer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size)
    }

    /// Runs libFuzzer with `testOneInput` and the command line; never returns.
    public static func run(_ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))
    }

    /// Runs `body`; a thrown error is an expected outcome (the input was
    /// refused), only traps and sanitizer reports are failures.
    @inline(__always)
    public static func expectingErrors(_ body: () throws -> Void) {
        do { try body() } catch {
            // Format the error: its description must not crash either.
            _ = String(describing: error)
        }
    }
}
