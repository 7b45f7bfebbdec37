import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// safetensors element types, in the reference implementation's order
/// (the writer sorts tensors by this order, descending).
package enum DType: String, CaseIterable, Sendable, Comparable {
    case BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ
    case I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64

    package var bits: Int {
        switch self {
        case .F4: return 4
        case .F6_E2M3, .F6_E3M2: return 6
        case .BOOL, .U8, .I8, .F8_E5M2, .F8_E4M3, .F8_E8M0, .F8_E4M3FNUZ, .F8_E5M2FNUZ: return 8
        case .I16, .U16, .F16, .BF16: return 16
        case .I32, .U32, .F32: return 32
        case .C64, .F64, .I64, .U64: return 64
        }
    }
    var order: Int { DType.allCases.firstIndex(of: self) ?? 0 }
    package static func < (a: DType, b: DType) -> Bool { a.order < b.order }
}

package struct TensorInfo: Sendable, Equatable {
    package let name: String
    package let dtype: DType
    package let shape: [Int]
    /// Byte range within the data section.
    package let begin: Int
    package let end: Int
    package var count: Int { shape.reduce(1, *) }
}

/// A safetensors file, memory-mapped. Validation follows the reference
/// implementation (huggingface/safetensors `Metadata::validate`), plus a
/// refusal of duplicate names.
/// Thread safety (why `@unchecked Sendable`): immutable after init (a
/// read-only mapping and the parsed header); any thread may read it.
package final class SafeTensorsFile: @unchecked Sendable {
    package static let maxHeaderSize = 100_000_000

    package let path: String
    package let metadata: [String: String]?
    /// Tensors in data order.
    package let tensors: [TensorInfo]
    private let byName: [String: Int]
    private let base: UnsafeRawPointer?
    private let mapLength: Int
    private let dataStart: Int

    package init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LoRAError.io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LoRAError.io(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw LoRAError.invalidFile(path: path, reason: "not a regular file") }
        let size = Int(st.st_size)
        var mapped: UnsafeRawPointer? = nil
        if size > 0 {
            let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
            guard let p, p != MAP_FAILED else { throw LoRAError.io(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))") }
            mapped = UnsafeRawPointer(p)
        }
        do {
            let bytes = UnsafeRawBufferPointer(start: mapped, count: size)
            let parsed = try SafeTensorsFile.parseHeader(bytes, path: path)
            self.metadata = parsed.metadata
            self.tensors = parsed.tensors
            self.dataStart = parsed.dataStart
        } catch {
            if let mapped { munmap(UnsafeMutableRawPointer(mutating: mapped), size) }
            throw error
        }
        self.base = mapped
        self.mapLength = size
        var idx: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { idx[t.name] = i }
        self.byName = idx
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), mapLength) }
    }

    package subscript(name: String) -> TensorInfo? { byName[name].map { tensors[$0] } }
    package var names: [String] { tensors.map(\.name) }

    /// Gives the mapped pages of a tensor that has been read back to the
    /// kernel (the mapping stays valid: a later read faults them in again
    /// from the file). Loading a model calls it after each tensor so the
    /// file's pages and the weights are not resident together.
    package func dropPages(_ info: TensorInfo) {
        dropPages(info, bytes: 0..<(info.end - info.begin))
    }

    /// The same for bytes `b` of the tensor (the pages wholly inside them):
    /// a conversion that reads a tensor in chunks hands each chunk back, so
    /// not even one large tensor's pages stay resident.
    package func dropPages(_ info: TensorInfo, bytes b: Range<Int>) {
        let all = rawBytes(info)
        guard b.lowerBound >= 0, b.upperBound <= all.count else { return }
        let raw = UnsafeRawBufferPointer(rebasing: all[b])
        guard let start = raw.baseAddress, raw.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard page > 0 else { return }
        let lo = (Int(bitPattern: start) + page - 1) / page * page
        let hi = (Int(bitPattern: start) + raw.count) / page * page
        if hi > lo, let p = UnsafeMutableRawPointer(bitPattern: lo) { _ = madvise(p, hi - lo, Int32(MADV_DONTNEED)) }
    }

    /// The raw bytes of a tensor, valid while this object lives.
    package func rawBytes(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base.map { $0 + dataStart + info.begin }, count: info.end - info.begin)
    }

    /// Zero-copy access to an F32 tensor (the mapping is 4-byte aligned when
    /// the writer followed the reference layout; otherwise nil).
    package func withF32<R>(_ name: String, _ body: (UnsafeBufferPointer<Float>) throws -> R) throws -> R? {
        guard let info = self[name] else { throw LoRAError.invalidFile(path: path, reason: "missing tensor \(name)") }
        guard info.dtype == .F32 else { return nil }
        let raw = rawBytes(info)
        guard let start = raw.baseAddress, Int(bitPattern: start) % 4 == 0 else {
            if raw.isEmpty { return try body(UnsafeBufferPointer(start: nil, count: 0)) }
            return nil
        }
        return try body(UnsafeBufferPointer(start: start.assumingMemoryBound(to: Float.self), count: info.count))
    }

    /// Copies a floating-point tensor (F32, F16, BF16, F64) as Float into `out`.
    package func copyFloats(_ info: TensorInfo, into out: UnsafeMutablePointer<Float>) throws {
        try copyFloats(info, elements: 0..<info.count, into: out)
    }

    /// copyFloats a chunk at a time, handing each chunk's file pages back
    /// once read (loading a model: the file's pages of even the largest
    /// tensor and the copy are not resident together).
    package func copyFloatsDroppingPages(_ info: TensorInfo, into out: UnsafeMutablePointer<Float>) throws {
        let chunk = 1 << 20
        let esize = (info.end - info.begin) / max(1, info.count)
        for e0 in stride(from: 0, to: info.count, by: chunk) {
            let e1 = min(info.count, e0 + chunk)
            try copyFloats(info, elements: e0..<e1, into: out + e0)
            dropPages(info, bytes: esize * e0..<esize * e1)
        }
        dropPages(info)
    }

    /// Copies elements `e` (in 0..<info.count) of a floating-point tensor as Float into `out`.
    package func copyFloats(_ info: TensorInfo, elements e: Range<Int>, into out: UnsafeMutablePointer<Float>) throws {
        let raw = rawBytes(info)
        guard e.lowerBound >= 0, e.upperBound <= info.count else {
            throw LoRAError.invalidArgument("elements \(e) of tensor \(info.name) out of 0..<\(info.count)")
        }
        let n = e.count
        let e0 = e.lowerBound
        switch info.dtype {
        case .F32:
            if n > 0, let src = raw.baseAddress { memcpy(out, src + 4 * e0, n * 4) }
        case .F16:
            for i in 0..<n {
                let bits = raw.loadUnaligned(fromByteOffset: 2 * (e0 + i), as: UInt16.self)
                out[i] = Float(Float16(bitPattern: UInt16(littleEndian: bits)))
            }
        case .BF16:
            for i in 0..<n {
                let bits = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * (e0 + i), as: UInt16.self))
                out[i] = Float(bitPattern: UInt32(bits) << 16)
            }
        case .F64:
            for i in 0..<n { out[i] = Float(raw.loadUnaligned(fromByteOffset: 8 * (e0 + i), as: Double.self)) }
        default:
            throw LoRAError.invalidFile(
                path: path, reason: "tensor \(info.name) has dtype \(info.dtype.rawValue), expected a float type (F32, F16, BF16)")
        }
    }

    package func floats(_ name: String) throws -> [Float] {
        guard let info = self[name] else { throw LoRAError.invalidFile(path: path, reason: "missing tensor \(name)") }
        var out = [Float](repeating: 0, count: info.count)
        try out.withUnsafeMutableBufferPointer { b in
            if let p = b.baseAddress { try copyFloats(info, into: p) }
        }
        return out
    }

    /// An integer tensor (I64, I32, U8, I8, I16, U16, U32, BOOL) as Int.
    package func ints(_ name: String) throws -> [Int] {
        guard let info = self[name] else { throw LoRAError.invalidFile(path: path, reason: "missing tensor \(name)") }
        let raw = rawBytes(info)
        let n = info.count
        switch info.dtype {
        case .I64: return (0..<n).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
        case .I32: return (0..<n).map { Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
        case .U32: return (0..<n).map { Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        case .I16: return (0..<n).map { Int(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self))) }
        case .U16: return (0..<n).map { Int(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
        case .I8: return (0..<n).map { Int(raw.load(fromByteOffset: $0, as: Int8.self)) }
        case .U8, .BOOL: return (0..<n).map { Int(raw[$0]) }
        default:
            throw LoRAError.invalidFile(path: path, reason: "tensor \(name) has dtype \(info.dtype.rawValue), expected an integer type")
        }
    }

    struct Parsed { var metadata: [String: String]?; var tensors: [TensorInfo]; var dataStart: Int }

    static func parseHeader(_ bytes: UnsafeRawBufferPointer, path: String) throws -> Parsed {
        func fail(_ r: String) -> LoRAError { .invalidFile(path: path, reason: r) }
        guard bytes.count >= 8 else { throw fail("file too small for a safetensors header (\(bytes.count) bytes)") }
        let n64 = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        guard n64 <= UInt64(maxHeaderSize) else { throw fail("header length \(n64) exceeds the limit of \(maxHeaderSize) bytes") }
        let n = Int(n64)
        guard 8 + n <= bytes.count else { throw fail("header length \(n) goes beyond the end of the file (\(bytes.count) bytes)") }
        let header = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])
        let json: JSONValue
        do { json = try JSON.parse(header) } catch { throw fail("header is not valid JSON: \(error)") }
        guard let obj = json.objectValue else { throw fail("header is not a JSON object") }
        if obj.hasDuplicateKeys { throw fail("header has duplicate tensor names") }
        var metadata: [String: String]? = nil
        var infos: [TensorInfo] = []
        for (key, value) in obj.members {
            if key == "__metadata__" {
                guard let m = value.objectValue else { throw fail("__metadata__ is not an object of strings") }
                var md: [String: String] = [:]
                for (k, v) in m.members {
                    guard let s = v.stringValue else { throw fail("__metadata__ value for \"\(k)\" is not a string") }
                    md[k] = s
                }
                metadata = md
                continue
            }
            guard let t = value.objectValue else { throw fail("tensor \(key): entry is not an object") }
            guard let ds = t["dtype"]?.stringValue else { throw fail("tensor \(key): missing dtype") }
            guard let dtype = DType(rawValue: ds) else { throw fail("tensor \(key): unknown dtype \(ds)") }
            guard let shapeArr = t["shape"]?.arrayValue else { throw fail("tensor \(key): missing shape") }
            var shape: [Int] = []
            for d in shapeArr {
                guard let v = d.intValue, v >= 0 else { throw fail("tensor \(key): shape must hold non-negative integers") }
                shape.append(v)
            }
            guard let off = t["data_offsets"]?.arrayValue, off.count == 2,
                let b = off[0].intValue, let e = off[1].intValue, b >= 0, e >= 0
            else { throw fail("tensor \(key): data_offsets must be two non-negative integers") }
            infos.append(TensorInfo(name: key, dtype: dtype, shape: shape, begin: b, end: e))
        }
        // Offsets must tile the data section exactly.
        infos.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var last = 0
        for info in infos {
            guard info.begin == last, info.end >= info.begin else {
                throw fail("tensor \(info.name): data_offsets [\(info.begin), \(info.end)] overlap or leave a gap (expected begin \(last))")
            }
            var bits = info.dtype.bits
            for d in info.shape {
                let (m, o) = bits.multipliedReportingOverflow(by: d)
                guard !o else { throw fail("tensor \(info.name): shape \(info.shape) overflows") }
                bits = m
            }
            guard bits % 8 == 0 else { throw fail("tensor \(info.name): size is not a whole number of bytes") }
            guard info.end - info.begin == bits / 8 else {
                throw fail(
                    "tensor \(info.name): shape \(info.shape) of \(info.dtype.rawValue) needs \(bits / 8) bytes but data_offsets span \(info.end - info.begin)"
                )
            }
            last = info.end
        }
        // `last` may be close to Int.max: compare with the data section's size
        // (>= 0, checked above) rather than add the header's.
        let dataSize = bytes.count - 8 - n
        guard last == dataSize else {
            if last > dataSize {
                let needed = last.addingReportingOverflow(8 + n)
                throw fail(
                    "file is truncated: tensors need \(needed.overflow ? "more than \(Int.max)" : "\(needed.partialValue)") bytes, the file has \(bytes.count)"
                )
            }
            throw fail("\(dataSize - last) trailing bytes after the last tensor")
        }
        return Parsed(metadata: metadata, tensors: infos, dataStart: 8 + n)
    }
}

