/// GPT-2's byte-level alphabet (`bytes_to_unicode` in transformers, `bytes_char`
/// in tokenizers): every byte value is written as one printable character so
/// that BPE tokens are strings. The 188 printable bytes (0x21–0x7E, 0xA1–0xAC,
/// 0xAE–0xFF) stand for themselves; the other 68 get U+0100 upwards in byte
/// order (0x00–0x20 → U+0100–U+0120, 0x7F–0xA0 → U+0121–U+0142, 0xAD → U+0143).
/// So a space is "Ġ" (U+0120) and a newline "Ċ" (U+010A).
enum ByteLevel {
    /// The scalar value that stands for each byte.
    static let scalarForByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 0x100
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// The inverse of `scalarForByte`, indexed by scalar value below 0x144; -1 where none.
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for b in 0..<256 { table[Int(scalarForByte[b])] = Int16(b) }
        return table
    }()

    /// The UTF-8 bytes of the character for each byte (one or two bytes each).
    static let utf8ForByte: [[UInt8]] = scalarForByte.map { value in
        guard let scalar = Unicode.Scalar(value) else { return [] }
        return Array(String(Character(scalar)).utf8)
    }

    /// The byte-level string of `bytes`, as UTF-8 (what a vocab key looks like).
    static func encode<C: Collection<UInt8>>(_ bytes: C) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(contentsOf: utf8ForByte[Int(b)]) }
        return out
    }

    /// The bytes a token string stands for. Like the tokenizers ByteLevel decoder,
    /// a token with any character outside the alphabet (an added token such as
    /// "New York") stands for its own UTF-8 bytes instead.
    static func decode(_ token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            let value = Int(scalar.value)
            guard value < byteForScalar.count, byteForScalar[value] >= 0 else {
                return Array(token.utf8)
            }
            out.append(UInt8(truncatingIfNeeded: byteForScalar[value]))
        }
        return out
    }
}

extension Tokenizer {
    /// Writes a byte-level tokenizer with no merges in GPT-2's file format:
    /// `vocab.json` with the 256 byte tokens in GPT-2's id order (the printable
    /// bytes first, as `bytes_to_unicode` lists them) plus `<|endoftext|>` = 256,
    /// and a `merges.txt` holding only its `#version` line. transformers'
    /// GPT2Tokenizer loads these files as they are.
    public static func writeByteLevel(directory: String) throws {
        var order: [Int] = []
        for b in 0..<256 where ByteLevel.scalarForByte[b] == UInt32(b) { order.append(b) }
        for b in 0..<256 where ByteLevel.scalarForByte[b] != UInt32(b) { order.append(b) }
        var vocab = JSONObject()
        for (id, b) in order.enumerated() {
            guard let scalar = Unicode.Scalar(ByteLevel.scalarForByte[b]) else { continue }
            vocab.append(String(Character(scalar)), .number(JSONNumber(id)))
        }
        vocab.append("<|endoftext|>", .number(JSONNumber(256)))
        try AtomicFile.write(JSON.compact(.object(vocab)) + "\n", to: directory + "/vocab.json")
        try AtomicFile.write("#version: 0.2\n", to: directory + "/merges.txt")
    }
}
