import CLoraSupport
import Foundation

// The frozen base's weight matrices in a chosen storage type (issue #16).
// F32 keeps them in the model's FloatBlock as before; BF16, F16 and Q8_0
// keep them in one byte block, converted at load (CLoraSupport/lowp.c).
// Biases, LayerNorm parameters, LoRA A/B, activations and accumulation
// stay F32: only the weights a matrix product or an embedding lookup reads
// change, and each kernel converts them to F32 exactly before using them.

/// The storage type of the base model's weight matrices.
public enum WeightDType: String, CaseIterable, Sendable {
    /// 4 bytes a weight (the default; exactly the checkpoint's values).
    case f32
    /// bfloat16, rounded to nearest even: 2 bytes a weight.
    case bf16
    /// IEEE half, rounded to nearest even (|w| ≥ 65520, which rounds beyond ±65504: refused): 2 bytes a weight.
    case f16
    /// ggml's Q8_0: blocks of 32 int8 weights along the input dimension with
    /// one F16 scale each (34 bytes for 32 weights).
    case q8_0

    /// The C value (LB_DTYPE_*, LORA_DTYPE_*).
    package var code: Int32 {
        switch self {
        case .f32: return LB_DTYPE_F32
        case .bf16: return LB_DTYPE_BF16
        case .f16: return LB_DTYPE_F16
        case .q8_0: return LB_DTYPE_Q8_0
        }
    }

    package init?(code: Int32) {
        guard let d = WeightDType.allCases.first(where: { $0.code == code }) else { return nil }
        self = d
    }

    /// Parses a user's dtype string; the error lists the valid ones.
    public static func parse(_ s: String) throws -> WeightDType {
        guard let d = WeightDType(rawValue: s.lowercased()) else {
            throw LoRAError.invalidArgument(
                "unknown dtype \"\(s)\" (expected one of \(WeightDType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return d
    }

    /// Bytes of one stored weight (Q8_0's scales not counted).
    var weightBytes: Int {
        switch self {
        case .f32: return 4
        case .bf16, .f16: return 2
        case .q8_0: return 1
        }
    }
}

/// One base weight matrix [rows, cols] (row-major) in its storage type.
/// Conv1D weights [in, out] have the input along the rows (Q8_0 blocks run
/// down each column: scales [⌈rows/32⌉, cols]); the embeddings and the LM
/// head [vocab or positions, n_embd] along the columns (scales [rows, ⌈cols/32⌉]).
package struct BaseMatrix {
    package let dtype: WeightDType
    package let rows: Int
    package let cols: Int
    package let inputAlongRows: Bool
    /// rows·cols values of the dtype (Float, UInt16 bits or Int8).
    package let data: UnsafeMutableRawPointer
    /// Q8_0: the F16 scales; nil otherwise.
    package let scales: UnsafeMutablePointer<UInt16>?

    package init(
        dtype: WeightDType, rows: Int, cols: Int, inputAlongRows: Bool, data: UnsafeMutableRawPointer,
        scales: UnsafeMutablePointer<UInt16>?
    ) {
        self.dtype = dtype
        self.rows = rows
        self.cols = cols
        self.inputAlongRows = inputAlongRows
        self.data = data
        self.scales = scales
    }

    /// An F32 matrix viewed in place.
    package init(f32 p: FloatPtr, rows: Int, cols: Int, inputAlongRows: Bool) {
        self.init(dtype: .f32, rows: rows, cols: cols, inputAlongRows: inputAlongRows, data: UnsafeMutableRawPointer(p), scales: nil)
    }

    /// The F32 values in place (F32 storage only).
    package var f32: FloatPtr? { dtype == .f32 ? data.assumingMemoryBound(to: Float.self) : nil }

    package var count: Int { rows * cols }

    /// Q8_0 scale count: ⌈rows/32⌉·cols or rows·⌈cols/32⌉.
    package var scaleCount: Int {
        guard dtype == .q8_0 else { return 0 }
        return inputAlongRows ? (rows + 31) / 32 * cols : rows * ((cols + 31) / 32)
    }
    /// The shape of the Q8_0 scales tensor.
    package var scaleShape: [Int] { inputAlongRows ? [(rows + 31) / 32, cols] : [rows, (cols + 31) / 32] }

    package var dataBytes: Int { count * dtype.weightBytes }

    /// F32 copy of rows [r0, r1) × columns [c0, c1) into dst (row stride ldd). Exact.
    package func dequantize(into dst: FloatPtr, ldd: Int, rows r: Range<Int>, cols c: Range<Int>) {
        if r.isEmpty || c.isEmpty { return }
        if let p = f32 {
            for i in r { (dst + (i - r.lowerBound) * ldd).update(from: p + i * cols + c.lowerBound, count: c.count) }
            return
        }
        lb_dequant_panel(
            dtype.code, inputAlongRows ? 1 : 0, dst, Int32(ldd), data, scales, Int32(cols), Int32(r.lowerBound),
            Int32(r.upperBound), Int32(c.lowerBound), Int32(c.upperBound))
    }

    /// The whole matrix as F32 (rows·cols values).
    package func dequantized() -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            if let b = buf.baseAddress { dequantize(into: b, ldd: cols, rows: 0..<rows, cols: 0..<cols) }
            n = count
        }
    }

