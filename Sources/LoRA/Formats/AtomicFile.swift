import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Whole-file writes that never leave a half-written file: the bytes go to a
/// temporary file in the same directory, are flushed to disk, and the file is
/// renamed over the destination (then the directory is flushed too).
package enum AtomicFile {
    package static func write(_ bytes: [UInt8], to path: String) throws {
        try bytes.withUnsafeBytes { try write(raw: $0, to: path) }
    }

    package static func write(_ text: String, to path: String) throws {
        try write(Array(text.utf8), to: path)
    }

    package static func write(raw: UnsafeRawBufferPointer, to path: String) throws {
        try write(to: path) { try $0.write(raw) }
    }

    /// Where `write(to:_:)`'s body sends the file's bytes, in order.
    package struct Sink {
        fileprivate let fd: Int32
        fileprivate let path: String

        package func write(_ raw: UnsafeRawBufferPointer) throws {
            var written = 0
            while written < raw.count, let start = raw.baseAddress {
                let n = Glibc.write(fd, start + written, raw.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw LoRAError.io(path: path, reason: "write failed: \(String(cString: strerror(errno)))")
                }
                written += n
            }
        }

        package func write(_ bytes: [UInt8]) throws {
            try bytes.withUnsafeBytes { try write($0) }
        }
    }

    /// A file written piece by piece (large exports need not be built in
    /// memory first), still all or nothing: if `body` throws, the temporary
    /// file is removed and `path` is left as it was.
    package static func write(to path: String, _ body: (Sink) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LoRAError.io(path: path, reason: "cannot create \(tmp): \(String(cString: strerror(errno)))") }
        var ok = false
        var isOpen = true
        defer {
            if isOpen { close(fd) }
            if !ok { unlink(tmp) }
        }
        try body(Sink(fd: fd, path: path))
        if fsync(fd) != 0 { throw LoRAError.io(path: path, reason: "fsync failed: \(String(cString: strerror(errno)))") }
        isOpen = false
        guard close(fd) == 0 else { throw LoRAError.io(path: path, reason: "close failed: \(String(cString: strerror(errno)))") }
        guard rename(tmp, path) == 0 else { throw LoRAError.io(path: path, reason: "rename failed: \(String(cString: strerror(errno)))") }
        ok = true
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}