/// A tensor to write: name, dtype, shape and little-endian bytes.
package struct TensorData: Sendable {
    package var name: String
    package var dtype: DType
    package var shape: [Int]
    package var bytes: [UInt8]

    package init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name; self.dtype = dtype; self.shape = shape; self.bytes = bytes
    }
    package init(name: String, shape: [Int], floats: UnsafeBufferPointer<Float>) {
        self.init(name: name, dtype: .F32, shape: shape, bytes: Array(UnsafeRawBufferPointer(floats)))
    }
    package init(name: String, shape: [Int], floats: [Float]) {
        self.init(name: name, dtype: .F32, shape: shape, bytes: floats.withUnsafeBytes { Array($0) })
    }
}

package enum SafeTensorsWriter {
    /// The file bytes exactly as Python's `safetensors` writes them: tensors
    /// sorted by dtype (descending) then name, compact JSON header with
    /// `__metadata__` first, padded with spaces to a multiple of 8.
    package static func serialize(_ tensors: [TensorData], metadata: [String: String]? = ["format": "pt"]) throws -> [UInt8] {
        var seen = Set<String>()
        for t in tensors {
            guard seen.insert(t.name).inserted else { throw LoRAError.invalidArgument("duplicate tensor name \(t.name)") }
            guard t.name != "__metadata__" else { throw LoRAError.invalidArgument("a tensor cannot be named __metadata__") }
            var bits = t.dtype.bits
            for d in t.shape {
                guard d >= 0 else { throw LoRAError.invalidArgument("tensor \(t.name): negative dimension") }
                let (m, o) = bits.multipliedReportingOverflow(by: d)
                guard !o else { throw LoRAError.invalidArgument("tensor \(t.name): shape overflows") }
                bits = m
            }
            guard bits % 8 == 0, bits / 8 == t.bytes.count else {
                throw LoRAError.invalidArgument(
                    "tensor \(t.name): \(t.bytes.count) bytes do not match shape \(t.shape) of \(t.dtype.rawValue)")
            }
        }
        let sorted = tensors.sorted { a, b in
            if a.dtype != b.dtype { return a.dtype > b.dtype }
            return Array(a.name.utf8).lexicographicallyPrecedes(Array(b.name.utf8))
        }
        var header = JSONObject()
        if let metadata {
            var m = JSONObject()
            for k in metadata.keys.sorted() { m.append(k, .string(metadata[k] ?? "")) }
            header.append("__metadata__", .object(m))
        }
        var offset = 0
        for t in sorted {
            let shape = JSONValue.array(t.shape.map { .number(JSONNumber($0)) })
            header.append(
                t.name,
                .object(
                    JSONObject([
                        ("dtype", .string(t.dtype.rawValue)),
                        ("shape", shape),
                        ("data_offsets", .array([.number(JSONNumber(offset)), .number(JSONNumber(offset + t.bytes.count))])),
                    ])))
            offset += t.bytes.count
        }
        var json = Array(JSON.compact(.object(header)).utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        guard json.count <= SafeTensorsFile.maxHeaderSize else { throw LoRAError.invalidArgument("safetensors header too large") }
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        for t in sorted { out.append(contentsOf: t.bytes) }
        return out
    }

    /// Writes atomically: a temporary file in the same directory, fsync, rename.
    package static func write(_ tensors: [TensorData], to path: String, metadata: [String: String]? = ["format": "pt"]) throws {
        try AtomicFile.write(try serialize(tensors, metadata: metadata), to: path)
    }
}
