import Foundation
import Testing

@testable import LoRA

// Fixtures come from scripts/make_tokenizer_fixtures.py (Hugging Face tokenizers
// 0.23.3 / transformers 5.24): a 1,201-id byte-level BPE trained on fortunes.

private let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
private let fixtures = packageRoot.appendingPathComponent("Tests/LoRATests/Fixtures/tokenizer").path

private func fixture(_ name: String) -> String { fixtures + "/" + name }

private struct EncodeCase: Decodable { let text: String; let ids: [TokenID] }
private struct DecodeCase: Decodable { let ids: [TokenID]; let text: String }
private struct Cases: Decodable { let encode: [EncodeCase]; let decode: [DecodeCase] }

private func loadCases(_ name: String) throws -> Cases {
    let data = try Data(contentsOf: URL(fileURLWithPath: fixture(name)))
    return try JSONDecoder().decode(Cases.self, from: data)
}

/// Swift's `==` on strings is canonical equivalence ("e\u{301}" == "é");
/// the tokenizer must preserve the exact scalars, so compare bytes.
private func sameBytes(_ a: String, _ b: String) -> Bool {
    a.utf8.elementsEqual(b.utf8)
}

private func debugDescription(_ s: String) -> String {
    s.unicodeScalars.map { $0.escaped(asASCII: true) }.joined()
}

/// A fresh directory for files a test writes; removed by the caller.
private func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("lora-tokenizer-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

enum TokenizerLoadRoute: String, CaseIterable, CustomTestStringConvertible {
    case directory, vocabAndMerges, legacyJSON, directoryWithoutJSON
    var testDescription: String { rawValue }
}

private func load(_ route: TokenizerLoadRoute) throws -> Tokenizer {
    switch route {
    case .directory:
        return try Tokenizer.load(directory: fixtures)  // picks tokenizer.json (pair merges)
    case .vocabAndMerges:
        return try Tokenizer(vocabPath: fixture("vocab.json"), mergesPath: fixture("merges.txt"))
    case .legacyJSON:
        return try Tokenizer(tokenizerJSONPath: fixture("tokenizer_legacy.json"))
    case .directoryWithoutJSON:
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(atPath: fixture(name), toPath: dir.appendingPathComponent(name).path)
        }
        return try Tokenizer.load(directory: dir.path)
    }
}

@Suite struct TokenizerTests {
    // MARK: Agreement with Hugging Face

    @Test(arguments: TokenizerLoadRoute.allCases)
    func encodeMatchesHuggingFace(route: TokenizerLoadRoute) throws {
        let tokenizer = try load(route)
        let cases = try loadCases("cases.json")
        #expect(tokenizer.vocabSize == 1201)
        #expect(tokenizer.endOfTextID == 1200)
        var mismatches = 0
        for c in cases.encode {
            let ids = tokenizer.encode(c.text)
            if ids != c.ids {
                mismatches += 1
                if mismatches <= 5 {
                    Issue.record("\(route) \"\(debugDescription(c.text).prefix(120))\": got \(ids.prefix(40)), want \(c.ids.prefix(40))")
                }
            }
        }
        #expect(mismatches == 0, "\(mismatches) of \(cases.encode.count) texts differ")
    }

    @Test(arguments: TokenizerLoadRoute.allCases)
    func decodeMatchesHuggingFace(route: TokenizerLoadRoute) throws {
        let tokenizer = try load(route)
        let cases = try loadCases("cases.json")
        for c in cases.decode + cases.encode.map({ DecodeCase(ids: $0.ids, text: $0.text) }) {
            let text = try tokenizer.decode(c.ids)
            #expect(sameBytes(text, c.text), "\(c.ids): got \"\(debugDescription(text))\", want \"\(debugDescription(c.text))\"")
        }
    }

