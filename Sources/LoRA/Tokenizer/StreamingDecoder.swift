/// Decodes ids one at a time, e.g. while sampling. `push` returns the text that
/// is complete so far and holds back the bytes of a UTF-8 character that may
/// still be completed by the next token; `finish` flushes them. Concatenating
/// everything `push` and `finish` returned gives exactly `decode(ids)`, and no
/// output ever ends with a partial character.
public struct StreamingDecoder: Sendable {
    let tokenizer: Tokenizer
    /// Bytes of an incomplete character (at most 3).
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer) {
        self.tokenizer = tokenizer
    }

    /// Adds one id and returns the newly completed text (possibly empty).
    /// Throws `LoRAError.invalidArgument` for an id that has no token; the
    /// decoder is unchanged then.
    public mutating func push(_ id: TokenID) throws -> String {
        var bytes = pending
        try tokenizer.appendBytes(of: id, to: &bytes)
        let keep = Self.incompleteTailLength(bytes)
        pending = Array(bytes[(bytes.count - keep)...])
        return String(decoding: bytes[..<(bytes.count - keep)], as: UTF8.self)
    }

    /// Returns the held-back bytes (U+FFFD for what is not valid UTF-8) and resets.
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// The length of the longest suffix of `bytes` that is the start of a valid
    /// UTF-8 sequence but not all of it (0 if the bytes end on a boundary or the
    /// tail is invalid anyway, in which case it is decoded lossily right away).
    static func incompleteTailLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        // A lead byte can be at most 3 bytes from the end of an incomplete sequence.
        var start = n - 1
        while start >= 0 && start >= n - 3 {
            let b = bytes[start]
            if b & 0xC0 != 0x80 {
                return isIncompletePrefix(bytes[start...]) ? n - start : 0
            }
            start -= 1
        }
        return 0
    }

    /// True if `tail` (which starts with a non-continuation byte) is a proper
    /// prefix of some valid UTF-8 encoding of a scalar.
    static func isIncompletePrefix(_ tail: ArraySlice<UInt8>) -> Bool {
        guard let lead = tail.first else { return false }
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondRange = 0x80...0x9F
        case 0xF0: length = 4; secondRange = 0x90...0xBF
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondRange = 0x80...0x8F
        default: return false
        }
        guard tail.count < length else { return false }
        for (k, b) in tail.dropFirst().enumerated() {
            let range: ClosedRange<UInt8> = k == 0 ? secondRange : 0x80...0xBF
            if !range.contains(b) { return false }
        }
        return true
    }
}
