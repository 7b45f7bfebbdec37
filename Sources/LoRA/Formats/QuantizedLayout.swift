import CLoraSupport
import Foundation

// How liblora stores a reduced-precision GPT-2 in model.safetensors.
//
// - BF16 and F16: each weight matrix is an ordinary BF16 or F16 tensor under
//   its transformers name (any safetensors reader loads it).
// - Q8_0: a weight matrix `<name>` [rows, cols] is two tensors:
//     `<name>.q8_0`        I8  [rows, cols]: the quantized values q;
//     `<name>.q8_0_scale`  F16 the block scales d: for a Conv1D weight
//                          [in, out] (blocks of 32 along the input, down each
//                          column) [⌈in/32⌉, out], scale (kb, n) covering rows
//                          32·kb ..< min(in, 32·kb + 32) of column n; for wte,
//                          wpe and an untied LM head [rows, n_embd] (blocks
//                          along each row) [rows, ⌈n_embd/32⌉].
//   The weight is q · d (the last block of a dimension that is not a multiple
//   of 32 is shorter). The quantizer is ggml's quantize_row_q8_0.
// - Everything else (biases, LayerNorm) stays F32.
// The header's __metadata__ holds "liblora.dtype" (bf16, f16 or q8_0); a
// model loaded without an explicit dtype takes it from there.

enum QuantizedLayout {
    static let valuesSuffix = ".q8_0"
    static let scaleSuffix = ".q8_0_scale"
    static let dtypeKey = "liblora.dtype"

    /// `<name>` for `<name>.q8_0` or `<name>.q8_0_scale`, else nil.
    static func baseName(of name: String) -> String? {
        if name.hasSuffix(scaleSuffix) { return String(name.dropLast(scaleSuffix.count)) }
        if name.hasSuffix(valuesSuffix) { return String(name.dropLast(valuesSuffix.count)) }
        return nil
    }

    /// The dtype a liblora file was saved in (nil: none recorded).
    static func savedDType(_ file: SafeTensorsFile) throws -> WeightDType? {
        guard let s = file.metadata?[dtypeKey] else { return nil }
        guard let d = WeightDType(rawValue: s) else {
            throw LoRAError.invalidFile(path: file.path, reason: "unknown \(dtypeKey) \"\(s)\" in the header's __metadata__")
        }
        return d
    }

