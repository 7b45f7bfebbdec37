import CLoraSupport

/// A token id. GPT-2's are 0...50256.
public typealias TokenID = Int32

/// GPT-2's byte-level BPE tokenizer, equal to Hugging Face's `GPT2TokenizerFast`
/// (`tokenizers` 0.23) on the texts and files it accepts.
///
/// Encoding: added tokens (such as "<|endoftext|>") are cut out of the raw text
/// first (leftmost, longest match); the rest is split by GPT-2's pre-tokenizer
/// (`GPT2PreTokenizer`), each piece's UTF-8 bytes become byte-level symbols
/// (`ByteLevel`) and BPE merges them by rank. `encode` never adds special tokens.
///
/// Immutable after loading, so it may be shared between threads.
public final class Tokenizer: Sendable {
    /// Number of ids: the largest id + 1, added tokens included.
    public let vocabSize: Int
    /// The id of "<|endoftext|>", if the vocabulary has it.
    public let endOfTextID: TokenID?

    /// The UTF-8 of each id's string (byte-level form for vocab tokens); empty in gaps.
    let tokenStrings: PackedBytes
    /// Whether an id has a token (ids up to vocabSize may have gaps).
    let hasToken: [Bool]
    /// The bytes each id decodes to; empty in gaps.
    let tokenBytes: PackedBytes
    /// Vocab and added tokens by the UTF-8 of their string.
    let idsByToken: TokenIndex
    /// The id of each byte's symbol; -1 if the vocab lacks it.
    let byteIDs: [TokenID]
    let merges: BPEMerges
    /// Added tokens matched on the raw text first (`normalized: false`), then
    /// those matched on the remaining text (`normalized: true`).
    let rawAddedTokens: AddedTokenMatcher
    let normalizedAddedTokens: AddedTokenMatcher
    /// The ids of added tokens, each with its `special` flag (GGUF export: control or user-defined).
    let addedTokens: [TokenID: Bool]
    let unknownID: TokenID?
    let fuseUnknown: Bool
    let addPrefixSpace: Bool
    let useRegex: Bool

    init(definition d: TokenizerDefinition, path: String) throws {
        func invalid(_ reason: String) -> LoRAError { .invalidFile(path: path, reason: reason) }

        var maxID = -1
        for id in d.vocab.values { maxID = max(maxID, Int(id)) }
        for token in d.addedTokens { maxID = max(maxID, Int(token.id)) }
        let size = maxID + 1

        var idsByToken = TokenIndex(capacity: d.vocab.count + d.addedTokens.count)
        // Each id's string: the vocab's, then an added token's content (tokenizers
        // looks added tokens up first); packed in id order below.
        var utf8OfID = [[UInt8]?](repeating: nil, count: size)
        for (token, id) in d.vocab {
            try idsByToken.set(token, id)
            utf8OfID[Int(id)] = token
        }
        for token in d.addedTokens {
            let utf8 = Array(token.content.utf8)
            try idsByToken.set(utf8, token.id)
            utf8OfID[Int(token.id)] = utf8
        }
        var strings = PackedBytes()
        var bytes = PackedBytes()
        let totalBytes = d.vocab.keys.reduce(0) { $0 + $1.count }
        strings.reserve(entries: size, bytes: totalBytes)
        bytes.reserve(entries: size, bytes: totalBytes)
        for utf8 in utf8OfID {
            try strings.append(utf8 ?? [])
            // Through the byte-level decoder, added tokens too.
            try bytes.append(utf8.map { ByteLevel.decode(String(decoding: $0, as: UTF8.self)) } ?? [])
        }
        let hasToken = utf8OfID.map { $0 != nil }

        var byteIDs = [TokenID](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = d.vocab[ByteLevel.utf8ForByte[b]] { byteIDs[b] = id }
        }

        var table: [UInt64: BPEMerge] = [:]
        table.reserveCapacity(d.merges.count)
        for (rank, merge) in d.merges.enumerated() {
            func missing(_ what: String, _ token: [UInt8]) -> LoRAError {
                invalid(
                    "\(d.location(of: merge)): \(what) \(TokenizerFiles.quoted(String(decoding: token, as: UTF8.self))) is not in the vocab"
                )
            }
            guard let left = d.vocab[merge.left] else { throw missing("merge token", merge.left) }
            guard let right = d.vocab[merge.right] else { throw missing("merge token", merge.right) }
            guard let merged = d.vocab[merge.left + merge.right] else {
                throw missing("merged token", merge.left + merge.right)
            }
            guard let rank32 = Int32(exactly: rank) else { throw invalid("too many merges") }
            // A repeated pair keeps its last rank, as in tokenizers' HashMap.
            table[bpePairKey(left, right)] = BPEMerge(rank: rank32, id: merged)
        }

        var unknownID: TokenID?
        if let unk = d.unknownToken {
            unknownID = d.vocab[Array(unk.utf8)]
        }

        self.vocabSize = size
        self.tokenStrings = strings
        self.hasToken = hasToken
        self.tokenBytes = bytes
        self.idsByToken = idsByToken
        self.byteIDs = byteIDs
        self.merges = BPEMerges(table: table)
        self.rawAddedTokens = AddedTokenMatcher(d.addedTokens.filter { !$0.normalized })
        self.normalizedAddedTokens = AddedTokenMatcher(d.addedTokens.filter { $0.normalized })
        self.addedTokens = Dictionary(d.addedTokens.map { ($0.id, $0.special) }, uniquingKeysWith: { $1 })
        self.unknownID = unknownID
        self.fuseUnknown = d.fuseUnknown
        self.addPrefixSpace = d.addPrefixSpace
        self.useRegex = d.useRegex
        self.endOfTextID = idsByToken[Array("<|endoftext|>".utf8)]
    }

