import Foundation

// GGUF, the file format of ggml and llama.cpp (version 3, little-endian):
//
//     "GGUF"  u32 version = 3  u64 tensor_count  u64 metadata_kv_count
//     metadata: (string key, u32 value_type, value) × kv_count
//     tensor infos: (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset) × tensor_count
//     zero padding to `alignment`, then each tensor's data, each padded to `alignment`
//
// A string is a u64 byte count and UTF-8 bytes without a NUL; an array is a
// u32 element type, a u64 count and the elements. `ne` lists dimensions
// innermost first (the reverse of a row-major shape: a [rows, cols] matrix
// has ne = {cols, rows}). ggml's reader is stricter than the format: tensor
// offsets must follow one another exactly (offset_i = Σ_{j<i} pad(nbytes_j)),
// names must be shorter than 64 bytes, keys and names unique; this writer
// checks all of that. Only a writer: liblora exports GGUF, it never loads it.

/// The ggml tensor types this writer emits.
package enum GGMLType: UInt32, Sendable {
    case f32 = 0
    case f16 = 1

    package var bytesPerElement: Int { self == .f32 ? 4 : 2 }
}

/// A metadata value, with its GGUF value type.
package enum GGUFValue: Sendable, Equatable {
    case uint32(UInt32)
    case int32(Int32)
    case float32(Float)
    case bool(Bool)
    case string(String)
    case stringArray([String])
    case int32Array([Int32])

    // GGUF value types (gguf.h `enum gguf_type`).
    static let typeUInt32: UInt32 = 4
    static let typeInt32: UInt32 = 5
    static let typeFloat32: UInt32 = 6
    static let typeBool: UInt32 = 7
    static let typeString: UInt32 = 8
    static let typeArray: UInt32 = 9
}

