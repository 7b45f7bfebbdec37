import Foundation

/// GPT-2's `config.json`, with GPT2Config's defaults for missing keys.
public struct GPT2Config: Sendable, Equatable {
    public var vocabSize = 50257
    public var nPositions = 1024
    public var nEmbd = 768
    public var nLayer = 12
    public var nHead = 12
    /// nil means 4 * nEmbd.
    public var nInner: Int? = nil
    public var activation: Activation = .geluNew
    public var layerNormEpsilon: Double = 1e-5
    public var scaleAttnWeights = true
    public var scaleAttnByInverseLayerIdx = false
    public var tieWordEmbeddings = true
    public var bosTokenID: Int? = 50256
    public var eosTokenID: Int? = 50256
    /// GPT-2's dropouts in training (transformers' model.train(); liblora
    /// applies them with TrainerParams.modelDropout): on the embeddings, the
    /// attention weights, and each block's two projection outputs. Not part
    /// of the architecture: `==` ignores them.
    public var embdPdrop: Double = 0.1
    public var attnPdrop: Double = 0.1
    public var residPdrop: Double = 0.1

    public init() {}

    /// The same network: every field but the training dropouts.
    public static func == (a: GPT2Config, b: GPT2Config) -> Bool {
        var b2 = b
        b2.embdPdrop = a.embdPdrop; b2.attnPdrop = a.attnPdrop; b2.residPdrop = a.residPdrop
        return a.isIdentical(to: b2)
    }

    private func isIdentical(to o: GPT2Config) -> Bool {
        vocabSize == o.vocabSize && nPositions == o.nPositions && nEmbd == o.nEmbd && nLayer == o.nLayer && nHead == o.nHead
            && nInner == o.nInner && activation == o.activation && layerNormEpsilon == o.layerNormEpsilon
            && scaleAttnWeights == o.scaleAttnWeights && scaleAttnByInverseLayerIdx == o.scaleAttnByInverseLayerIdx
            && tieWordEmbeddings == o.tieWordEmbeddings && bosTokenID == o.bosTokenID && eosTokenID == o.eosTokenID
            && embdPdrop == o.embdPdrop && attnPdrop == o.attnPdrop && residPdrop == o.residPdrop
    }

    public var innerSize: Int { nInner ?? 4 * nEmbd }
    public var headDim: Int { nEmbd / nHead }

    /// Upper bounds that stop absurd configs before any allocation.
    public static let maxDimension = 1 << 16
    public static let maxLayers = 1024
    public static let maxVocab = 1 << 22
    public static let maxPositions = 1 << 20
    /// Total parameter bound (F32 bytes must stay under 64 GiB).
    public static let maxParameters = 16 << 30