    /// Loads from a directory: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
    public static func load(directory: String) throws -> Tokenizer {
        let base = directory.hasSuffix("/") ? directory : directory + "/"
        if TokenizerFiles.isRegularFile(base + "tokenizer.json") {
            return try Tokenizer(tokenizerJSONPath: base + "tokenizer.json")
        }
        if TokenizerFiles.isRegularFile(base + "vocab.json") && TokenizerFiles.isRegularFile(base + "merges.txt") {
            return try Tokenizer(vocabPath: base + "vocab.json", mergesPath: base + "merges.txt")
        }
        throw LoRAError.io(path: directory, reason: "no tokenizer.json, nor vocab.json and merges.txt")
    }

    /// Loads GPT-2's `vocab.json` and `merges.txt`. "<|endoftext|>", if in the
    /// vocab, becomes a special token as in `GPT2TokenizerFast`.
    public convenience init(vocabPath: String, mergesPath: String) throws {
        try self.init(definition: TokenizerFiles.readVocabAndMerges(vocabPath: vocabPath, mergesPath: mergesPath), path: mergesPath)
        // Reading the files left megabytes of freed small blocks behind.
        lb_release_free_heap()
    }

    /// Loads a Hugging Face `tokenizer.json` with a BPE model and a ByteLevel pre-tokenizer.
    public convenience init(tokenizerJSONPath: String) throws {
        try self.init(definition: TokenizerFiles.readTokenizerJSON(path: tokenizerJSONPath), path: tokenizerJSONPath)
        lb_release_free_heap()
    }

    /// The vocab string of an id (byte-level form, e.g. "Ġthe"), or the content
    /// of an added token; nil if no token has this id.
    public func token(for id: TokenID) -> String? {
        guard id >= 0, Int(id) < hasToken.count, hasToken[Int(id)] else { return nil }
        return String(decoding: tokenStrings[Int(id)], as: UTF8.self)
    }

    /// The id of a vocab string (byte-level form) or added token.
    public func id(for token: String) -> TokenID? {
        idsByToken[Array(token.utf8)]
    }

    // MARK: Encoding

    public func encode(_ text: String) -> [TokenID] {
        var out: [TokenID] = []
        var text = text
        text.withUTF8 { buffer in
            var state = EncodeState()
            out.reserveCapacity(buffer.count / 3)
            rawAddedTokens.split(buffer, 0..<buffer.count) { range, addedID in
                if let addedID {
                    out.append(addedID)
                    return
                }
                normalizedAddedTokens.split(buffer, range) { range, addedID in
                    if let addedID {
                        out.append(addedID)
                    } else {
                        encodeSegment(buffer, range, into: &out, state: &state)
                    }
                }
            }
        }
        return out
    }