/// A GGUF file being assembled: metadata in insertion order, then tensors
/// whose bytes are produced one at a time while the file is written (so a
/// large model is never held twice in memory).
package struct GGUFFile {
    package static let magic: [UInt8] = Array("GGUF".utf8)
    package static let version: UInt32 = 3
    /// The alignment of the data section and of each tensor (GGUF's default, written as `general.alignment`).
    package static let alignment = 32
    /// ggml's GGML_MAX_NAME is 64 including the NUL.
    package static let maxNameBytes = 63
    /// GGML_MAX_DIMS.
    package static let maxDims = 4

    package struct Tensor {
        package let name: String
        package let type: GGMLType
        /// ggml order: ne[0] is the innermost (contiguous) dimension.
        package let ne: [Int]
        package let byteCount: Int
        /// The tensor's little-endian bytes (exactly `byteCount` of them).
        let bytes: () throws -> [UInt8]
    }

    package private(set) var metadata: [(key: String, value: GGUFValue)] = []
    package private(set) var tensors: [Tensor] = []

    package init() {
        metadata.append(("general.alignment", .uint32(UInt32(GGUFFile.alignment))))
    }

    package mutating func set(_ key: String, _ value: GGUFValue) throws {
        guard !key.isEmpty else { throw LoRAError.invalidArgument("GGUF: empty metadata key") }
        guard !metadata.contains(where: { $0.key == key }) else { throw LoRAError.invalidArgument("GGUF: duplicate metadata key \(key)") }
        metadata.append((key, value))
    }

    package func value(_ key: String) -> GGUFValue? { metadata.first { $0.key == key }?.value }

    /// Adds a tensor; `ne` in ggml order, `bytes` called once while writing.
    package mutating func addTensor(name: String, type: GGMLType, ne: [Int], bytes: @escaping () throws -> [UInt8]) throws {
        guard !name.isEmpty, name.utf8.count <= GGUFFile.maxNameBytes else {
            throw LoRAError.invalidArgument("GGUF: tensor name \"\(name)\" must have 1 to \(GGUFFile.maxNameBytes) bytes")
        }
        guard !tensors.contains(where: { $0.name == name }) else { throw LoRAError.invalidArgument("GGUF: duplicate tensor \(name)") }
        guard (1...GGUFFile.maxDims).contains(ne.count), ne.allSatisfy({ $0 >= 1 }) else {
            throw LoRAError.invalidArgument("GGUF: tensor \(name) has dimensions \(ne); 1 to \(GGUFFile.maxDims) positive sizes needed")
        }
        var count = type.bytesPerElement
        for d in ne {
            let (m, o) = count.multipliedReportingOverflow(by: d)
            guard !o else { throw LoRAError.invalidArgument("GGUF: tensor \(name) is too large") }
            count = m
        }
        tensors.append(Tensor(name: name, type: type, ne: ne, byteCount: count, bytes: bytes))
    }

    static func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Everything before the data section: header, metadata, tensor infos, padding.
    package func header() -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func string(_ s: String) {
            u64(UInt64(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        out.append(contentsOf: GGUFFile.magic)
        u32(GGUFFile.version)
        u64(UInt64(tensors.count))
        u64(UInt64(metadata.count))
        for (key, value) in metadata {
            string(key)
            switch value {
            case .uint32(let v): u32(GGUFValue.typeUInt32); u32(v)
            case .int32(let v): u32(GGUFValue.typeInt32); u32(UInt32(bitPattern: v))
            case .float32(let v): u32(GGUFValue.typeFloat32); u32(v.bitPattern)
            case .bool(let v): u32(GGUFValue.typeBool); out.append(v ? 1 : 0)
            case .string(let s): u32(GGUFValue.typeString); string(s)
            case .stringArray(let a):
                u32(GGUFValue.typeArray); u32(GGUFValue.typeString); u64(UInt64(a.count))
                for s in a { string(s) }
            case .int32Array(let a):
                u32(GGUFValue.typeArray); u32(GGUFValue.typeInt32); u64(UInt64(a.count))
                for v in a { u32(UInt32(bitPattern: v)) }
            }
        }
        var offset = 0
        for t in tensors {
            string(t.name)
            u32(UInt32(t.ne.count))
            for d in t.ne { u64(UInt64(d)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offset += GGUFFile.padded(t.byteCount)
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: GGUFFile.padded(out.count) - out.count))
        return out
    }

    /// Writes the file atomically (temporary file, fsync, rename): on any
    /// error nothing is left at `path` but what was there before.
    package func write(to path: String) throws {
        try AtomicFile.write(to: path) { sink in
            try sink.write(header())
            let zeros = [UInt8](repeating: 0, count: GGUFFile.alignment)
            for t in tensors {
                let bytes = try t.bytes()
                guard bytes.count == t.byteCount else {
                    throw LoRAError.invalidArgument("GGUF: tensor \(t.name) produced \(bytes.count) bytes, \(t.byteCount) expected")
                }
                try sink.write(bytes)
                let pad = GGUFFile.padded(bytes.count) - bytes.count
                if pad > 0 { try zeros.withUnsafeBytes { try sink.write(UnsafeRawBufferPointer(rebasing: $0[0..<pad])) } }
            }
        }
    }

    /// `count` floats as little-endian F32 or F16 (round to nearest even).
    /// F16 refuses values beyond its range (±65504) rather than write infinities.
    package static func encode(_ p: UnsafeBufferPointer<Float>, as type: GGMLType, name: String) throws -> [UInt8] {
        switch type {
        case .f32:
            return Array(UnsafeRawBufferPointer(p))
        case .f16:
            var out = [UInt8](repeating: 0, count: p.count * 2)
            try out.withUnsafeMutableBytes { raw in
                for i in 0..<p.count {
                    let h = Float16(p[i])
                    guard h.isFinite || !p[i].isFinite else {
                        throw LoRAError.invalidArgument(
                            "tensor \(name) holds \(p[i]), beyond F16's range (±65504): export it as F32")
                    }
                    raw.storeBytes(of: h.bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                }
            }
            return out
        }
    }
}
