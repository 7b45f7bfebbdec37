import Foundation
import Testing

@testable import LoRA

// Fixtures: tokenizer/ (a 1,201-id GPT-2 BPE, "<|endoftext|>" = 1200) and
// data/fortunes.txt, data/records.jsonl (hand written).

private let eos: TokenID = 1200

/// Writes files into a fresh temporary directory; removes it on deinit.
private final class Scratch {
    let dir: String
    init() throws { dir = try Fixtures.tempDir() }
    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ name: String, _ text: String) throws -> String { try write(name, Array(text.utf8)) }
    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }
}

private func options(_ blockSize: Int, _ policy: BadRecordPolicy = .reject) -> DatasetOptions {
    var o = DatasetOptions(blockSize: blockSize)
    o.badRecords = policy
    return o
}

/// The `LoRAError` thrown by `body`, or nil.
private func loraError(_ body: () throws -> Dataset) -> LoRAError? {
    do {
        _ = try body()
        return nil
    } catch let e as LoRAError {
        return e
    } catch {
        return .invalidArgument("unexpected error type: \(error)")
    }
}

/// Every example is well formed: ids and labels of one length in 2...blockSize,
/// each label -100 or its id.
private func checkWellFormed(_ d: Dataset, blockSize: Int, sourceLocation: SourceLocation = #_sourceLocation) {
    for e in d.examples {
        #expect(e.ids.count == e.labels.count, sourceLocation: sourceLocation)
        #expect((2...blockSize).contains(e.ids.count), sourceLocation: sourceLocation)
        for (id, label) in zip(e.ids, e.labels) {
            #expect(label == -100 || label == id, sourceLocation: sourceLocation)
        }
    }
}

@Suite struct DatasetTests {
    let tokenizer: Tokenizer
    init() throws { tokenizer = try Tokenizer.load(directory: Fixtures.path("tokenizer")) }

    func load(_ paths: [String], _ blockSize: Int, _ policy: BadRecordPolicy = .reject) throws -> Dataset {
        try Dataset.load(paths: paths, tokenizer: tokenizer, options: options(blockSize, policy))
    }

    // MARK: Plain text

    static let prose = """
        It was the best of times, it was the worst of times, it was the age of wisdom,
        it was the age of foolishness, it was the epoch of belief, it was the epoch of
        incredulity, it was the season of Light, it was the season of Darkness.

        """

