/// Training data: plain text packed into blocks (transformers' run_clm) and
/// JSONL records, `{"text": ...}` or `{"prompt": ..., "completion": ...}`
/// with loss on the completion only (TRL's SFTTrainer). Knows nothing of
/// models: it turns files into token ids and HF-style labels.

/// What `Dataset.load` does with a JSONL record (or a text document) it cannot use.
public enum BadRecordPolicy: String, Sendable {
    /// Record a `DatasetWarning` and go on.
    case skip
    /// Throw `LoRAError.invalidFile` naming the line.
    case reject
}

public struct DatasetOptions: Sendable {
    /// Tokens per example (>= 2): plain text is packed into blocks of this
    /// size, longer JSONL records are truncated to it.
    public var blockSize: Int
    public var badRecords: BadRecordPolicy = .reject

    public init(blockSize: Int) { self.blockSize = blockSize }
}

/// One training example: token ids and HF-style labels (same length; -100 = no loss on that position's token).
/// As in transformers, the model shifts: position i is trained to predict `labels[i + 1]`.
public struct TrainingExample: Sendable, Equatable {
    public var ids: [TokenID]
    public var labels: [Int32]

    public init(ids: [TokenID], labels: [Int32]) {
        self.ids = ids
        self.labels = labels
    }

    /// Labels equal to the ids: loss on every token.
    public init(ids: [TokenID]) { self.init(ids: ids, labels: ids) }
}

/// A record skipped or truncated while loading; `line` is 1-based.
public struct DatasetWarning: Sendable, Equatable, CustomStringConvertible {
    public let path: String
    public let line: Int
    public let message: String

    public init(path: String, line: Int, message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    public var description: String { "\(path):\(line): \(message)" }
}

/// An immutable list of training examples.
///
/// Files (`load`), by extension (case-insensitive):
/// - `.jsonl`, `.json`: JSON Lines, one object per line, blank lines ignored.
///   `{"text": t}` → ids `encode(t) + [eos]`, loss on all of them.
///   `{"prompt": p, "completion": c}` → ids `encode(p) + encode(c) + [eos]`,
///   labels -100 on the prompt's tokens. Other members are ignored; a null
///   member counts as absent. Each record is one example, truncated to
///   `blockSize` tokens (with a warning).
/// - anything else: plain text. The file is one document, or, if some line
///   is exactly `%` (fortune format), each text between such lines is one
///   (without the line break before the `%`; documents that are empty or only
///   white space are dropped). The documents' tokens, each followed by eos,
///   are concatenated and cut into blocks of `blockSize` tokens, labels = ids;
///   a final shorter block is kept if it has at least 2 tokens. Each file is
///   packed on its own.
///
/// A leading UTF-8 byte order mark is ignored. Bad records (invalid JSON or
/// UTF-8, not an object, missing or mistyped fields, empty text or
/// completion, a prompt that leaves no completion token within the block)
/// are skipped or rejected per `DatasetOptions.badRecords`; in a text file a
/// document with invalid UTF-8 is a bad record. A file that yields no example
/// is an error either way.
public final class Dataset: Sendable {
    public let examples: [TrainingExample]
    /// Skipped records and truncations, in file and line order.
    public let warnings: [DatasetWarning]
    private let labelledTokens: Int

    /// Tokens with a label >= 0, over all examples.
    public var tokenCount: Int { labelledTokens }

    /// For callers who bring their own token ids.
    public convenience init(examples: [TrainingExample]) {
        self.init(examples: examples, warnings: [])
    }

    init(examples: [TrainingExample], warnings: [DatasetWarning]) {
        self.examples = examples
        self.warnings = warnings
        var count = 0
        for e in examples {
            for l in e.labels where l >= 0 { count += 1 }
        }
        labelledTokens = count
    }

