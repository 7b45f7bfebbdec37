#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What a tokenizer file says, validated but not yet turned into lookup tables.
struct TokenizerDefinition {
    /// Model vocab (no added tokens): UTF-8 of the token string → id.
    var vocab: [[UInt8]: TokenID] = [:]
    var merges: [MergeDefinition] = []
    /// How merge locations are named in errors: "line 7" or "model.merges[5]".
    var mergesAreLines = true
    var addedTokens: [AddedTokenDefinition] = []
    var unknownToken: String?
    var fuseUnknown = false
    var addPrefixSpace = false
    var useRegex = true

    func location(of merge: MergeDefinition) -> String {
        mergesAreLines ? "line \(merge.index)" : "model.merges[\(merge.index)]"
    }
}

struct MergeDefinition {
    var left: [UInt8]
    var right: [UInt8]
    /// The line number in merges.txt, or the index in `model.merges`.
    var index: Int
}

/// Readers for vocab.json, merges.txt and tokenizer.json.
enum TokenizerFiles {
    /// Ids above this are refused: no real vocabulary comes close, and the
    /// tables are sized by the largest id.
    static let maxTokenID = 10_000_000

    static func isRegularFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0 else { return false }
        return (info.st_mode & S_IFMT) == S_IFREG
    }

    /// The whole content of a file.
    static func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        if fd < 0 { throw LoRAError.io(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw LoRAError.io(path: path, reason: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    /// Parses a whole file with the project's strict reader (`JSON.parse`).
    ///
    /// Duplicate keys: `JSONValue` lookups return the last one, as serde_json's
    /// maps do in tokenizers; the readers below refuse them where tokenizers
    /// refuses them or where taking the last would hide a broken file.
    static func parseJSON(_ bytes: [UInt8], path: String) throws -> JSONValue {
        do {
            return try JSON.parse(bytes)
        } catch let error as JSONParseError {
            throw LoRAError.invalidFile(path: path, reason: error.description)
        } catch {
            throw LoRAError.invalidFile(path: path, reason: "invalid JSON: \(error)")
        }
    }

    // MARK: vocab.json + merges.txt

    static func readVocabAndMerges(vocabPath: String, mergesPath: String) throws -> TokenizerDefinition {
        var d = TokenizerDefinition()
        let vocabJSON = try parseJSON(try readFile(vocabPath), path: vocabPath)
        d.vocab = try parseVocab(vocabJSON, path: vocabPath, field: "vocab")
        d.merges = try parseMergesText(try readFile(mergesPath), path: mergesPath)
        d.mergesAreLines = true
        // GPT2TokenizerFast makes "<|endoftext|>" (its unk/bos/eos) a special token.
        let endOfText = "<|endoftext|>"
        if let id = d.vocab[Array(endOfText.utf8)] {
            d.addedTokens = [AddedTokenDefinition(id: id, content: endOfText, special: true, normalized: false)]
        }
        return d
    }

    /// A JSON object of token string → non-negative integer id, tokens and ids unique.
    ///
    /// A token that appears twice is an error. (tokenizers keeps the last id
    /// silently, which leaves the first id without a token.)
    static func parseVocab(_ json: JSONValue, path: String, field: String) throws -> [[UInt8]: TokenID] {
        guard case .object(let object) = json else {
            throw LoRAError.invalidFile(path: path, reason: "\(field) must be a JSON object of token → id, not \(json.kindName)")
        }
        let members = object.members
        if let key = object.duplicateKeys.first {
            throw LoRAError.invalidFile(path: path, reason: "\(field): token \(quoted(key)) appears twice")
        }
        var vocab: [[UInt8]: TokenID] = [:]
        vocab.reserveCapacity(members.count)
        var seenIDs = Set<TokenID>()
        seenIDs.reserveCapacity(members.count)
        for (key, value) in members {
            guard let id = value.intValue else {
                throw LoRAError.invalidFile(
                    path: path, reason: "\(field): the id of \(quoted(key)) must be an integer, not \(value.kindName)")
            }
            guard id >= 0, id <= maxTokenID, let id32 = TokenID(exactly: id) else {
                throw LoRAError.invalidFile(path: path, reason: "\(field): the id of \(quoted(key)) is \(id), outside 0...\(maxTokenID)")
            }
            let bytes = Array(key.utf8)
            guard vocab.updateValue(id32, forKey: bytes) == nil else {
                throw LoRAError.invalidFile(path: path, reason: "\(field): token \(quoted(key)) appears twice")
            }
            guard seenIDs.insert(id32).inserted else {
                throw LoRAError.invalidFile(path: path, reason: "\(field): id \(id) is used twice (again by \(quoted(key)))")
            }
        }
        return vocab
    }

    /// merges.txt: an optional "#version" line, then "left right" per line in rank
    /// order. Lines end with "\n" or "\r\n"; blank lines at the end are ignored.
    static func parseMergesText(_ bytes: [UInt8], path: String) throws -> [MergeDefinition] {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        func isBlank(_ line: ArraySlice<UInt8>) -> Bool { line.isEmpty || line == [0x0D] }
        while let last = lines.last, isBlank(last) { lines.removeLast() }
        var merges: [MergeDefinition] = []
        merges.reserveCapacity(lines.count)
        let versionPrefix = Array("#version".utf8)
        for (index, rawLine) in lines.enumerated() {
            let lineNumber = index + 1
            var line = rawLine
            if line.last == 0x0D { line = line.dropLast() }
            if line.starts(with: versionPrefix) { continue }
            let parts = line.split(separator: 0x20, omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                let text = String(decoding: line.prefix(200), as: UTF8.self)
                throw LoRAError.invalidFile(
                    path: path,
                    reason:
                        "line \(lineNumber): a merge must be two tokens separated by one space, got \(parts.count) part(s) in \(quoted(text))"
                )
            }
            guard String(validating: line, as: UTF8.self) != nil else {
                throw LoRAError.invalidFile(path: path, reason: "line \(lineNumber): not valid UTF-8")
            }
            merges.append(MergeDefinition(left: Array(parts[0]), right: Array(parts[1]), index: lineNumber))
        }
        return merges
    }

    // MARK: tokenizer.json

    static func readTokenizerJSON(path: String) throws -> TokenizerDefinition {
        let json = try parseJSON(try readFile(path), path: path)
        func invalid(_ reason: String) -> LoRAError { .invalidFile(path: path, reason: reason) }
        guard case .object = json else { throw invalid("the top level must be a JSON object, not \(json.kindName)") }

        var d = TokenizerDefinition()
        d.mergesAreLines = false

        guard let model = json["model"], case .object(let modelObject) = model else {
            throw invalid("missing \"model\" object")
        }
        // tokenizers refuses a repeated model "type"; other repeated keys of the
        // model, and of the top level and the components, take the last value as there.
        if modelObject.duplicateKeys.contains("type") {
            throw invalid("model: duplicate field \"type\"")
        }
        if let type = model["type"], !type.isNull {
            guard let name = type.stringValue else { throw invalid("model.type must be a string") }
            guard name == "BPE" else {
                throw invalid("model type \(quoted(name)) is not supported (only BPE)")
            }
        }
        if let dropout = model["dropout"], !dropout.isNull {
            guard case .number(let p) = dropout else {
                throw invalid("model.dropout must be a number or null, not \(dropout.kindName)")
            }
            if p.double > 0 { throw invalid("BPE dropout (\(p.text)) is not supported") }
        }
        for field in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[field], !value.isNull {
                guard let s = value.stringValue else { throw invalid("model.\(field) must be a string or null") }
                guard s.isEmpty else { throw invalid("model.\(field) \(quoted(s)) is not supported") }
            }
        }
        for field in ["byte_fallback", "ignore_merges"] {
            if let value = model[field], !value.isNull {
                guard let flag = value.boolValue else { throw invalid("model.\(field) must be a boolean") }
                guard !flag else { throw invalid("model.\(field) = true is not supported") }
            }
        }
        if let unk = model["unk_token"], !unk.isNull {
            guard let s = unk.stringValue else { throw invalid("model.unk_token must be a string or null") }
            d.unknownToken = s
        }
        if let fuse = model["fuse_unk"], !fuse.isNull {
            guard let flag = fuse.boolValue else { throw invalid("model.fuse_unk must be a boolean") }
            d.fuseUnknown = flag
        }

        guard let vocab = model["vocab"] else { throw invalid("missing model.vocab") }
        d.vocab = try parseVocab(vocab, path: path, field: "model.vocab")

        guard let mergesValue = model["merges"] else { throw invalid("missing model.merges") }
        guard case .array(let mergeItems) = mergesValue else {
            throw invalid("model.merges must be an array, not \(mergesValue.kindName)")
        }
        d.merges.reserveCapacity(mergeItems.count)
        for (index, item) in mergeItems.enumerated() {
            switch item {
            case .string(let s):
                // Legacy form "left right".
                let parts = s.utf8.split(separator: 0x20, omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw invalid("model.merges[\(index)]: \(quoted(s)) must be two tokens separated by one space")
                }
                d.merges.append(MergeDefinition(left: Array(parts[0]), right: Array(parts[1]), index: index))
            case .array(let pair):
                guard pair.count == 2, let left = pair[0].stringValue, let right = pair[1].stringValue else {
                    throw invalid("model.merges[\(index)] must be a pair of strings")
                }
                d.merges.append(MergeDefinition(left: Array(left.utf8), right: Array(right.utf8), index: index))
            default:
                throw invalid("model.merges[\(index)] must be a string or a pair of strings, not \(item.kindName)")
            }
        }

        if let normalizer = json["normalizer"], !normalizer.isNull {
            throw invalid("a normalizer (\(typeName(normalizer))) is not supported")
        }
        guard let pre = json["pre_tokenizer"], !pre.isNull else {
            throw invalid("a ByteLevel pre_tokenizer is required")
        }
        guard typeName(pre) == "ByteLevel" else {
            throw invalid("pre_tokenizer \(typeName(pre)) is not supported (only ByteLevel)")
        }
        d.addPrefixSpace = try optionalBool(pre, "add_prefix_space", default: true, path: path, context: "pre_tokenizer")
        d.useRegex = try optionalBool(pre, "use_regex", default: true, path: path, context: "pre_tokenizer")
        if let decoder = json["decoder"], !decoder.isNull, typeName(decoder) != "ByteLevel" {
            throw invalid("decoder \(typeName(decoder)) is not supported (only ByteLevel)")
        }

        if let added = json["added_tokens"], !added.isNull {
            d.addedTokens = try parseAddedTokens(added, path: path)
        }
        return d
    }

    /// The fields of an added token; tokenizers refuses any of them repeated.
    static let addedTokenFields: Set<String> = ["id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"]

    static func parseAddedTokens(_ json: JSONValue, path: String) throws -> [AddedTokenDefinition] {
        func invalid(_ reason: String) -> LoRAError { .invalidFile(path: path, reason: reason) }
        guard case .array(let items) = json else {
            throw invalid("added_tokens must be an array, not \(json.kindName)")
        }
        var tokens: [AddedTokenDefinition] = []
        var contentByID: [TokenID: String] = [:]
        for (index, item) in items.enumerated() {
            let context = "added_tokens[\(index)]"
            guard case .object(let object) = item else { throw invalid("\(context) must be an object, not \(item.kindName)") }
            if let key = object.duplicateKeys.first(where: addedTokenFields.contains) {
                throw invalid("\(context): duplicate field \(quoted(key))")
            }
            guard let id = item["id"]?.intValue else { throw invalid("\(context).id must be an integer") }
            guard id >= 0, id <= maxTokenID, let id32 = TokenID(exactly: id) else {
                throw invalid("\(context).id \(id) is outside 0...\(maxTokenID)")
            }
            guard let content = item["content"]?.stringValue, !content.isEmpty else {
                throw invalid("\(context).content must be a non-empty string")
            }
            for flag in ["lstrip", "rstrip", "single_word"] {
                if try optionalBool(item, flag, default: false, path: path, context: context) {
                    throw invalid("\(context) \(quoted(content)): \(flag) = true is not supported")
                }
            }
            let special = try optionalBool(item, "special", default: false, path: path, context: context)
            let normalized = try optionalBool(item, "normalized", default: !special, path: path, context: context)
            if let other = contentByID[id32], other != content {
                throw invalid("\(context): id \(id) is used by \(quoted(other)) and \(quoted(content))")
            }
            contentByID[id32] = content
            tokens.append(AddedTokenDefinition(id: id32, content: content, special: special, normalized: normalized))
        }
        return tokens
    }

    static func optionalBool(
        _ object: JSONValue, _ key: String, default value: Bool,
        path: String, context: String
    ) throws -> Bool {
        guard let field = object[key], !field.isNull else { return value }
        guard let flag = field.boolValue else {
            throw LoRAError.invalidFile(path: path, reason: "\(context).\(key) must be a boolean, not \(field.kindName)")
        }
        return flag
    }

    /// The "type" of a component object, for messages; "?" when it has none.
    static func typeName(_ json: JSONValue) -> String {
        json["type"]?.stringValue ?? "?"
    }

    /// A token in quotes, shortened and with control characters escaped.
    static func quoted(_ s: String) -> String {
        var out = "\""
        for (n, scalar) in s.unicodeScalars.enumerated() {
            if n == 80 { out += "…"; break }
            if scalar.value < 0x20 || scalar == "\"" || scalar == "\\" {
                out += scalar.escaped(asASCII: false)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