    @Test(arguments: [2, 3, 5, 8, 17, 64, 100_000])
    func packingIsExact(blockSize: Int) throws {
        let scratch = try Scratch()
        let path = try scratch.write("prose.txt", Self.prose)
        let d = try load([path], blockSize)
        let stream = tokenizer.encode(Self.prose) + [eos]
        #expect(stream.count > 40)

        // Blocks in order, all full but the last; a 1-token tail is dropped.
        let tail = stream.count % blockSize
        let kept = tail == 1 ? stream.count - 1 : stream.count
        #expect(d.examples.flatMap(\.ids) == Array(stream[..<kept]))
        #expect(d.examples.count == (kept + blockSize - 1) / blockSize)
        for e in d.examples.dropLast() { #expect(e.ids.count == blockSize) }
        for e in d.examples { #expect(e.labels == e.ids) }
        #expect(d.tokenCount == kept)
        #expect(d.warnings.isEmpty)
        checkWellFormed(d, blockSize: blockSize)
    }

    @Test func oneTokenTailIsDroppedTwoTokenTailKept() throws {
        let scratch = try Scratch()
        let path = try scratch.write("prose.txt", Self.prose)
        let stream = tokenizer.encode(Self.prose) + [eos]
        let n = stream.count

        let dropped = try load([path], n - 1)
        #expect(dropped.examples.map(\.ids) == [Array(stream[..<(n - 1)])])

        let kept = try load([path], n - 2)
        #expect(kept.examples.map(\.ids) == [Array(stream[..<(n - 2)]), Array(stream[(n - 2)...])])
    }

    @Test func fortuneSeparatorsSplitDocuments() throws {
        let d = try load([Fixtures.path("data/fortunes.txt")], 100_000)
        // Lines "% " and "%%" are text; the empty and blank fortunes are dropped;
        // each fortune loses the line break before its "%".
        let documents = [
            "A fool and his money are soon parted.\n\t-- Thomas Tusser",
            "The best way to predict the future is to invent it.",
            "50% of the time, it works every time.\n% \n%%\nThe end.",
        ]
        let stream = documents.flatMap { tokenizer.encode($0) + [eos] }
        #expect(d.examples == [TrainingExample(ids: stream, labels: stream)])

        // The same with "\r\n" line breaks, and without the final one.
        let scratch = try Scratch()
        let crlf = try String(contentsOfFile: Fixtures.path("data/fortunes.txt"), encoding: .utf8)
            .replacingOccurrences(of: "\n", with: "\r\n").dropLast(1)  // "\r\n" is one Character
        let d2 = try load([try scratch.write("fortunes-crlf", String(crlf))], 100_000)
        let stream2 = documents.map { $0.replacingOccurrences(of: "\n", with: "\r\n") }
            .flatMap { tokenizer.encode($0) + [eos] }
        #expect(d2.examples.map(\.ids) == [stream2])
    }

    @Test func withoutSeparatorTheFileIsOneDocument() throws {
        let scratch = try Scratch()
        let text = "50% of the time\n%%\n % \nit works.\n\n"
        let d = try load([try scratch.write("one.txt", text)], 100_000)
        #expect(d.examples.map(\.ids) == [tokenizer.encode(text) + [eos]])
    }

    @Test func textFilesArePackedOneByOne() throws {
        let scratch = try Scratch()
        let a = try scratch.write("a.txt", "Alpha beta gamma delta.")
        let b = try scratch.write("b.md", "Epsilon zeta eta theta iota.")
        let streamA = tokenizer.encode("Alpha beta gamma delta.") + [eos]
        let streamB = tokenizer.encode("Epsilon zeta eta theta iota.") + [eos]
        let d = try load([a, b], 4)
        let fromA = (streamA.count + 3) / 4
        #expect(d.examples.prefix(fromA).flatMap(\.ids) == streamA)
        #expect(d.examples.dropFirst(fromA).flatMap(\.ids) == streamB)
    }

    @Test func byteOrderMarkIsIgnored() throws {
        let scratch = try Scratch()
        let text = try scratch.write("bom.txt", [0xEF, 0xBB, 0xBF] + Array("Hello world.".utf8))
        #expect(try load([text], 64).examples.map(\.ids) == [tokenizer.encode("Hello world.") + [eos]])
        let jsonl = try scratch.write("bom.jsonl", [0xEF, 0xBB, 0xBF] + Array(#"{"text": "Hello world."}"#.utf8))
        #expect(try load([jsonl], 64).examples.map(\.ids) == [tokenizer.encode("Hello world.") + [eos]])
    }

    @Test func invalidUTF8InText() throws {
        let scratch = try Scratch()
        let bytes = Array("Good line.\nAnother.\nBad \u{1}".utf8) + [0xC3, 0x28] + Array(" here\n".utf8)
        let path = try scratch.write("bad.txt", bytes)
        #expect(loraError { try load([path], 8) } == .invalidFile(path: path, reason: "line 3: text is not valid UTF-8"))
        #expect(
            loraError { try load([path], 8, .skip) }
                == .invalidFile(path: path, reason: "no usable text (1 document(s) skipped)"))

        // In a fortune file only the bad fortune goes.
        let fortunes = Array("First.\n%\nSecond\nline ".utf8) + [0xFF] + Array("\n%\nThird.\n".utf8)
        let fpath = try scratch.write("fortunes", fortunes)
        #expect(loraError { try load([fpath], 8) } == .invalidFile(path: fpath, reason: "line 4: text is not valid UTF-8"))
        let d = try load([fpath], 100, .skip)
        #expect(d.examples.map(\.ids) == [tokenizer.encode("First.") + [eos] + tokenizer.encode("Third.") + [eos]])
        #expect(d.warnings == [DatasetWarning(path: fpath, line: 4, message: "skipped: text is not valid UTF-8")])
    }

    // MARK: JSONL

    @Test func promptCompletionMasksThePrompt() throws {
        let path = Fixtures.path("data/records.jsonl")
        let d = try load([path], 1024)
        #expect(d.warnings.isEmpty)
        #expect(d.examples.count == 4)

        let text = tokenizer.encode("The quick brown fox jumps over the lazy dog.") + [eos]
        #expect(d.examples[0] == TrainingExample(ids: text, labels: text))

        let prompt = tokenizer.encode("Q: What is the capital of France?\nA:")
        let completion = tokenizer.encode(" Paris.")
        #expect(!prompt.isEmpty && !completion.isEmpty)
        #expect(d.examples[1].ids == prompt + completion + [eos])
        #expect(d.examples[1].labels == [Int32](repeating: -100, count: prompt.count) + completion + [eos])
        // Exactly the positions of the prompt are masked.
        let masked = d.examples[1].labels.indices.filter { d.examples[1].labels[$0] == -100 }
        #expect(masked == Array(0..<prompt.count))

        // An empty prompt masks nothing.
        let hello = tokenizer.encode("Hello there, friend.") + [eos]
        #expect(d.examples[2] == TrainingExample(ids: hello, labels: hello))

        // Other members are ignored, a null one counts as absent.
        let unused = tokenizer.encode("Unused fields are ignored.") + [eos]
        #expect(d.examples[3] == TrainingExample(ids: unused, labels: unused))

        #expect(d.tokenCount == text.count + completion.count + 1 + hello.count + unused.count)
    }

    @Test func longRecordsAreTruncatedWithAWarning() throws {
        let scratch = try Scratch()
        let longText = String(repeating: "word ", count: 30)
        let prompt = "Question: why is the sky blue?\nAnswer:"
        let completion = " Rayleigh scattering of sunlight."
        let lines = [
            #"{"text": "short"}"#,
            "",
            #"{"text": "\#(longText)"}"#,
            #"{"prompt": "\#(prompt.replacingOccurrences(of: "\n", with: "\\n"))", "completion": "\#(completion)"}"#,
        ]
        let path = try scratch.write("long.jsonl", lines.joined(separator: "\n"))
        let p = tokenizer.encode(prompt)
        let c = tokenizer.encode(completion)
        let blockSize = p.count + 2
        let d = try load([path], blockSize)
        let full = tokenizer.encode(longText) + [eos]
        #expect(full.count > blockSize)
        #expect(d.examples.count == 3)
        #expect(d.examples[1].ids == Array(full[..<blockSize]))
        #expect(d.examples[1].labels == Array(full[..<blockSize]))
        #expect(d.examples[2].ids == p + c[..<2])
        #expect(d.examples[2].labels == [Int32](repeating: -100, count: p.count) + c[..<2])
        #expect(
            d.warnings == [
                DatasetWarning(path: path, line: 3, message: "truncated from \(full.count) to \(blockSize) tokens (the block size)"),
                DatasetWarning(
                    path: path, line: 4, message: "truncated from \(p.count + c.count + 1) to \(blockSize) tokens (the block size)"),
            ])
        checkWellFormed(d, blockSize: blockSize)

        // A prompt that fills the block leaves nothing to learn: a bad record.
        let small = p.count
        #expect(
            loraError { try load([path], small) }
                == .invalidFile(path: path, reason: "line 4: the prompt fills the block size \(small): no completion token is left"))
        let skipped = try load([path], small, .skip)
        #expect(skipped.examples.count == 2)
        #expect(skipped.warnings.map(\.line) == [3, 4])
        #expect(skipped.warnings.last?.message == "skipped: the prompt fills the block size \(small): no completion token is left")
    }

    /// Each kind of bad record: the line, and a part of the reason.
    static let badRecords: [(name: String, line: [UInt8], reason: String)] = [
        ("not JSON", Array(#"{"text": "unterminated"#.utf8), "invalid JSON at byte"),
        ("trailing garbage", Array(#"{"text": "a"} x"#.utf8), "unexpected data after the JSON value"),
        ("not an object", Array(#"["text", "a"]"#.utf8), "expected a JSON object"),
        ("a string", Array(#""just text""#.utf8), "expected a JSON object"),
        ("no known field", Array(#"{"messages": []}"#.utf8), #"needs a "text" string, or "prompt" and "completion" strings"#),
        ("all null", Array(#"{"text": null}"#.utf8), #"needs a "text" string"#),
        ("prompt only", Array(#"{"prompt": "a"}"#.utf8), #"has "prompt" but no "completion""#),
        ("completion only", Array(#"{"completion": "a"}"#.utf8), #"has "completion" but no "prompt""#),
        ("text and prompt", Array(#"{"text": "a", "prompt": "b", "completion": "c"}"#.utf8), #"has both "text" and "prompt"/"completion""#),
        ("text not a string", Array(#"{"text": 5}"#.utf8), #""text" must be a string, not a number"#),
        ("prompt not a string", Array(#"{"prompt": ["a"], "completion": "b"}"#.utf8), #""prompt" must be a string, not an array"#),
        ("completion not a string", Array(#"{"prompt": "a", "completion": {}}"#.utf8), #""completion" must be a string, not an object"#),
        ("empty text", Array(#"{"text": ""}"#.utf8), #""text" is empty"#),
        ("empty completion", Array(#"{"prompt": "a", "completion": ""}"#.utf8), #""completion" is empty"#),
        ("invalid UTF-8", Array(#"{"text": "caf"#.utf8) + [0xC3] + Array(#""}"#.utf8), "string is not valid UTF-8"),
        ("invalid UTF-8 outside strings", [0xFF] + Array(#"{"text": "a"}"#.utf8), "unexpected character"),
        ("lone surrogate", Array(#"{"text": "\ud800"}"#.utf8), "surrogate"),
        ("duplicate key", Array(#"{"text": "a", "text": "b"}"#.utf8), #"duplicate key "text""#),
    ]

    @Test(arguments: 0..<DatasetTests.badRecords.count)
    func badRecordIsRejectedOrSkipped(index: Int) throws {
        let (name, bad, reason) = Self.badRecords[index]
        let scratch = try Scratch()
        let good = Array(#"{"text": "Fine."}"#.utf8)
        // Lines: 1 good, 2 blank, 3 good, 4 blank (spaces), 5 bad, 6 good.
        let file = good + [0x0A, 0x0A] + good + Array("\n  \r\n".utf8) + bad + [0x0A] + good + [0x0A]
        let path = try scratch.write("records.jsonl", file)

        let error = loraError { try load([path], 16) }
        guard case .invalidFile(let p, let r)? = error else {
            Issue.record("\(name): expected invalidFile, got \(String(describing: error))")
            return
        }
        #expect(p == path)
        #expect(r.hasPrefix("line 5: "), "\(name): \(r)")
        #expect(r.contains(reason), "\(name): \(r)")

        let d = try load([path], 16, .skip)
        let fine = tokenizer.encode("Fine.") + [eos]
        #expect(d.examples == Array(repeating: TrainingExample(ids: fine, labels: fine), count: 3), "\(name)")
        #expect(d.warnings.count == 1, "\(name)")
        #expect(d.warnings.first?.path == path)
        #expect(d.warnings.first?.line == 5, "\(name)")
        #expect(d.warnings.first?.message == "skipped: " + r.dropFirst("line 5: ".count), "\(name)")
    }

    @Test func skippedRecordsKeepTheirLineNumbers() throws {
        let scratch = try Scratch()
        let lines = [#"{"text": "one"}"#, "nope", "", #"{"text": ""}"#, #"{"prompt": "p", "completion": "c"}"#, "[]"]
        let path = try scratch.write("mixed.jsonl", lines.joined(separator: "\r\n"))
        let d = try load([path], 8, .skip)
        #expect(d.examples.count == 2)
        #expect(d.warnings.map(\.line) == [2, 4, 6])
        #expect(d.warnings.allSatisfy { $0.message.hasPrefix("skipped: ") && $0.path == path })
        #expect(d.warnings[0].description.hasPrefix(path + ":2: skipped: invalid JSON"))
        // .reject stops at the first one.
        #expect(loraError { try load([path], 8) }.map { "\($0)" }?.hasPrefix(path + ": line 2: invalid JSON") == true)
    }

    @Test func fileKindFollowsTheExtension() throws {
        let scratch = try Scratch()
        let record = #"{"text": "Hello"}"#
        let asRecord = tokenizer.encode("Hello") + [eos]
        let asText = tokenizer.encode(record) + [eos]
        for name in ["a.jsonl", "b.json", "c.JSONL", "dir.txt/d.Json"] {
            if name.contains("/") {
                try FileManager.default.createDirectory(atPath: scratch.dir + "/dir.txt", withIntermediateDirectories: true)
            }
            let d = try load([try scratch.write(name, record)], 100)
            #expect(d.examples.map(\.ids) == [asRecord], "\(name)")
        }
        for name in ["e.txt", "f", "g.jsonl.txt", "h.json5", "jsonl"] {
            let d = try load([try scratch.write(name, record)], 100)
            #expect(d.examples.map(\.ids) == [asText], "\(name)")
        }
    }

    @Test func severalFilesAreConcatenated() throws {
        let d = try load(
            [
                Fixtures.path("data/records.jsonl"), Fixtures.path("data/fortunes.txt"),
                Fixtures.path("data/records.jsonl"),
            ], 1000)
        let records = try load([Fixtures.path("data/records.jsonl")], 1000)
        let fortunes = try load([Fixtures.path("data/fortunes.txt")], 1000)
        #expect(d.examples == records.examples + fortunes.examples + records.examples)
        #expect(d.tokenCount == 2 * records.tokenCount + fortunes.tokenCount)
    }

    // MARK: Errors

    @Test func emptyAndUselessFiles() throws {
        let scratch = try Scratch()
        let cases: [(String, [UInt8], String)] = [
            ("empty.txt", [], "empty file"),
            ("bom-only.txt", [0xEF, 0xBB, 0xBF], "empty file"),
            ("blank.txt", Array(" \n\t\r\n\n".utf8), "no text (only white space, % lines, or characters the vocabulary lacks)"),
            ("separators.txt", Array("%\n%\n  \n%\n".utf8), "no text (only white space, % lines, or characters the vocabulary lacks)"),
            ("empty.jsonl", [], "no records (a JSON Lines file needs one JSON object per line)"),
            ("blank.jsonl", Array("\n \n\r\n\t\n".utf8), "no records (a JSON Lines file needs one JSON object per line)"),
        ]
        for (name, bytes, reason) in cases {
            let path = try scratch.write(name, bytes)
            for policy in [BadRecordPolicy.reject, .skip] {
                #expect(loraError { try load([path], 8, policy) } == .invalidFile(path: path, reason: reason), "\(name)")
            }
        }
        let allBad = try scratch.write("bad.jsonl", "{}\n[1]\n")
        #expect(loraError { try load([allBad], 8, .skip) } == .invalidFile(path: allBad, reason: "no usable record (2 skipped)"))
        // An empty file among good ones still fails, naming itself.
        let empty = try scratch.write("none.txt", "")
        #expect(
            loraError { try load([Fixtures.path("data/fortunes.txt"), empty], 8) }
                == .invalidFile(path: empty, reason: "empty file"))
    }

    @Test func unreadableFilesAndBadArguments() throws {
        let scratch = try Scratch()
        let missing = scratch.dir + "/missing.jsonl"
        guard case .io(let p, _)? = loraError({ try load([missing], 8) }) else { Issue.record("missing file"); return }
        #expect(p == missing)
        guard case .io(let q, _)? = loraError({ try load([scratch.dir], 8) }) else { Issue.record("directory"); return }
        #expect(q == scratch.dir)

        let good = Fixtures.path("data/records.jsonl")
        for size in [1, 0, -3, Int.min] {
            guard case .invalidArgument? = loraError({ try load([good], size) }) else {
                Issue.record("blockSize \(size) accepted"); continue
            }
        }
        guard case .invalidArgument? = loraError({ try load([], 8) }) else { Issue.record("no paths"); return }

        // A tokenizer without "<|endoftext|>".
        _ = try scratch.write("vocab.json", #"{"a": 0, "b": 1}"#)
        _ = try scratch.write("merges.txt", "#version: 0.2\n")
        let bare = try Tokenizer.load(directory: scratch.dir)
        #expect(bare.endOfTextID == nil)
        let error = loraError { try Dataset.load(paths: [good], tokenizer: bare, options: options(8)) }
        guard case .invalidArgument(let m)? = error else { Issue.record("no eos: \(String(describing: error))"); return }
        #expect(m.contains("<|endoftext|>"))
    }

    /// Random bytes rich in JSON and separator characters never trap, and
    /// whatever loads is well formed.
    @Test func randomInputsNeverTrap() throws {
        let scratch = try Scratch()
        let alphabet = Array(#"{}[]":,\ntext prompt completion%ab 0\u"#.utf8) + [0xFF, 0xC3, 0x0A, 0x0D, 0x25, 0x00]
        var rng = SplitMix64(seed: 7)
        var loaded = 0
        var failed = 0
        for i in 0..<300 {
            let count = Int(rng.next() % 120)
            var bytes = (0..<count).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            if i % 3 == 0 { bytes = Array(#"{"prompt": "ab", "completion": "#.utf8) + bytes + Array("\"}".utf8) }
            let blockSize = 2 + Int(rng.next() % 6)
            for name in ["f\(i).jsonl", "f\(i).txt"] {
                let path = try scratch.write(name, bytes)
                for policy in [BadRecordPolicy.reject, .skip] {
                    do {
                        checkWellFormed(try load([path], blockSize, policy), blockSize: blockSize)
                        loaded += 1
                    } catch is LoRAError {
                        failed += 1
                    }
                }
            }
        }
        // Both outcomes are exercised.
        #expect(loaded > 100 && failed > 100, "loaded \(loaded), failed \(failed)")
    }

    // MARK: Order and split

    static func numbered(_ n: Int) -> Dataset {
        Dataset(examples: (0..<n).map { TrainingExample(ids: [TokenID($0), 0]) })
    }

    @Test func orderIsADeterministicPermutation() {
        let d = Self.numbered(50)
        let a = d.order(epoch: 3, seed: 42)
        #expect(a == d.order(epoch: 3, seed: 42))
        #expect(a.sorted() == Array(0..<50))
        #expect(a != Array(0..<50))
        #expect(d.order(epoch: 3, seed: 43) != a)
        #expect(d.order(epoch: 4, seed: 42) != a)
        // The epoch is added to the seed.
        #expect(d.order(epoch: 0, seed: 45) == a)

        // Pinned against an independent (Python) SplitMix64 + Fisher–Yates.
        let ten = Self.numbered(10)
        #expect(ten.order(epoch: 0, seed: 42) == [8, 3, 6, 5, 4, 0, 9, 2, 1, 7])
        #expect(ten.order(epoch: 1, seed: 42) == [4, 9, 2, 1, 6, 0, 8, 3, 5, 7])
        #expect(ten.order(epoch: -1, seed: 7) == [1, 2, 5, 6, 8, 3, 9, 0, 4, 7])  // seed 7 &+ UInt64(bitPattern: -1)

        #expect(Self.numbered(0).order(epoch: 0, seed: 1) == [])
        #expect(Self.numbered(1).order(epoch: Int.max, seed: .max) == [0])
    }

    @Test func splitSizes() throws {
        let d = Self.numbered(10)
        for (fraction, validation) in [(0.0, 0), (0.1, 1), (0.25, 3), (0.3, 3), (0.5, 5), (0.7, 7), (0.9, 9)] {
            let (train, val) = try d.split(validationFraction: fraction, seed: 5)
            #expect(val.examples.count == validation, "fraction \(fraction)")
            #expect(train.examples.count == 10 - validation, "fraction \(fraction)")
            let perm = d.order(epoch: 0, seed: 5)
            #expect(train.examples + val.examples == perm.map { d.examples[$0] })
        }
        let (t1, v1) = try d.split(validationFraction: 0.2, seed: 9)
        let (t2, v2) = try d.split(validationFraction: 0.2, seed: 9)
        #expect(t1.examples == t2.examples && v1.examples == v2.examples)
        #expect(Set((t1.examples + v1.examples).map { $0.ids[0] }) == Set(0..<10))
        #expect(t1.tokenCount + v1.tokenCount == d.tokenCount)

        for bad in [1.0, -0.1, 1.5, .nan, .infinity] {
            #expect(throws: LoRAError.self) { try d.split(validationFraction: bad, seed: 0) }
        }
        // The training set must keep at least one example.
        #expect(throws: LoRAError.self) { try d.split(validationFraction: 0.95, seed: 0) }
        #expect(throws: LoRAError.self) { try Self.numbered(1).split(validationFraction: 0.5, seed: 0) }
        #expect(throws: LoRAError.self) { try Self.numbered(0).split(validationFraction: 0, seed: 0) }
        let (one, none) = try Self.numbered(1).split(validationFraction: 0, seed: 0)
        #expect(one.examples.count == 1 && none.examples.isEmpty)
    }

    @Test func splitKeepsWarningsOnTheTrainingSet() throws {
        let scratch = try Scratch()
        let path = try scratch.write("w.jsonl", (0..<8).map { #"{"text": "record \#($0)"}"# }.joined(separator: "\n") + "\nbad\n")
        let d = try load([path], 8, .skip)
        #expect(d.warnings.map(\.line) == [9])
        let (train, validation) = try d.split(validationFraction: 0.25, seed: 1)
        #expect(train.examples.count == 6 && validation.examples.count == 2)
        #expect(train.warnings == d.warnings && validation.warnings.isEmpty)
    }

    @Test func ownTokenIDs() {
        let d = Dataset(examples: [TrainingExample(ids: [1, 2, 3], labels: [-100, 2, 3]), TrainingExample(ids: [4, 5])])
        #expect(d.tokenCount == 4)
        #expect(d.warnings.isEmpty)
        #expect(d.examples[1].labels == [4, 5])
    }
}