    /// Loads and concatenates several files; kind by extension: .jsonl/.json lines → JSONL, anything else → plain text.
    ///
    /// Errors: `.invalidArgument` (blockSize < 2, no paths, a tokenizer
    /// without "<|endoftext|>"), `.io` (a file cannot be read),
    /// `.invalidFile` (a bad record under `.reject`, or a file with no usable
    /// record; the reason names the line: "line 7: ...").
    public static func load(paths: [String], tokenizer: Tokenizer, options: DatasetOptions) throws -> Dataset {
        guard options.blockSize >= 2 else {
            throw LoRAError.invalidArgument("block_size must be >= 2 (got \(options.blockSize))")
        }
        guard !paths.isEmpty else { throw LoRAError.invalidArgument("no dataset files given") }
        guard let eos = tokenizer.endOfTextID else {
            throw LoRAError.invalidArgument("the tokenizer has no <|endoftext|> token, which datasets need")
        }
        var reader = DatasetReader(tokenizer: tokenizer, eos: eos, options: options)
        for path in paths {
            let bytes = try TokenizerFiles.readFile(path)
            if DatasetReader.isJSONLines(path) {
                try reader.readJSONLines(bytes, path: path)
            } else {
                try reader.readText(bytes, path: path)
            }
        }
        return Dataset(examples: reader.examples, warnings: reader.warnings)
    }

    /// Deterministic epoch order: a Fisher–Yates shuffle of 0..<examples.count driven by SplitMix64(seed: seed &+ UInt64(epoch)).
    ///
    /// Exactly: `p = [0, 1, ..., n-1]`; for `i` from `n-1` down to 1, `j` is
    /// the high 64 bits of `next() * (i + 1)` (a 128-bit product) and
    /// `p[i]`, `p[j]` are swapped. A negative epoch is taken modulo 2^64.
    public func order(epoch: Int, seed: UInt64) -> [Int] {
        Dataset.permutation(count: examples.count, seed: seed &+ UInt64(truncatingIfNeeded: epoch))
    }

    /// Splits off the last `fraction` (0..<1) of the examples (after a seeded shuffle) as a validation set.
    ///
    /// The shuffle is `order(epoch: 0, seed: seed)`; the validation set is
    /// its last ceil(fraction × count) examples (0.3 × 10 counts as 3), the
    /// training set the others, both in shuffled order. The training set
    /// keeps the warnings. Throws `.invalidArgument` if the fraction is
    /// outside [0, 1) or the training set would be empty.
    public func split(validationFraction: Double, seed: UInt64) throws -> (train: Dataset, validation: Dataset) {
        guard validationFraction.isFinite, validationFraction >= 0, validationFraction < 1 else {
            throw LoRAError.invalidArgument("validation fraction must be in [0, 1) (got \(validationFraction))")
        }
        let n = examples.count
        // Tolerate rounding in the product (0.3 * 10 is 3.0000000000000004).
        let exact = validationFraction * Double(n)
        let validationCount = min(n, Int((exact * (1 - 1e-12)).rounded(.up)))
        guard n - validationCount >= 1 else {
            throw LoRAError.invalidArgument(
                "a dataset of \(n) example(s) is too small to split off a validation fraction of \(validationFraction)")
        }
        let perm = order(epoch: 0, seed: seed)
        let cut = n - validationCount
        let train = perm[..<cut].map { examples[$0] }
        let validation = perm[cut...].map { examples[$0] }
        return (Dataset(examples: train, warnings: warnings), Dataset(examples: validation))
    }

    static func permutation(count n: Int, seed: UInt64) -> [Int] {
        var rng = SplitMix64(seed: seed)
        var p = Array(0..<max(n, 0))
        var i = n - 1
        while i > 0 {
            let j = Int(truncatingIfNeeded: rng.next().multipliedFullWidth(by: UInt64(i + 1)).high)
            p.swapAt(i, j)
            i -= 1
        }
        return p
    }
}

// MARK: - Reading files

/// A record `Dataset.load` cannot use: its 1-based line and why.
private struct BadRecord: Error {
    let line: Int
    let reason: String
}

private struct DatasetReader {
    let tokenizer: Tokenizer
    let eos: TokenID
    let options: DatasetOptions
    var examples: [TrainingExample] = []
    var warnings: [DatasetWarning] = []

    init(tokenizer: Tokenizer, eos: TokenID, options: DatasetOptions) {
        self.tokenizer = tokenizer
        self.eos = eos
        self.options = options
    }

