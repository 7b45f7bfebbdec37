/// A strict JSON reader and a writer, over UTF-8 bytes, used by every file
/// format of the project (safetensors headers, config.json,
/// adapter_config.json, tokenizer files, JSONL datasets).
///
/// Strict where the reference readers are strict (serde_json): invalid UTF-8,
/// lone surrogates, control characters in strings, trailing garbage and
/// nesting deeper than `maxDepth` are errors; nothing traps.
///
/// Not `indirect`: arrays and objects already keep their elements out of line,
/// and a box per value made large files (tokenizer.json) slower to read.
package enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number with its literal text, so integers stay exact.
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    /// Members in file order (duplicates kept; see `JSONObject`).
    case object(JSONObject)

    package var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    package var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    package var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    package var objectValue: JSONObject? { if case .object(let o) = self { return o } else { return nil } }
    package var isNull: Bool { self == .null }
    /// The number as a Double (integers and fractions alike).
    package var doubleValue: Double? { if case .number(let n) = self { return n.double } else { return nil } }
    /// The number when it is an integer literal that fits Int (no fraction, no exponent).
    package var intValue: Int? { if case .number(let n) = self { return n.int } else { return nil } }

    package subscript(key: String) -> JSONValue? { objectValue?[key] }

    /// The kind of value with its article ("a string", "an object", "null"),
    /// for error messages such as "must be an integer, not a string".
    package var kindName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

package struct JSONNumber: Equatable, Sendable {
    /// The literal as written.
    package let text: String
    package let double: Double
    /// Set when the literal is an integer (no '.', 'e') that fits Int.
    package let int: Int?

    package init(_ int: Int) { self.text = String(int); self.double = Double(int); self.int = int }
    package init(_ double: Double) {
        self.double = double
        if double.isFinite, double == double.rounded(), abs(double) < 1e15 {
            self.text = String(Int(double)) + ".0"
        } else {
            self.text = JSONNumber.pythonRepr(double)
        }
        self.int = nil
    }
    init(text: String, double: Double, int: Int?) { self.text = text; self.double = double; self.int = int }

    /// Python's `repr(float)`: shortest round-trip digits, exponent form
    /// below 1e-4 and from 1e16 on (Swift's `description` follows the same rule).
    static func pythonRepr(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return d.description
    }
}