    /// Reads a Q8_0 matrix into `m` (kept as is for a q8_0 model, else
    /// dequantized and converted). Validates the pair before touching `m`.
    static func read(q: TensorInfo?, d: TensorInfo?, name: String, into m: BaseMatrix, file: SafeTensorsFile) throws {
        func fail(_ r: String) -> LoRAError { .invalidFile(path: file.path, reason: r) }
        guard let q else { throw fail("q8_0 tensor \(name) has scales but no values (\(name)\(valuesSuffix))") }
        guard let d else { throw fail("q8_0 tensor \(name) has no scales (\(name)\(scaleSuffix))") }
        guard q.dtype == .I8 else { throw fail("\(q.name) has dtype \(q.dtype.rawValue), expected I8") }
        guard d.dtype == .F16 else { throw fail("\(d.name) has dtype \(d.dtype.rawValue), expected F16") }
        guard q.shape == [m.rows, m.cols] else { throw fail("\(q.name) has shape \(q.shape), the config needs \([m.rows, m.cols])") }
        let want = BaseMatrix(
            dtype: .q8_0, rows: m.rows, cols: m.cols, inputAlongRows: m.inputAlongRows, data: m.data, scales: nil)
        guard d.shape == want.scaleShape else {
            throw fail(
                "\(d.name) has shape \(d.shape): \(want.scaleShape) blocks of 32 are needed (\(m.inputAlongRows ? "along the input rows" : "along each row"))"
            )
        }
        let qb = file.rawBytes(q)
        let db = file.rawBytes(d)
        var scales = [UInt16](repeating: 0, count: want.scaleCount)
        for i in 0..<scales.count {
            let bits = UInt16(littleEndian: db.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
            let v = lb_f16_to_f32(bits)
            guard v.isFinite, v >= 0 else {
                throw fail("\(d.name) holds a \(v.isNaN ? "NaN" : "negative or infinite") scale at index \(i)")
            }
            scales[i] = bits
        }
        if m.dtype == .q8_0, let ms = m.scales {
            if let src = qb.baseAddress {
                let chunk = 1 << 21
                for b0 in stride(from: 0, to: m.count, by: chunk) {
                    let b1 = min(m.count, b0 + chunk)
                    (m.data + b0).copyMemory(from: src + b0, byteCount: b1 - b0)
                    file.dropPages(q, bytes: b0..<b1)
                }
            }
            ms.update(from: scales, count: scales.count)
            return
        }
        var values = [Int8](repeating: 0, count: m.count)
        values.withUnsafeMutableBytes { dst in
            if let src = qb.baseAddress, let p = dst.baseAddress { p.copyMemory(from: src, byteCount: m.count) }
        }
        var floats = [Float](repeating: 0, count: m.count)
        values.withUnsafeMutableBytes { vp in
            scales.withUnsafeMutableBufferPointer { sp in
                floats.withUnsafeMutableBufferPointer { fp in
                    let src = BaseMatrix(
                        dtype: .q8_0, rows: m.rows, cols: m.cols, inputAlongRows: m.inputAlongRows, data: vp.baseAddress!,
                        scales: sp.baseAddress)
                    src.dequantize(into: fp.baseAddress!, ldd: m.cols, rows: 0..<m.rows, cols: 0..<m.cols)
                }
            }
        }
        try m.store(floats, name: name)
    }

    /// Converts a float tensor (F32, F16, BF16, F64) into `m`'s dtype; BF16
    /// into bf16 and F16 into f16 are copied as they are.
    static func convert(_ info: TensorInfo, name: String, into m: BaseMatrix, file: SafeTensorsFile) throws {
        if (m.dtype == .bf16 && info.dtype == .BF16) || (m.dtype == .f16 && info.dtype == .F16) {
            let raw = file.rawBytes(info)
            let out = m.data.assumingMemoryBound(to: UInt16.self)
            let chunk = 1 << 19
            for i0 in stride(from: 0, to: m.count, by: chunk) {
                let i1 = min(m.count, i0 + chunk)
                for i in i0..<i1 {
                    let bits = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    let v = info.dtype == .BF16 ? lb_bf16_to_f32(bits) : lb_f16_to_f32(bits)
                    guard v.isFinite else {
                        throw LoRAError.invalidFile(path: file.path, reason: "tensor \(info.name) holds NaN or infinite weights")
                    }
                    out[i] = bits
                }
                file.dropPages(info, bytes: 2 * i0..<2 * i1)
            }
            return
        }
        // A panel of rows at a time (whole Q8_0 blocks): no F32 copy of the whole matrix.
        let chunk = max(32, (1 << 20) / max(1, m.cols) / 32 * 32)
        var floats = [Float](repeating: 0, count: chunk * m.cols)
        var r0 = 0
        while r0 < m.rows {
            let r1 = min(m.rows, r0 + chunk)
            try floats.withUnsafeMutableBufferPointer { buf in
                try file.copyFloats(info, elements: r0 * m.cols..<r1 * m.cols, into: buf.baseAddress!)
                do { try m.store(buf.baseAddress!, rows: r0..<r1, name: name) } catch let LoRAError.numerical(reason) {
                    throw LoRAError.invalidFile(path: file.path, reason: reason)
                }
            }
            let esize = (info.end - info.begin) / max(1, info.count)
            file.dropPages(info, bytes: esize * r0 * m.cols..<esize * r1 * m.cols)
            r0 = r1
        }
    }

    /// The tensors of one matrix for saving, under `name` (see the layout above).
    static func tensors(of m: BaseMatrix, name: String) -> [TensorData] {
        switch m.dtype {
        case .f32:
            return [TensorData(name: name, shape: [m.rows, m.cols], floats: UnsafeBufferPointer(start: m.f32, count: m.count))]
        case .bf16, .f16:
            let bytes = Array(UnsafeRawBufferPointer(start: m.data, count: m.dataBytes))
            return [TensorData(name: name, dtype: m.dtype == .bf16 ? .BF16 : .F16, shape: [m.rows, m.cols], bytes: bytes)]
        case .q8_0:
            let q = Array(UnsafeRawBufferPointer(start: m.data, count: m.count))
            let d = Array(UnsafeRawBufferPointer(start: m.scales.map { UnsafeRawPointer($0) }, count: 2 * m.scaleCount))
            return [
                TensorData(name: name + valuesSuffix, dtype: .I8, shape: [m.rows, m.cols], bytes: q),
                TensorData(name: name + scaleSuffix, dtype: .F16, shape: m.scaleShape, bytes: d),
            ]
        }
    }
}