    static func isJSONLines(_ path: String) -> Bool {
        let name = path.split(separator: "/", omittingEmptySubsequences: false).last ?? Substring(path)
        guard let dot = name.lastIndex(of: ".") else { return false }
        let ext = name[name.index(after: dot)...].lowercased()
        return ext == "jsonl" || ext == "json"
    }

    /// Applies the bad-record policy: throws under `.reject`, else records a warning.
    mutating func handle(_ bad: BadRecord, path: String) throws {
        switch options.badRecords {
        case .reject:
            throw LoRAError.invalidFile(path: path, reason: "line \(bad.line): \(bad.reason)")
        case .skip:
            warnings.append(DatasetWarning(path: path, line: bad.line, message: "skipped: \(bad.reason)"))
        }
    }

    // MARK: JSON Lines

    mutating func readJSONLines(_ file: [UInt8], path: String) throws {
        let bytes = Self.droppingBOM(file)
        let before = examples.count
        var records = 0
        var lineNumber = 0
        var start = bytes.startIndex
        while start < bytes.endIndex {
            lineNumber += 1
            let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.endIndex
            let line = bytes[start..<end]
            start = end < bytes.endIndex ? end + 1 : end
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            records += 1
            do {
                let example = try record(line, lineNumber: lineNumber, path: path)
                examples.append(example)
            } catch let bad as BadRecord {
                try handle(bad, path: path)
            }
        }
        if examples.count == before {
            let reason =
                records == 0
                ? "no records (a JSON Lines file needs one JSON object per line)"
                : "no usable record (\(records) skipped)"
            throw LoRAError.invalidFile(path: path, reason: reason)
        }
    }

    /// One JSONL line as an example; throws `BadRecord`.
    mutating func record(_ line: ArraySlice<UInt8>, lineNumber: Int, path: String) throws -> TrainingExample {
        func bad(_ reason: String) -> BadRecord { BadRecord(line: lineNumber, reason: reason) }

        let value: JSONValue
        do {
            value = try JSON.parse(line)
        } catch let error as JSONParseError {
            throw bad(error.description)
        } catch {
            throw bad("invalid JSON")
        }
        guard let object = value.objectValue else {
            throw bad("expected a JSON object (JSON Lines: one object per line)")
        }
        guard !object.hasDuplicateKeys else {
            throw bad("duplicate key \"\(object.duplicateKeys.first ?? "")\"")
        }

        /// A member's string; nil if absent or null.
        func string(_ key: String) throws -> String? {
            guard let v = object[key], !v.isNull else { return nil }
            guard let s = v.stringValue else { throw bad("\"\(key)\" must be a string, not \(v.kindName)") }
            return s
        }
        let text = try string("text")
        let prompt = try string("prompt")
        let completion = try string("completion")

        var ids: [TokenID]
        var labels: [Int32]
        if let text {
            guard prompt == nil, completion == nil else {
                throw bad("has both \"text\" and \"prompt\"/\"completion\"; use one or the other")
            }
            guard !text.isEmpty else { throw bad("\"text\" is empty") }
            ids = tokenizer.encode(text)
            guard !ids.isEmpty else { throw bad("\"text\" has no tokens in this vocabulary") }
            ids.append(eos)
            labels = ids
        } else if prompt != nil || completion != nil {
            guard let prompt else { throw bad("has \"completion\" but no \"prompt\"") }
            guard let completion else { throw bad("has \"prompt\" but no \"completion\"") }
            guard !completion.isEmpty else { throw bad("\"completion\" is empty") }
            let promptIDs = tokenizer.encode(prompt)
            let completionIDs = tokenizer.encode(completion)
            guard !completionIDs.isEmpty else { throw bad("\"completion\" has no tokens in this vocabulary") }
            ids = promptIDs + completionIDs
            ids.append(eos)
            labels = [Int32](repeating: -100, count: promptIDs.count) + completionIDs
            labels.append(eos)
        } else {
            throw bad("needs a \"text\" string, or \"prompt\" and \"completion\" strings")
        }

        let blockSize = options.blockSize
        if ids.count > blockSize {
            let fullCount = ids.count
            ids.removeSubrange(blockSize...)
            labels.removeSubrange(blockSize...)
            // The model predicts labels[i] from position i - 1: label 0 never counts.
            guard labels.dropFirst().contains(where: { $0 >= 0 }) else {
                throw bad("the prompt fills the block size \(blockSize): no completion token is left")
            }
            warnings.append(
                DatasetWarning(
                    path: path, line: lineNumber,
                    message: "truncated from \(fullCount) to \(blockSize) tokens (the block size)"))
        }
        return TrainingExample(ids: ids, labels: labels)
    }