    /// add_prefix_space = true, a special token that is a prefix of "<|endoftext|>",
    /// and non-special added tokens with a space and with non-ASCII letters.
    @Test func extraTokenizerMatchesHuggingFace() throws {
        let tokenizer = try Tokenizer(tokenizerJSONPath: fixture("tokenizer_extra.json"))
        let cases = try loadCases("cases_extra.json")
        #expect(tokenizer.vocabSize == 1204)
        #expect(tokenizer.id(for: "<|endof") == 1201)
        #expect(tokenizer.token(for: 1202) == "New York")
        for c in cases.encode {
            let ids = tokenizer.encode(c.text)
            #expect(ids == c.ids, "\"\(debugDescription(c.text).prefix(120))\"")
        }
        for c in cases.decode {
            // HF decodes "déjà" (an added token) through the byte-level map, so é and
            // à become the lone bytes 0xE9, 0xE0 and then U+FFFD. We do the same.
            let text = try tokenizer.decode(c.ids)
            #expect(sameBytes(text, c.text), "\(c.ids): got \"\(debugDescription(text))\"")
        }
    }

    /// The pre-tokenizer's letter/number/space/other class of every Unicode scalar
    /// equals what Hugging Face's ByteLevel pre-tokenizer does.
    @Test func scalarClassesMatchHuggingFace() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture("scalar_classes.json")))
        let runs = try #require(try JSONSerialization.jsonObject(with: data) as? [[Any]])
        var bounds: [(start: UInt32, kind: String)] = []
        for run in runs {
            let start = try #require(run[0] as? Int)
            let kind = try #require(run[1] as? String)
            bounds.append((UInt32(start), kind))
        }
        bounds.append((0x110000, ""))
        var mismatches: [String] = []
        for r in 0..<(bounds.count - 1) {
            let want: ScalarClass
            switch bounds[r].kind {
            case "L": want = .letter
            case "N": want = .number
            case "S": want = .space
            default: want = .other
            }
            for value in bounds[r].start..<bounds[r + 1].start where !(0xD800...0xDFFF).contains(value) {
                let got = GPT2PreTokenizer.scalarClass(value)
                if got != want && mismatches.count < 20 {
                    mismatches.append("U+\(String(value, radix: 16, uppercase: true)): \(got), want \(want)")
                }
            }
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
    }

    // MARK: Round trips and streaming

    @Test func roundTripCorpus() throws {
        let tokenizer = try load(.directory)
        for c in try loadCases("cases.json").encode {
            #expect(sameBytes(try tokenizer.decode(tokenizer.encode(c.text)), c.text))
        }
    }

    @Test func roundTripRandomScalars() throws {
        let tokenizer = try load(.vocabAndMerges)
        var rng = TokenizerTestRNG(seed: 42)
        // Ranges that exercise every class and UTF-8 length, plus the special token.
        let ranges: [ClosedRange<UInt32>] = [
            0x00...0x7F, 0x80...0x7FF, 0x2000...0x206F, 0x3000...0x30FF,
            0xAC00...0xD7A3, 0xE000...0xFFFF, 0x1F300...0x1FAFF, 0x10000...0x10FFFF,
        ]
        for _ in 0..<400 {
            var text = ""
            for _ in 0..<Int(rng.next() % 40) {
                if rng.next() % 50 == 0 { text += "<|endoftext|>"; continue }
                let range = ranges[Int(rng.next() % UInt64(ranges.count))]
                let value = range.lowerBound + UInt32(rng.next() % UInt64(range.count))
                if let scalar = Unicode.Scalar(value) { text.unicodeScalars.append(scalar) }
            }
            let ids = tokenizer.encode(text)
            #expect(sameBytes(try tokenizer.decode(ids), text), "\"\(debugDescription(text))\"")
        }
    }

    @Test func streamingDecoderHoldsBackPartialCharacters() throws {
        let tokenizer = try load(.directory)
        let texts = [
            "Zürich, 日本語のテキスト, 한국어 👩🏽‍💻✨🚀 — done.",
            "👨‍👩‍👧‍👦🏳️‍🌈 café e\u{301} Привет <|endoftext|> 中文字符测试 🇫🇷",
        ]
        for text in texts {
            let ids = tokenizer.encode(text)
            var decoder = StreamingDecoder(tokenizer: tokenizer)
            var joined = ""
            var pieces = 0
            for id in ids {
                let piece = try decoder.push(id)
                #expect(!piece.unicodeScalars.contains("\u{FFFD}"), "partial character emitted at id \(id)")
                joined += piece
                pieces += 1
            }
            joined += decoder.finish()
            #expect(sameBytes(joined, text))
            #expect(ids.count > text.unicodeScalars.count / 2)  // many characters span tokens
        }
    }

    @Test func streamingDecoderMatchesDecodeOnInvalidBytes() throws {
        let tokenizer = try load(.directory)
        for c in try loadCases("cases.json").decode {
            var decoder = StreamingDecoder(tokenizer: tokenizer)
            var joined = ""
            for id in c.ids { joined += try decoder.push(id) }
            joined += decoder.finish()
            #expect(sameBytes(joined, c.text), "\(c.ids)")
        }
        // Held bytes: "€" is E2 82 AC; after E2 82 nothing can be emitted yet.
        let ids = try "€".utf8.map { b in try #require(tokenizer.id(for: byteChar(b))) }
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        #expect(try decoder.push(ids[0]) == "")
        #expect(try decoder.push(ids[1]) == "")
        #expect(try decoder.push(ids[2]) == "€")
        #expect(try decoder.push(ids[0]) == "")
        #expect(decoder.finish() == "\u{FFFD}")
        #expect(decoder.finish() == "")
        #expect(throws: LoRAError.self) { try decoder.push(5000) }
    }

    // MARK: API details

    @Test func lookups() throws {
        let tokenizer = try load(.vocabAndMerges)
        #expect(tokenizer.id(for: "<|endoftext|>") == 1200)
        #expect(tokenizer.token(for: 1200) == "<|endoftext|>")
        #expect(tokenizer.token(for: 0) == "!")
        #expect(tokenizer.id(for: "Ġ") == 220)
        #expect(tokenizer.token(for: -1) == nil)
        #expect(tokenizer.token(for: 1201) == nil)
        #expect(tokenizer.id(for: "no such token") == nil)
        #expect(tokenizer.encode("") == [])
    }

    @Test func decodeRejectsUnknownIDs() throws {
        let tokenizer = try load(.directory)
        for bad: TokenID in [-1, 1201, .max] {
            #expect(throws: LoRAError.invalidArgument("token id \(bad) is out of range (vocab size 1201)")) {
                try tokenizer.decode([15, bad])
            }
        }
    }

    @Test func sharedAcrossThreads() async throws {
        let tokenizer = try load(.directory)
        let cases = try loadCases("cases.json").encode
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for part in 0..<4 {
                group.addTask {
                    cases.enumerated().allSatisfy { $0.offset % 4 != part || tokenizer.encode($0.element.text) == $0.element.ids }
                }
            }
            for try await ok in group { #expect(ok) }
        }
    }

    // MARK: Bad files

    /// Writes `files` into a fresh directory and expects loading to throw a
    /// `LoRAError` whose message names the file `culprit` and contains `mention`.
    private func expectLoadFails(
        _ files: [String: String], culprit: String, mention: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        for (name, content) in files {
            try content.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        do {
            _ = try Tokenizer.load(directory: dir.path)
            Issue.record("loading did not fail", sourceLocation: sourceLocation)
        } catch let error as LoRAError {
            let message = error.description
            #expect(message.contains(dir.appendingPathComponent(culprit).path), "\(message)", sourceLocation: sourceLocation)
            #expect(message.contains(mention), "\(message)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("not a LoRAError: \(error)", sourceLocation: sourceLocation)
        }
    }

    private let vocab = #"{"a": 0, "b": 1, "ab": 2, "c": 3}"#

    @Test func badMergesFiles() throws {
        try expectLoadFails(
            ["vocab.json": vocab, "merges.txt": "#version: 0.2\na b\nab x\n"],
            culprit: "merges.txt", mention: "line 3: merge token \"x\" is not in the vocab")
        try expectLoadFails(
            ["vocab.json": vocab, "merges.txt": "#version: 0.2\nb c\n"],
            culprit: "merges.txt", mention: "line 2: merged token \"bc\" is not in the vocab")
        try expectLoadFails(
            ["vocab.json": vocab, "merges.txt": "a b\na b c\n"],
            culprit: "merges.txt", mention: "line 2: a merge must be two tokens separated by one space, got 3")
        try expectLoadFails(
            ["vocab.json": vocab, "merges.txt": "a b\n\na b\n"],
            culprit: "merges.txt", mention: "line 2")
        try expectLoadFails(
            ["vocab.json": vocab, "merges.txt": "a  b\n"],
            culprit: "merges.txt", mention: "line 1")
    }

    @Test func goodMergesVariants() throws {
        // No "#version" line, "\r\n" line ends, blank lines at the end.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try vocab.write(to: dir.appendingPathComponent("vocab.json"), atomically: true, encoding: .utf8)
        try "a b\r\n\r\n\n".write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        let tokenizer = try Tokenizer.load(directory: dir.path)
        #expect(tokenizer.encode("abcab") == [2, 3, 2])
        #expect(tokenizer.encode("ba") == [1, 0])
        #expect(tokenizer.encode("xa") == [0])  // bytes missing from the vocab are dropped, as in HF
        #expect(tokenizer.vocabSize == 4)
        #expect(tokenizer.endOfTextID == nil)
    }

    @Test func badVocabFiles() throws {
        let merges = "#version: 0.2\n"
        try expectLoadFails(
            ["vocab.json": "[1, 2]", "merges.txt": merges],
            culprit: "vocab.json", mention: "must be a JSON object")
        try expectLoadFails(
            ["vocab.json": #"{"a": 1.5}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "must be an integer")
        try expectLoadFails(
            ["vocab.json": #"{"a": 1.0}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "must be an integer")
        try expectLoadFails(
            ["vocab.json": #"{"a": "1"}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "must be an integer, not a string")
        try expectLoadFails(
            ["vocab.json": #"{"a": true}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "must be an integer, not a boolean")
        try expectLoadFails(
            ["vocab.json": #"{"a": -1}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "outside")
        try expectLoadFails(
            ["vocab.json": #"{"a": 10000001}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "outside")
        try expectLoadFails(
            ["vocab.json": #"{"a": 99999999999999999999999}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "must be an integer")
        try expectLoadFails(
            ["vocab.json": #"{"a": 0, "b": 0}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "id 0 is used twice")
        try expectLoadFails(
            ["vocab.json": #"{"a": 0, "a": 1}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "appears twice")
        try expectLoadFails(
            ["vocab.json": #"{"a": 0"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "invalid JSON")
        try expectLoadFails(
            ["vocab.json": #"{"\ud800": 0}"#, "merges.txt": merges],
            culprit: "vocab.json", mention: "lone surrogate")
    }

    @Test func badTokenizerJSONFiles() throws {
        let text = try String(contentsOfFile: fixture("tokenizer.json"), encoding: .utf8)
        try expectLoadFails(
            ["tokenizer.json": String(text.prefix(text.count / 2))],
            culprit: "tokenizer.json", mention: "invalid JSON")
        try expectLoadFails(
            ["tokenizer.json": text.replacingOccurrences(of: #""type": "BPE""#, with: #""type": "WordPiece""#)],
            culprit: "tokenizer.json", mention: "model type \"WordPiece\" is not supported")
        func model(_ body: String, extra: String = "") -> String {
            #"{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}, "model": {"#
                + body + "}" + extra + "}"
        }
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]"#)],
            culprit: "tokenizer.json", mention: "model.merges[0]: merged token \"ab\" is not in the vocab")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {"a": 0}, "merges": ["a b c"]"#)],
            culprit: "tokenizer.json", mention: "model.merges[0]")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {"a": 0}, "merges": [["a"]]"#)],
            culprit: "tokenizer.json", mention: "pair of strings")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": [], "merges": []"#)],
            culprit: "tokenizer.json", mention: "model.vocab must be a JSON object")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {}"#)],
            culprit: "tokenizer.json", mention: "missing model.merges")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {}, "merges": [], "continuing_subword_prefix": "@@""#)],
            culprit: "tokenizer.json", mention: "not supported")
        try expectLoadFails(
            ["tokenizer.json": model(#""vocab": {}, "merges": []"#, extra: #", "normalizer": {"type": "NFC"}"#)],
            culprit: "tokenizer.json", mention: "normalizer (NFC) is not supported")
        try expectLoadFails(
            ["tokenizer.json": #"{"model": {"vocab": {}, "merges": []}}"#],
            culprit: "tokenizer.json", mention: "ByteLevel pre_tokenizer is required")
        try expectLoadFails(
            [
                "tokenizer.json": model(
                    #""vocab": {}, "merges": []"#,
                    extra: #", "added_tokens": [{"id": 0, "content": "x", "lstrip": true}]"#)
            ],
            culprit: "tokenizer.json", mention: "lstrip = true is not supported")
        try expectLoadFails(["tokenizer.json": "[]"], culprit: "tokenizer.json", mention: "top level must be a JSON object")
        try expectLoadFails(
            ["tokenizer.json": String(repeating: "[", count: 100_000)],
            culprit: "tokenizer.json", mention: "nesting")
        // A tokenizer.json without "type" and with an empty vocab still loads.
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try model(#""vocab": {}, "merges": []"#).write(to: dir.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        let empty = try Tokenizer.load(directory: dir.path)
        #expect(empty.vocabSize == 0)
        #expect(empty.encode("hello") == [])
    }

    @Test func missingFiles() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: LoRAError.io(path: dir.path, reason: "no tokenizer.json, nor vocab.json and merges.txt")) {
            try Tokenizer.load(directory: dir.path)
        }
        #expect(throws: LoRAError.self) {
            try Tokenizer(vocabPath: dir.path + "/vocab.json", mergesPath: dir.path + "/merges.txt")
        }
    }

    /// Every truncation and many one-byte corruptions of a tokenizer.json either
    /// load or throw a LoRAError: no trap.
    @Test func corruptedTokenizerJSONNeverTraps() throws {
        let original = Array(try Data(contentsOf: URL(fileURLWithPath: fixture("tokenizer_extra.json"))))
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tokenizer.json").path
        var rng = TokenizerTestRNG(seed: 7)
        var loaded = 0
        for round in 0..<300 {
            var bytes = original
            if round % 2 == 0 {
                bytes = Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))
            } else {
                for _ in 0..<3 {
                    bytes[Int(rng.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let tokenizer = try Tokenizer(tokenizerJSONPath: path)
                _ = try? tokenizer.decode(tokenizer.encode("Hello <|endoftext|> wörld"))
                loaded += 1
            } catch is LoRAError {
            }
        }
        #expect(loaded < 300)
    }

    // MARK: The real GPT-2 tokenizer (only where its files are available)

    static let gpt2Directory: String? = {
        for candidate in [
            "/work/shared/data/gpt2-tokenizer",
            packageRoot.appendingPathComponent("../shared/data/gpt2-tokenizer").standardized.path,
        ]
        where FileManager.default.fileExists(atPath: candidate + "/vocab.json")
            && FileManager.default.fileExists(atPath: candidate + "/merges.txt")
        {
            return candidate
        }
        return nil
    }()

    @Test(.enabled(if: gpt2Directory != nil, "the GPT-2 tokenizer files are not available"))
    func realGPT2KnownIDs() throws {
        let dir = try #require(Self.gpt2Directory)
        let tokenizer = try Tokenizer.load(directory: dir)
        #expect(tokenizer.vocabSize == 50257)
        #expect(tokenizer.endOfTextID == 50256)
        let known: [(String, [TokenID])] = [
            ("Hello world", [15496, 995]),
            (" Hello world", [18435, 995]),
            ("¡Hola, mundo! ¿Cómo estás?", [126, 94, 39, 5708, 11, 27943, 78, 0, 1587, 123, 34, 10205, 5908, 1556, 40138, 30]),
            ("Merhaba dünya! Nasılsın?", [13102, 5976, 64, 288, 9116, 3281, 64, 0, 22767, 30102, 7278, 30102, 77, 30]),
            ("<|endoftext|>", [50256]),
            // The reference file lost the ZWJ between 🏽 and 💻 (ids 447, 235 are its bytes).
            (
                "👩🏽\u{200D}💻✨🚀 — coding time!",
                [41840, 102, 8582, 237, 121, 447, 235, 8582, 240, 119, 26486, 101, 8582, 248, 222, 851, 19617, 640, 0]
            ),
            (
                "Привет, мир! Как дела?",
                [
                    140, 253, 21169, 18849, 38857, 16843, 20375, 11, 12466, 120, 18849, 21169, 0,
                    12466, 248, 16142, 31583, 12466, 112, 16843, 30143, 16142, 30,
                ]
            ),
        ]
        for (text, ids) in known {
            #expect(tokenizer.encode(text) == ids, "\(text)")
            #expect(sameBytes(try tokenizer.decode(ids), text))
        }
    }

    /// Prints encode throughput on the real GPT-2 tokenizer (debug builds are much slower).
    @Test(
        .enabled(
            if: gpt2Directory != nil && FileManager.default.fileExists(atPath: "/usr/share/games/fortunes/computers"),
            "the GPT-2 tokenizer files or the fortunes text are not available"))
    func realGPT2Throughput() throws {
        let tokenizer = try Tokenizer.load(directory: try #require(Self.gpt2Directory))
        var text = ""
        for name in ["computers", "wisdom", "literature"] {
            if let s = try? String(contentsOfFile: "/usr/share/games/fortunes/" + name, encoding: .utf8) { text += s }
        }
        var ids: [TokenID] = []
        let clock = ContinuousClock()
        var best = Duration.seconds(1_000)
        for _ in 0..<3 {
            let elapsed = clock.measure { ids = tokenizer.encode(text) }
            best = min(best, elapsed)
        }
        let seconds = Double(best.components.seconds) + Double(best.components.attoseconds) * 1e-18
        let megabytes = Double(text.utf8.count) / 1e6
        print("GPT-2 encode: \(text.utf8.count) bytes → \(ids.count) tokens in \(seconds) s = \(megabytes / seconds) MB/s")
        #expect(sameBytes(try tokenizer.decode(ids), text))
    }
}

/// The byte-level character of a byte (GPT-2's `bytes_to_unicode`).
private func byteChar(_ b: UInt8) -> String {
    let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
    if printable { return String(Unicode.Scalar(b)) }
    var n: UInt32 = 0
    for x in 0..<Int(b) {
        let p = (0x21...0x7E).contains(x) || (0xA1...0xAC).contains(x) || (0xAE...0xFF).contains(x)
        if !p { n += 1 }
    }
    return Unicode.Scalar(0x100 + n).map { String(Character($0)) } ?? ""
}

/// A small deterministic random generator for the property tests.
private struct TokenizerTestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The packed tables behind the tokenizer (PackedTokens.swift).
@Suite struct PackedTokenTests {
    @Test func indexGrowsReplacesAndKeepsBytesDistinct() throws {
        var index = TokenIndex(capacity: 2)  // grows several times below
        var want: [[UInt8]: TokenID] = [:]
        for i in 0..<1000 {
            let key = Array("tok\(i % 700)".utf8)
            try index.set(key, TokenID(i))  // i ≥ 700 replaces an earlier id
            want[key] = TokenID(i)
        }
        for (key, id) in want { #expect(index[key] == id) }
        #expect(index[Array("tok700".utf8)] == nil)
        // The empty string, and two canonically equivalent spellings, are distinct keys.
        try index.set([], 5)
        try index.set(Array("e\u{301}".utf8), 6)
        try index.set(Array("\u{e9}".utf8), 7)
        #expect(index[[]] == 5 && index[Array("e\u{301}".utf8)] == 6 && index[Array("\u{e9}".utf8)] == 7)

        var packed = PackedBytes()
        for s in ["", "a", "", "bcd"] { try packed.append(Array(s.utf8)) }
        #expect(packed.count == 4)
        #expect(Array(packed[3]) == Array("bcd".utf8) && packed[0].isEmpty && packed[2].isEmpty)
    }
}