    /// Encodes text that has no added tokens in it.
    func encodeSegment(
        _ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>,
        into out: inout [TokenID], state: inout EncodeState
    ) {
        if range.isEmpty { return }
        if addPrefixSpace && buffer[range.lowerBound] != 0x20 {
            // tokenizers' ByteLevel adds the space to each piece between added tokens.
            var spaced: [UInt8] = [0x20]
            spaced.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[range]))
            spaced.withUnsafeBufferPointer { spacedBuffer in
                splitAndEncode(spacedBuffer, 0..<spacedBuffer.count, into: &out, state: &state)
            }
        } else {
            splitAndEncode(buffer, range, into: &out, state: &state)
        }
    }

    func splitAndEncode(
        _ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>,
        into out: inout [TokenID], state: inout EncodeState
    ) {
        if useRegex {
            GPT2PreTokenizer.split(buffer, range) { start, end in
                encodeWord(buffer, start..<end, into: &out, state: &state)
            }
        } else {
            encodeWord(buffer, range, into: &out, state: &state)
        }
    }

    /// BPE on one pre-tokenized piece.
    @inline(__always)
    func encodeWord(
        _ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>,
        into out: inout [TokenID], state: inout EncodeState
    ) {
        if range.count == 1 {
            let id = byteIDs[Int(buffer[range.lowerBound])]
            if id >= 0 { out.append(id) } else if let unknownID { out.append(unknownID) }
            return
        }
        state.symbols.removeAll(keepingCapacity: true)
        var previousWasUnknown = false
        for i in range {
            let id = byteIDs[Int(buffer[i])]
            if id >= 0 {
                state.symbols.append(id)
                previousWasUnknown = false
            } else if let unknownID {
                // A byte missing from the vocab becomes the unknown token (fused
                // with a preceding one if asked), or is dropped when there is none.
                if !(fuseUnknown && previousWasUnknown) { state.symbols.append(unknownID) }
                previousWasUnknown = true
            }
        }
        let count = merges.apply(&state.symbols, scratch: &state.scratch)
        out.append(contentsOf: state.symbols[0..<count])
    }

    // MARK: Decoding

    /// The text of `ids`. Bytes that are not valid UTF-8 become U+FFFD, one per
    /// maximal invalid subsequence (like Rust's `String::from_utf8_lossy`).
    /// Throws `LoRAError.invalidArgument` for an id that has no token.
    public func decode(_ ids: [TokenID]) throws -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids {
            try appendBytes(of: id, to: &bytes)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func appendBytes(of id: TokenID, to bytes: inout [UInt8]) throws {
        guard id >= 0, Int(id) < hasToken.count, hasToken[Int(id)] else {
            throw LoRAError.invalidArgument("token id \(id) is out of range (vocab size \(vocabSize))")
        }
        bytes.append(contentsOf: tokenBytes[Int(id)])
    }
}

/// Scratch space for one `encode` call.
struct EncodeState {
    var symbols: [TokenID] = []
    var scratch = BPEScratch()
}

/// An added token as read from a file.
struct AddedTokenDefinition: Sendable {
    var id: TokenID
    var content: String
    var special: Bool
    var normalized: Bool
}

/// Finds added tokens in text: at each position the longest token that starts
/// there, scanning left to right (aho-corasick's leftmost-longest, as in tokenizers).
struct AddedTokenMatcher: Sendable {
    /// Candidate tokens by first byte, longest first.
    let byFirstByte: [[(bytes: [UInt8], id: TokenID)]]
    let isEmpty: Bool

    init(_ tokens: [AddedTokenDefinition]) {
        var table = [[(bytes: [UInt8], id: TokenID)]](repeating: [], count: 256)
        for token in tokens {
            let bytes = Array(token.content.utf8)
            guard let first = bytes.first else { continue }
            table[Int(first)].append((bytes: bytes, id: token.id))
        }
        for b in 0..<256 { table[b].sort { $0.bytes.count > $1.bytes.count } }
        byFirstByte = table
        isEmpty = tokens.isEmpty
    }

    /// Calls `body(range, nil)` for text between matches and `body(range, id)` for
    /// each match, in order.
    func split(
        _ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>,
        _ body: (Range<Int>, TokenID?) -> Void
    ) {
        if isEmpty {
            body(range, nil)
            return
        }
        var segmentStart = range.lowerBound
        var i = range.lowerBound
        let end = range.upperBound
        search: while i < end {
            let candidates = byFirstByte[Int(buffer[i])]
            for candidate in candidates where candidate.bytes.count <= end - i {
                var matches = true
                for k in 1..<candidate.bytes.count where buffer[i + k] != candidate.bytes[k] {
                    matches = false
                    break
                }
                if matches {
                    if segmentStart < i { body(segmentStart..<i, nil) }
                    body(i..<(i + candidate.bytes.count), candidate.id)
                    i += candidate.bytes.count
                    segmentStart = i
                    continue search
                }
            }
            i += 1
        }
        if segmentStart < end { body(segmentStart..<end, nil) }
    }
}