    // MARK: Plain text

    mutating func readText(_ file: [UInt8], path: String) throws {
        let bytes = Self.droppingBOM(file)
        var stream: [TokenID] = []
        var documents = 0
        var skipped = 0
        for document in Self.documents(bytes) {
            guard let text = String(validating: bytes[document.range], as: UTF8.self) else {
                let line = document.firstLine + Self.linesBeforeInvalidUTF8(bytes[document.range])
                try handle(BadRecord(line: line, reason: "text is not valid UTF-8"), path: path)
                skipped += 1
                continue
            }
            let ids = tokenizer.encode(text)
            if ids.isEmpty { continue }
            stream.append(contentsOf: ids)
            stream.append(eos)
            documents += 1
        }
        guard documents > 0 else {
            let reason =
                bytes.isEmpty
                ? "empty file"
                : skipped > 0
                    ? "no usable text (\(skipped) document(s) skipped)"
                    : "no text (only white space, % lines, or characters the vocabulary lacks)"
            throw LoRAError.invalidFile(path: path, reason: reason)
        }
        let blockSize = options.blockSize
        var start = 0
        while stream.count - start >= 2 {
            let end = stream.count - start > blockSize ? start + blockSize : stream.count
            examples.append(TrainingExample(ids: Array(stream[start..<end])))
            start = end
        }
    }

    /// The documents of a text file: byte ranges and their first line (1-based).
    /// The whole file, or, when some line is exactly "%" (before "\n", "\r\n"
    /// or the end), the texts between such lines, each without its last line
    /// break. Documents of only white space are left out.
    static func documents(_ bytes: ArraySlice<UInt8>) -> [(range: Range<Int>, firstLine: Int)] {
        var lines: [(range: Range<Int>, next: Int)] = []  // content without the line break; start of the next line
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let newline = bytes[start...].firstIndex(of: 0x0A)
            var end = newline ?? bytes.endIndex
            if end > start, bytes[end - 1] == 0x0D { end -= 1 }
            let next = newline.map { $0 + 1 } ?? bytes.endIndex
            lines.append((start..<end, next))
            start = next
        }
        func isSeparator(_ r: Range<Int>) -> Bool { r.count == 1 && bytes[r.lowerBound] == UInt8(ascii: "%") }

        var found: [(range: Range<Int>, firstLine: Int)] = []
        func add(_ range: Range<Int>, _ firstLine: Int) {
            let blank = bytes[range].allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D || $0 == 0x0B || $0 == 0x0C }
            if !blank { found.append((range, firstLine)) }
        }
        guard lines.contains(where: { isSeparator($0.range) }) else {
            add(bytes.startIndex..<bytes.endIndex, 1)
            return found
        }
        var first = 0  // index of the document's first line
        for (i, line) in lines.enumerated() where isSeparator(line.range) {
            if i > first { add(lines[first].range.lowerBound..<lines[i - 1].range.upperBound, first + 1) }
            first = i + 1
        }
        if first < lines.count {
            add(lines[first].range.lowerBound..<lines[lines.count - 1].range.upperBound, first + 1)
        }
        return found
    }

    /// Line breaks before the first line that is not valid UTF-8 (a bad
    /// sequence never spans a "\n", which is ASCII).
    static func linesBeforeInvalidUTF8(_ bytes: ArraySlice<UInt8>) -> Int {
        var count = 0
        var start = bytes.startIndex
        while start < bytes.endIndex {
            let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.endIndex
            if String(validating: bytes[start..<end], as: UTF8.self) == nil { return count }
            count += 1
            start = end + 1
        }
        return 0
    }

    static func droppingBOM(_ bytes: [UInt8]) -> ArraySlice<UInt8> {
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { return bytes[3...] }
        return bytes[...]
    }
}