/// A key compared byte for byte (UTF-8), as Python and serde compare keys:
/// Swift's String equality is canonical equivalence ("é" == "e\u{301}").
struct ExactKey: Hashable {
    let string: String
    static func == (a: ExactKey, b: ExactKey) -> Bool { a.string.utf8.elementsEqual(b.string.utf8) }
    func hash(into h: inout Hasher) {
        var s = string
        s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// A JSON object: ordered members with lookup by key, keys compared byte for
/// byte (the last duplicate wins, as in Python; `hasDuplicateKeys` tells
/// strict readers to refuse).
package struct JSONObject: Equatable, Sendable {
    package private(set) var members: [(key: String, value: JSONValue)]
    private var index: [ExactKey: Int]
    package private(set) var hasDuplicateKeys = false
    /// The key of each member that repeated an earlier key, in file order
    /// (empty unless `hasDuplicateKeys`), so a strict reader can name it.
    package private(set) var duplicateKeys: [String] = []

    package init(_ members: [(String, JSONValue)] = []) {
        self.members = []
        self.index = [:]
        self.members.reserveCapacity(members.count)
        self.index.reserveCapacity(members.count)
        for (k, v) in members { append(k, v) }
    }
    /// What the parser builds: the same object as appending `parsed` one by
    /// one, without copying the members when no key repeats.
    init(parsed: [(key: String, value: JSONValue)]) {
        var index: [ExactKey: Int] = [:]
        index.reserveCapacity(parsed.count)
        for (i, member) in parsed.enumerated() where index.updateValue(i, forKey: ExactKey(string: member.key)) != nil {
            self = JSONObject(parsed.map { ($0.key, $0.value) })
            return
        }
        self.members = parsed
        self.index = index
    }
    package mutating func append(_ key: String, _ value: JSONValue) {
        if let i = index[ExactKey(string: key)] {
            hasDuplicateKeys = true
            duplicateKeys.append(key)
            members[i].value = value
        } else {
            index[ExactKey(string: key)] = members.count
            members.append((key, value))
        }
    }
    package subscript(key: String) -> JSONValue? {
        get { index[ExactKey(string: key)].map { members[$0].value } }
        set {
            if let v = newValue {
                append(key, v)
            } else if let i = index[ExactKey(string: key)] {
                members.remove(at: i)
                index = [:]
                for (j, m) in members.enumerated() { index[ExactKey(string: m.key)] = j }
            }
        }
    }
    package var keys: [String] { members.map { $0.key } }
    package var count: Int { members.count }
    package static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count
            && zip(a.members, b.members).allSatisfy { $0.key.utf8.elementsEqual($1.key.utf8) && $0.value == $1.value }
    }
}

package struct JSONParseError: Error, CustomStringConvertible {
    package let offset: Int
    package let message: String
    package var description: String { "invalid JSON at byte \(offset): \(message)" }
}

package enum JSON {
    package static let maxDepth = 256

    /// Parses one JSON value; leading and trailing white space allowed.
    package static func parse<C: Collection>(_ bytes: C) throws -> JSONValue where C.Element == UInt8 {
        let array = Array(bytes)
        return try array.withUnsafeBufferPointer { buf in
            var p = Parser(buf: buf)
            p.skipSpace()
            let v = try p.value(depth: 0)
            p.skipSpace()
            if p.pos != buf.count { throw p.error("unexpected data after the JSON value") }
            return v
        }
    }

    package static func parse(_ string: String) throws -> JSONValue { try parse(Array(string.utf8)) }

    struct Parser {
        let buf: UnsafeBufferPointer<UInt8>
        var pos = 0

        func error(_ m: String) -> JSONParseError { JSONParseError(offset: pos, message: m) }

        mutating func skipSpace() {
            while pos < buf.count {
                let c = buf[pos]
                if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { pos += 1 } else { break }
            }
        }

        mutating func literal(_ word: String, _ v: JSONValue) throws -> JSONValue {
            let w = Array(word.utf8)
            let n = w.count
            guard pos + n <= buf.count else { throw error("unexpected end") }
            for i in 0..<n where buf[pos + i] != w[i] { throw error("invalid literal") }
            pos += n
            return v
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < JSON.maxDepth else { throw error("nesting deeper than \(JSON.maxDepth)") }
            guard pos < buf.count else { throw error("unexpected end") }
            switch buf[pos] {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            default: throw error("unexpected character")
            }
        }

        mutating func object(depth: Int) throws -> JSONValue {
            pos += 1
            // Members are collected first so that the object's index is sized once.
            var members: [(key: String, value: JSONValue)] = []
            skipSpace()
            if pos < buf.count, buf[pos] == UInt8(ascii: "}") { pos += 1; return .object(JSONObject()) }
            while true {
                skipSpace()
                guard pos < buf.count, buf[pos] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let key = try string()
                skipSpace()
                guard pos < buf.count, buf[pos] == UInt8(ascii: ":") else { throw error("expected ':'") }
                pos += 1
                skipSpace()
                members.append((key: key, value: try value(depth: depth + 1)))
                skipSpace()
                guard pos < buf.count else { throw error("unexpected end in object") }
                if buf[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if buf[pos] == UInt8(ascii: "}") { pos += 1; return .object(JSONObject(parsed: members)) }
                throw error("expected ',' or '}'")
            }
        }

        mutating func array(depth: Int) throws -> JSONValue {
            pos += 1
            var items: [JSONValue] = []
            skipSpace()
            if pos < buf.count, buf[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            while true {
                skipSpace()
                items.append(try value(depth: depth + 1))
                skipSpace()
                guard pos < buf.count else { throw error("unexpected end in array") }
                if buf[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if buf[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                throw error("expected ',' or ']'")
            }
        }

        mutating func hex4() throws -> UInt32 {
            guard pos + 4 <= buf.count else { throw error("truncated \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = buf[pos]
                let d: UInt32
                switch c {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
                default: throw error("invalid \\u escape")
                }
                v = v << 4 | d
                pos += 1
            }
            return v
        }

        mutating func string() throws -> String {
            pos += 1  // opening quote
            // Fast path, the common case: no escape before the closing quote, so
            // the string is validated straight from the input.
            let start = pos
            while pos < buf.count {
                let c = buf[pos]
                if c == UInt8(ascii: "\"") {
                    pos += 1
                    guard let s = String(validating: UnsafeBufferPointer(rebasing: buf[start..<(pos - 1)]), as: UTF8.self) else {
                        throw error("string is not valid UTF-8")
                    }
                    return s
                }
                if c == UInt8(ascii: "\\") { break }
                if c < 0x20 { throw error("control character in string") }
                pos += 1
            }
            var out = Array(UnsafeBufferPointer(rebasing: buf[start..<pos]))
            while true {
                guard pos < buf.count else { throw error("unterminated string") }
                let c = buf[pos]
                if c == UInt8(ascii: "\"") { pos += 1; break }
                if c < 0x20 { throw error("control character in string") }
                if c == UInt8(ascii: "\\") {
                    pos += 1
                    guard pos < buf.count else { throw error("unterminated escape") }
                    let e = buf[pos]
                    pos += 1
                    switch e {
                    case UInt8(ascii: "\""): out.append(0x22)
                    case UInt8(ascii: "\\"): out.append(0x5C)
                    case UInt8(ascii: "/"): out.append(0x2F)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var cp = try hex4()
                        if (0xD800...0xDBFF).contains(cp) {
                            guard pos + 2 <= buf.count, buf[pos] == UInt8(ascii: "\\"), buf[pos + 1] == UInt8(ascii: "u")
                            else { throw error("lone surrogate \\u\(JSON.hex4(UInt16(cp))): a leading surrogate without a trailing one") }
                            pos += 2
                            let lo = try hex4()
                            guard (0xDC00...0xDFFF).contains(lo) else {
                                throw error(
                                    "lone surrogate \\u\(JSON.hex4(UInt16(cp))): a leading surrogate followed by \\u\(JSON.hex4(UInt16(lo))), not a trailing one"
                                )
                            }
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(cp) {
                            throw error("lone surrogate \\u\(JSON.hex4(UInt16(cp))): a trailing surrogate without a leading one")
                        }
                        guard let scalar = Unicode.Scalar(cp) else { throw error("invalid code point") }
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                    default: throw error("invalid escape")
                    }
                    continue
                }
                // Raw bytes: copy a run, validated as UTF-8 below.
                out.append(c)
                pos += 1
            }
            guard let s = String(validating: out, as: UTF8.self) else {
                throw error("string is not valid UTF-8")
            }
            return s
        }

        mutating func number() throws -> JSONNumber {
            let start = pos
            var isInt = true
            if buf[pos] == UInt8(ascii: "-") { pos += 1 }
            guard pos < buf.count else { throw error("truncated number") }
            if buf[pos] == UInt8(ascii: "0") {
                pos += 1
            } else if (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(buf[pos]) {
                while pos < buf.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buf[pos]) { pos += 1 }
            } else {
                throw error("invalid number")
            }
            if pos < buf.count, buf[pos] == UInt8(ascii: ".") {
                isInt = false
                pos += 1
                let d0 = pos
                while pos < buf.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buf[pos]) { pos += 1 }
                if pos == d0 { throw error("invalid number: no digit after '.'") }
            }
            if pos < buf.count, buf[pos] == UInt8(ascii: "e") || buf[pos] == UInt8(ascii: "E") {
                isInt = false
                pos += 1
                if pos < buf.count, buf[pos] == UInt8(ascii: "+") || buf[pos] == UInt8(ascii: "-") { pos += 1 }
                let d0 = pos
                while pos < buf.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(buf[pos]) { pos += 1 }
                if pos == d0 { throw error("invalid number: no digit in exponent") }
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: buf[start..<pos]), as: UTF8.self)
            let d = Double(text) ?? .nan
            return JSONNumber(text: text, double: d, int: isInt ? Int(text) : nil)
        }
    }
}

// MARK: - Writing

extension JSON {
    /// Compact JSON (serde_json / Python `separators=(",", ":")` style), keys in member order.
    package static func compact(_ v: JSONValue) -> String {
        var out = ""
        write(v, to: &out, indent: nil, level: 0, sortKeys: false, asciiOnly: false)
        return out
    }

    /// Python's `json.dumps(v, indent=2, sort_keys=True)` (ensure_ascii on).
    package static func pythonPretty(_ v: JSONValue, sortKeys: Bool = true) -> String {
        var out = ""
        write(v, to: &out, indent: 2, level: 0, sortKeys: sortKeys, asciiOnly: true)
        return out
    }

    static func write(_ v: JSONValue, to out: inout String, indent: Int?, level: Int, sortKeys: Bool, asciiOnly: Bool) {
        switch v {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n.text
        case .string(let s): writeString(s, to: &out, asciiOnly: asciiOnly)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                newline(&out, indent, level + 1)
                write(item, to: &out, indent: indent, level: level + 1, sortKeys: sortKeys, asciiOnly: asciiOnly)
            }
            newline(&out, indent, level)
            out += "]"
        case .object(let obj):
            if obj.count == 0 { out += "{}"; return }
            out += "{"
            var members = obj.members
            if sortKeys { members.sort { Array($0.key.utf16).lexicographicallyPrecedes(Array($1.key.utf16)) } }
            for (i, m) in members.enumerated() {
                if i > 0 { out += "," }
                newline(&out, indent, level + 1)
                writeString(m.key, to: &out, asciiOnly: asciiOnly)
                out += indent == nil ? ":" : ": "
                write(m.value, to: &out, indent: indent, level: level + 1, sortKeys: sortKeys, asciiOnly: asciiOnly)
            }
            newline(&out, indent, level)
            out += "}"
        }
    }

    static func newline(_ out: inout String, _ indent: Int?, _ level: Int) {
        guard let indent else { return }
        out += "\n"
        out += String(repeating: " ", count: indent * level)
    }

    static func writeString(_ s: String, to out: inout String, asciiOnly: Bool) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (asciiOnly && u.value > 0x7E) {
                    for unit in String(u).utf16 { out += "\\u" + hex4(unit) }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    static func hex4(_ v: UInt16) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 4 - s.count) + s
    }
}