    /// Parses `config.json` text; `path` names the file in errors.
    public static func parse(_ bytes: [UInt8], path: String) throws -> GPT2Config {
        func fail(_ r: String) -> LoRAError { .invalidFile(path: path, reason: r) }
        let json: JSONValue
        do { json = try JSON.parse(bytes) } catch { throw fail("not valid JSON: \(error)") }
        guard let obj = json.objectValue else { throw fail("not a JSON object") }
        var c = GPT2Config()
        if let mt = obj["model_type"]?.stringValue, mt != "gpt2" {
            throw fail("model_type is \"\(mt)\"; only \"gpt2\" is supported")
        }
        func int(_ keys: [String], _ current: Int) throws -> Int {
            for k in keys {
                guard let v = obj[k], !v.isNull else { continue }
                guard let i = v.intValue else { throw fail("\(k) must be an integer") }
                return i
            }
            return current
        }
        func bool(_ k: String, _ current: Bool) throws -> Bool {
            guard let v = obj[k], !v.isNull else { return current }
            guard let b = v.boolValue else { throw fail("\(k) must be true or false") }
            return b
        }
        c.vocabSize = try int(["vocab_size"], c.vocabSize)
        c.nPositions = try int(["n_positions", "max_position_embeddings"], c.nPositions)
        c.nEmbd = try int(["n_embd", "hidden_size"], c.nEmbd)
        c.nLayer = try int(["n_layer", "num_hidden_layers"], c.nLayer)
        c.nHead = try int(["n_head", "num_attention_heads"], c.nHead)
        if let v = obj["n_inner"], !v.isNull {
            guard let i = v.intValue else { throw fail("n_inner must be an integer or null") }
            c.nInner = i
        }
        if let v = obj["activation_function"], !v.isNull {
            guard let s = v.stringValue else { throw fail("activation_function must be a string") }
            guard let a = Activation(rawValue: s) else {
                throw fail(
                    "activation_function \"\(s)\" is not supported (one of \(Activation.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            c.activation = a
        }
        if let v = obj["layer_norm_epsilon"], !v.isNull {
            guard let d = v.doubleValue, d.isFinite, d >= 0 else { throw fail("layer_norm_epsilon must be a non-negative number") }
            c.layerNormEpsilon = d
        }
        func probability(_ k: String, _ current: Double) throws -> Double {
            guard let v = obj[k], !v.isNull else { return current }
            // Any number loads (inference ignores it); training with model_dropout checks the range.
            guard let d = v.doubleValue, d.isFinite else { throw fail("\(k) must be a finite number") }
            return d
        }
        c.embdPdrop = try probability("embd_pdrop", c.embdPdrop)
        c.attnPdrop = try probability("attn_pdrop", c.attnPdrop)
        c.residPdrop = try probability("resid_pdrop", c.residPdrop)
        c.scaleAttnWeights = try bool("scale_attn_weights", c.scaleAttnWeights)
        c.scaleAttnByInverseLayerIdx = try bool("scale_attn_by_inverse_layer_idx", c.scaleAttnByInverseLayerIdx)
        c.tieWordEmbeddings = try bool("tie_word_embeddings", c.tieWordEmbeddings)
        if let v = obj["bos_token_id"] { c.bosTokenID = v.intValue }
        if let v = obj["eos_token_id"] { c.eosTokenID = v.intValue }
        if try bool("add_cross_attention", false) { throw fail("add_cross_attention is not supported") }
        try c.validate(path: path)
        return c
    }

    public static func load(path: String) throws -> GPT2Config {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LoRAError.io(path: path, reason: "cannot read file")
        }
        return try parse(Array(data), path: path)
    }

    /// Checks sizes before anything is allocated.
    public func validate(path: String = "config") throws {
        func fail(_ r: String) -> LoRAError { .invalidFile(path: path, reason: r) }
        guard nEmbd >= 1, nEmbd <= Self.maxDimension else { throw fail("n_embd \(nEmbd) out of range 1...\(Self.maxDimension)") }
        guard nHead >= 1, nHead <= nEmbd else { throw fail("n_head \(nHead) out of range 1...n_embd") }
        guard nEmbd % nHead == 0 else { throw fail("n_embd \(nEmbd) is not divisible by n_head \(nHead)") }
        guard nLayer >= 0, nLayer <= Self.maxLayers else { throw fail("n_layer \(nLayer) out of range 0...\(Self.maxLayers)") }
        guard vocabSize >= 1, vocabSize <= Self.maxVocab else { throw fail("vocab_size \(vocabSize) out of range 1...\(Self.maxVocab)") }
        guard nPositions >= 1, nPositions <= Self.maxPositions else {
            throw fail("n_positions \(nPositions) out of range 1...\(Self.maxPositions)")
        }
        guard innerSize >= 1, innerSize <= 4 * Self.maxDimension else { throw fail("n_inner \(innerSize) out of range") }
        guard parameterCount <= Self.maxParameters else {
            throw fail("the model would have \(parameterCount) parameters, over the limit of \(Self.maxParameters)")
        }
    }

    /// Parameters of GPT2LMHeadModel (tied head counted once). Valid after `validate`'s range checks.
    public var parameterCount: Int {
        let e = nEmbd
        let f = innerSize
        let perLayer = 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + 2 * e + (e * f + f) + (f * e + e)
        return vocabSize * e + nPositions * e + nLayer * perLayer + 2 * e
    }

    /// config.json as transformers writes it (sorted keys, 2-space indent).
    public func json() -> String {
        var o = JSONObject()
        o["activation_function"] = .string(activation.rawValue)
        o["architectures"] = .array([.string("GPT2LMHeadModel")])
        o["attn_pdrop"] = .number(JSONNumber(attnPdrop))
        o["bos_token_id"] = bosTokenID.map { .number(JSONNumber($0)) } ?? .null
        o["dtype"] = .string("float32")
        o["embd_pdrop"] = .number(JSONNumber(embdPdrop))
        o["eos_token_id"] = eosTokenID.map { .number(JSONNumber($0)) } ?? .null
        o["initializer_range"] = .number(JSONNumber(0.02))
        o["layer_norm_epsilon"] = .number(JSONNumber(layerNormEpsilon))
        o["model_type"] = .string("gpt2")
        o["n_ctx"] = .number(JSONNumber(nPositions))
        o["n_embd"] = .number(JSONNumber(nEmbd))
        o["n_head"] = .number(JSONNumber(nHead))
        o["n_inner"] = nInner.map { .number(JSONNumber($0)) } ?? .null
        o["n_layer"] = .number(JSONNumber(nLayer))
        o["n_positions"] = .number(JSONNumber(nPositions))
        o["reorder_and_upcast_attn"] = .bool(false)
        o["resid_pdrop"] = .number(JSONNumber(residPdrop))
        o["scale_attn_by_inverse_layer_idx"] = .bool(scaleAttnByInverseLayerIdx)
        o["scale_attn_weights"] = .bool(scaleAttnWeights)
        o["tie_word_embeddings"] = .bool(tieWordEmbeddings)
        o["use_cache"] = .bool(true)
        o["vocab_size"] = .number(JSONNumber(vocabSize))
        return JSON.pythonPretty(.object(o)) + "\n"
    }
}
