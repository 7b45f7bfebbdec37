import Foundation
import Testing

@testable import LoRA

// Repeated keys in tokenizer.json, against Hugging Face tokenizers 0.23.3
// (`Tokenizer.from_str(text).encode(s).ids` on the same edited text). tokenizers
// takes the last of a repeated key, except in an added token (serde's
// "duplicate field") and for model.type; a vocab with a repeated token is
// refused here although tokenizers keeps the last id (it leaves the other id
// without a token, or a hole in the ids).

private let fixtureDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().appendingPathComponent("Fixtures/tokenizer").path

@Suite struct TokenizerDuplicateKeyTests {
    static let texts = ["Hello world", "hello<|endoftext|>world"]
    /// tokenizers' ids for `texts` with the fixture as it is (add_prefix_space false).
    static let plainIDs: [[TokenID]] = [[39, 466, 78, 692], [257, 280, 78, 1200, 86, 273, 324]]

    /// The fixture tokenizer.json with `edit` applied.
    private func edited(_ edit: (String) throws -> String) throws -> String {
        try edit(try String(contentsOfFile: fixtureDirectory + "/tokenizer.json", encoding: .utf8))
    }

    /// `text` with its one occurrence of `target` replaced.
    private func replacingOnce(
        _ text: String, _ target: String, _ replacement: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> String {
        try #require(text.components(separatedBy: target).count == 2, "\(target)", sourceLocation: sourceLocation)
        return text.replacingOccurrences(of: target, with: replacement)
    }

    /// Loads `text` as a tokenizer.json; returns the file's path too, for messages.
    private func load(_ text: String) throws -> (Result<Tokenizer, Error>, path: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tokenizer-dup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tokenizer.json").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return (Result { try Tokenizer(tokenizerJSONPath: path) }, path)
    }

    private func expectIDs(_ text: String, _ want: [[TokenID]], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (result, _) = try load(text)
        let tokenizer = try result.get()
        #expect(Self.texts.map { tokenizer.encode($0) } == want, sourceLocation: sourceLocation)
    }

    private func expectRefused(_ text: String, mention: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (result, path) = try load(text)
        switch result {
        case .success:
            Issue.record("loading did not fail", sourceLocation: sourceLocation)
        case .failure(let error as LoRAError):
            #expect(error.description.contains(path), "\(error)", sourceLocation: sourceLocation)
            #expect(error.description.contains(mention), "\(error)", sourceLocation: sourceLocation)
        case .failure(let error):
            Issue.record("not a LoRAError: \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func lastValueWinsLikeTokenizers() throws {
        try expectIDs(try edited { $0 }, Self.plainIDs)
        // A repeated pre_tokenizer key: the first (true) is overridden by the file's false.
        try expectIDs(
            try edited { try replacingOnce($0, #""pre_tokenizer": {"#, #""pre_tokenizer": {"add_prefix_space": true, "#) },
            Self.plainIDs)
        // A second top-level pre_tokenizer, after the file's, with add_prefix_space true.
        try expectIDs(
            try edited { text in
                var text = text
                while text.last?.isWhitespace == true { text.removeLast() }
                try #require(text.last == "}")
                text.removeLast()
                return text
                    + #", "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}}"#
            }, [[382, 466, 78, 692], [340, 280, 78, 1200, 692]])
        // A repeated model key other than "type": the file's dropout (null) wins.
        try expectIDs(try edited { try replacingOnce($0, #""model": {"#, #""model": {"dropout": 0.5, "#) }, Self.plainIDs)
        // An added token may repeat a key that is not one of its fields.
        try expectIDs(
            try edited { try replacingOnce($0, #""content": "<|endoftext|>","#, #""content": "<|endoftext|>", "note": 1, "note": 2,"#) },
            Self.plainIDs)
    }

    @Test func refusedWhereTokenizersRefusesOrWouldBreakTheVocab() throws {
        try expectRefused(
            try edited { try replacingOnce($0, #""model": {"#, #""model": {"type": "BPE", "#) },
            mention: #"model: duplicate field "type""#)
        try expectRefused(
            try edited {
                try replacingOnce($0, #""content": "<|endoftext|>","#, #""content": "<|endoftext|>", "content": "<|endoftext|>","#)
            },
            mention: #"added_tokens[0]: duplicate field "content""#)
        try expectRefused(
            try edited { try replacingOnce($0, #""vocab": {"#, #""vocab": {"!": 5, "#) },
            mention: #"model.vocab: token "!" appears twice"#)
    }

    /// Keys are compared byte for byte, as tokenizers does: "é" as one scalar
    /// and as "e" + U+0301 are two tokens.
    @Test func canonicallyEquivalentTokensStayApart() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tokenizer-dup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "{\"\u{E9}\": 0, \"e\u{301}\": 1, \"e\": 2}".write(
            to: dir.appendingPathComponent("vocab.json"), atomically: true, encoding: .utf8)
        try "#version: 0.2\n".write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        let t = try Tokenizer.load(directory: dir.path)
        #expect(t.id(for: "\u{E9}") == 0)
        #expect(t.id(for: "e\u{301}") == 1)
        #expect(t.vocabSize == 3)
    }
}

@Suite struct JSONHelperTests {
    @Test func duplicateKeysAreNamed() throws {
        let v = try JSON.parse(#"{"a": 1, "b": {"x": 0, "x": 1}, "a": 2, "a": 3, "c": []}"#)
        let object = try #require(v.objectValue)
        #expect(object.hasDuplicateKeys)
        #expect(object.duplicateKeys == ["a", "a"])
        #expect(object.keys == ["a", "b", "c"])
        #expect(v["a"]?.intValue == 3)
        #expect(v["b"]?.objectValue?.duplicateKeys == ["x"])
        let plain = try #require(try JSON.parse(#"{"a": 1, "b": 2}"#).objectValue)
        #expect(!plain.hasDuplicateKeys && plain.duplicateKeys.isEmpty)
        #expect(JSONObject([("k", .null), ("k", .bool(true))]).duplicateKeys == ["k"])
    }

    @Test func kindNames() throws {
        let v = try JSON.parse(#"[null, true, 1.5, "s", [], {}]"#)
        #expect(v.arrayValue?.map(\.kindName) == ["null", "a boolean", "a number", "a string", "an array", "an object"])
    }

    @Test func stringsWithAndWithoutEscapes() throws {
        let cases: [(String, String)] = [
            (#""""#, ""),
            (#""plain Ġtext é😀""#, "plain Ġtext é😀"),
            (#""run then \n escape""#, "run then \n escape"),
            (#""\"quoted\" \\ \/ \b\f\r\t""#, "\"quoted\" \\ / \u{08}\u{0C}\r\t"),
            (#""\u00e9 and \ud83d\ude00 then more""#, "é and 😀 then more"),
        ]
        for (json, want) in cases {
            let got = try JSON.parse(json).stringValue
            #expect(got.map { Array($0.utf8) } == Array(want.utf8), "\(json)")
        }
        // Errors and where they are reported, with and without an escape before them.
        let bad: [([UInt8], Int, String)] = [
            ([0x22, 0x61, 0xFF, 0x22], 4, "not valid UTF-8"),
            ([0x22, 0x5C, 0x6E, 0xFF, 0x22], 5, "not valid UTF-8"),
            ([0x22, 0x61, 0x01, 0x22], 2, "control character"),
            ([0x22, 0x5C, 0x6E, 0x01, 0x22], 3, "control character"),
            ([0x22, 0x61, 0x62], 3, "unterminated string"),
            (Array(#""\ud800""#.utf8), 7, "lone surrogate \\ud800"),
            (Array(#""x\udc00""#.utf8), 8, "lone surrogate \\udc00"),
            (Array(#""\ud800\u0041""#.utf8), 13, "lone surrogate \\ud800"),
        ]
        for (bytes, offset, message) in bad {
            do {
                _ = try JSON.parse(bytes)
                Issue.record("\(bytes) parsed")
            } catch let error as JSONParseError {
                #expect(error.offset == offset && error.message.contains(message), "\(bytes): \(error)")
            }
        }
    }
}
