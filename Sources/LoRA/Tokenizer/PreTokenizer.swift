/// The character classes GPT-2's pre-tokenization regex distinguishes.
enum ScalarClass: UInt8, Sendable {
    /// Not a letter, number or white space: `[^\s\p{L}\p{N}]`.
    case other = 0
    /// `\p{L}`: general categories Lu, Ll, Lt, Lm, Lo.
    case letter = 1
    /// `\p{N}`: general categories Nd, Nl, No.
    case number = 2
    /// `\s`: the Unicode White_Space property.
    case space = 3
}

/// GPT-2's pre-tokenizer, written as a scanner over UTF-8. It splits text exactly
/// like the regex (applied to Unicode scalars, not grapheme clusters)
///
///     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
///
/// Alternatives are tried in order at each position, so:
/// - a contraction needs U+0027 followed by lower-case letters ("DON'T" splits as
///   "DON", "'", "T"), and only where a piece starts: inside a punctuation run the
///   apostrophe stays with the run ("!!'s" is "!!'", "s");
/// - one U+0020 (and no other space) may lead a letter, number or other run;
/// - a white-space run that a non-space follows leaves its last scalar to the next
///   piece (`\s+(?!\S)`), which is how " world" keeps its space; a single
///   white-space scalar before a non-space is a piece of its own (`\s+`).
enum GPT2PreTokenizer {
    /// The Unicode version of the tables in Oniguruma as built into Hugging Face
    /// tokenizers 0.23. Scalars assigned later are unassigned there, i.e. "other";
    /// the Swift runtime may know a newer Unicode (6.3 has 17.0).
    static let unicodeVersion = (major: 16, minor: 0)

    /// The class of a scalar, straight from the Unicode properties.
    static func computeClass(_ value: UInt32) -> ScalarClass {
        guard let scalar = Unicode.Scalar(value) else { return .other }
        let properties = scalar.properties
        guard let age = properties.age,
            age.major < unicodeVersion.major
                || (age.major == unicodeVersion.major && age.minor <= unicodeVersion.minor)
        else {
            return .other
        }
        if properties.isWhitespace { return .space }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    /// Classes of the Basic Multilingual Plane, built once on first use.
    static let bmpClasses: [ScalarClass] = (0..<0x10000).map { computeClass(UInt32($0)) }

    @inline(__always)
    static func scalarClass(_ value: UInt32) -> ScalarClass {
        value < 0x10000 ? bmpClasses[Int(value)] : computeClass(value)
    }

    /// The class and encoded length of the scalar at `i`. The bytes come from a
    /// Swift string, so they are valid UTF-8; a truncated sequence still yields a
    /// length inside the buffer.
    @inline(__always)
    static func classAt(_ p: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> (ScalarClass, Int) {
        let b0 = p[i]
        if b0 < 0x80 { return (asciiClasses[Int(b0)], 1) }
        var value: UInt32
        var length: Int
        if b0 >= 0xF0 {
            value = UInt32(b0 & 0x07); length = 4
        } else if b0 >= 0xE0 {
            value = UInt32(b0 & 0x0F); length = 3
        } else {
            value = UInt32(b0 & 0x1F); length = 2
        }
        if length > end - i { return (.other, end - i) }
        for k in 1..<length { value = value << 6 | UInt32(p[i + k] & 0x3F) }
        return (scalarClass(value), length)
    }

    static let asciiClasses: [ScalarClass] = (0..<128).map { computeClass(UInt32($0)) }

    /// The length of a contraction suffix after an apostrophe at `i - 1`, or 0.
    @inline(__always)
    static func contractionLength(_ p: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int {
        guard i < end else { return 0 }
        switch p[i] {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"):
            return 1
        case UInt8(ascii: "r"), UInt8(ascii: "v"):
            return i + 1 < end && p[i + 1] == UInt8(ascii: "e") ? 2 : 0
        case UInt8(ascii: "l"):
            return i + 1 < end && p[i + 1] == UInt8(ascii: "l") ? 2 : 0
        default:
            return 0
        }
    }

    /// Calls `body(start, end)` for each piece of `p[range]`, in order. The
    /// pieces cover the range without gaps.
    static func split(_ p: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ body: (Int, Int) -> Void) {
        let end = range.upperBound
        var i = range.lowerBound
        while i < end {
            let b = p[i]
            if b == UInt8(ascii: "'") {
                let n = contractionLength(p, i + 1, end)
                if n > 0 {
                    body(i, i + 1 + n)
                    i += 1 + n
                    continue
                }
            }
            var (cls, length) = classAt(p, i, end)
            var runStart = i
            if b == 0x20 && i + 1 < end {
                let (nextClass, nextLength) = classAt(p, i + 1, end)
                if nextClass != .space {
                    cls = nextClass
                    length = nextLength
                    runStart = i + 1
                }
            }
            var j = runStart + length
            if cls == .space {
                // \s+(?!\S) then \s+.
                var lastStart = runStart
                while j < end {
                    let (c, l) = classAt(p, j, end)
                    if c != .space { break }
                    lastStart = j
                    j += l
                }
                if j < end && lastStart > i { j = lastStart }
            } else {
                while j < end {
                    let (c, l) = classAt(p, j, end)
                    if c != cls { break }
                    j += l
                }
            }
            body(i, j)
            i = j
        }
    }
}