    /// Throws what `store` would refuse: a value that is not finite or does
    /// not fit the dtype (beyond bf16's or f16's range, a Q8_0 scale beyond F16's).
    package func validate(_ src: UnsafePointer<Float>, count n: Int? = nil, name: String) throws {
        let n = n ?? count
        for i in 0..<n where !src[i].isFinite {
            throw LoRAError.numerical("\(name) holds NaN or infinite weights; cannot store it as \(dtype.rawValue)")
        }
        switch dtype {
        case .f32: break
        case .bf16:
            for i in 0..<n where lb_bf16_to_f32(lb_f32_to_bf16(src[i])).isInfinite {
                throw LoRAError.numerical("\(name): \(src[i]) overflows bf16")
            }
        case .f16:
            for i in 0..<n where abs(src[i]) >= 65520 {
                throw LoRAError.numerical("\(name): \(src[i]) is beyond f16's range (±65504)")
            }
        case .q8_0:
            // As lb_quantize_q8_0_*: d = max|w|/127 must fit F16.
            for i in 0..<n where abs(src[i]) / 127 > 65504 {
                throw LoRAError.numerical("\(name): \(src[i]) gives a q8_0 scale beyond f16's range")
            }
        }
    }

    /// Stores F32 values (rows·cols) in the dtype: round to nearest even for
    /// BF16/F16, ggml's reference quantizer for Q8_0. Refuses (storing
    /// nothing) values that are not finite or do not fit the dtype.
    package func store(_ src: UnsafePointer<Float>, name: String) throws {
        try store(src, rows: 0..<rows, name: name)
    }

    /// Stores rows `r` (r.count·cols values from src). For a Conv1D weight in
    /// Q8_0 the range must cover whole blocks of 32 rows (it may end at
    /// `rows`). Refuses (storing nothing of these rows) what `validate` refuses.
    package func store(_ src: UnsafePointer<Float>, rows r: Range<Int>, name: String) throws {
        guard r.lowerBound >= 0, r.upperBound <= rows else { throw LoRAError.invalidArgument("\(name): rows \(r) out of 0..<\(rows)") }
        let n = r.count * cols
        let off = r.lowerBound * cols
        try validate(src, count: n, name: name)
        switch dtype {
        case .f32:
            (data.assumingMemoryBound(to: Float.self) + off).update(from: src, count: n)
        case .bf16:
            lb_f32_to_bf16_n(data.assumingMemoryBound(to: UInt16.self) + off, src, n)
        case .f16:
            let out = data.assumingMemoryBound(to: UInt16.self) + off
            for i in 0..<n { out[i] = lb_f32_to_f16(src[i]) }
        case .q8_0:
            guard let scales else { throw LoRAError.invalidArgument("\(name): q8_0 storage without scales") }
            let q = data.assumingMemoryBound(to: Int8.self) + off
            let bad: Int32
            if inputAlongRows {
                guard r.lowerBound % 32 == 0, r.upperBound % 32 == 0 || r.upperBound == rows else {
                    throw LoRAError.invalidArgument("\(name): rows \(r) split a q8_0 block")
                }
                bad = lb_quantize_q8_0_cols(q, scales + r.lowerBound / 32 * cols, src, Int32(r.count), Int32(cols))
            } else {
                bad = lb_quantize_q8_0_rows(q, scales + r.lowerBound * ((cols + 31) / 32), src, Int32(r.count), Int32(cols))
            }
            // validate() refused every input the quantizer flags.
            guard bad == 0 else { throw LoRAError.numerical("\(name): a q8_0 block's scale overflows f16 (|w| > 65504·127)") }
        }
    }
}

/// One allocation of bytes for the reduced-precision matrices, aligned as
/// FloatBlock's (2 MiB with huge pages for large blocks), zero-filled.
/// Thread safety: as FloatBlock's.
package final class ByteBlock: @unchecked Sendable {
    package let base: UnsafeMutableRawPointer
    package let count: Int

    package init(count: Int) throws {
        guard count >= 0, count <= FloatBlock.physicalMemory else {
            throw LoRAError.invalidArgument(
                "a buffer of \(count >> 20) MiB exceeds the machine's memory (\(FloatBlock.physicalMemory >> 20) MiB)")
        }
        let bytes = max(count, 1)
        let huge = bytes >= FloatBlock.hugeAlignment * 2
        var mem: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&mem, huge ? FloatBlock.hugeAlignment : 64, bytes) == 0, let raw = mem else {
            throw LoRAError.invalidArgument("out of memory allocating \(count) bytes")
        }
        if huge { _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE)) }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        base = raw
        self.count = count
    }
    deinit { free(base) }
}
