import CLoraABI
import Foundation
import LoRA

// MARK: models

@_cdecl("lora_model_default_params")
public func lora_model_default_params(_ p: UnsafeMutablePointer<lora_model_params>?) {
    writeDefaults(p, defaultModelParams, size: FrozenParamsSize.model)
}

@_cdecl("lora_model_default_params_v2")
public func lora_model_default_params_v2(_ p: UnsafeMutablePointer<lora_model_params>?, _ size: Int) {
    writeDefaults(p, defaultModelParams, size: size)
}

var defaultModelParams: lora_model_params {
    lora_model_params(
        struct_size: UInt32(MemoryLayout<lora_model_params>.size), n_threads: 0, dtype: LORA_DTYPE_SAVED,
        kv_cache_dtype: LORA_DTYPE_F32)
}

@_cdecl("lora_model_load")
public func lora_model_load(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ path: UnsafePointer<CChar>?,
    _ params: UnsafePointer<lora_model_params>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let p = try readParams(params, defaults: defaultModelParams, name: "lora_model_params")
        guard p.n_threads >= 0, p.n_threads <= 1024 else { throw invalid("n_threads must be in 0...1024") }
        let dtype: WeightDType?
        if p.dtype == LORA_DTYPE_SAVED {
            dtype = nil
        } else {
            guard let d = WeightDType(code: p.dtype) else {
                throw invalid("dtype \(p.dtype) is not a LORA_DTYPE_* value (-1 to 3)")
            }
            dtype = d
        }
        // Model.load refuses the dtypes a cache cannot take (f16, q8_0).
        guard let kvCacheDType = WeightDType(code: p.kv_cache_dtype) else {
            throw invalid("kv_cache_dtype \(p.kv_cache_dtype) must be LORA_DTYPE_F32 (0) or LORA_DTYPE_BF16 (1)")
        }
        let dir = try string(path, "path")
        let model = try Model.load(directory: dir, dtype: dtype, kvCacheDType: kvCacheDType)
        if p.n_threads > 0 { BLAS.threads = Int(p.n_threads) }
        o.pointee = retain(ModelBox(model))
    }
}

@_cdecl("lora_model_free")
public func lora_model_free(_ model: OpaquePointer?) { release(model, ModelBox.self) }

@_cdecl("lora_model_get_info")
public func lora_model_get_info(_ model: OpaquePointer?, _ info: UnsafeMutablePointer<lora_model_info>?) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let i = try out(info, "info")
        let size = Int(UnsafeRawPointer(i).load(as: UInt32.self))
        guard size >= 4, size <= MemoryLayout<lora_model_info>.size else {
            throw invalid("info->struct_size must be set to sizeof(lora_model_info) (got \(size))")
        }
        let c = m.config
        var full = lora_model_info()
        full.struct_size = UInt32(size)
        full.n_vocab = Int32(c.vocabSize); full.n_positions = Int32(c.nPositions); full.n_embd = Int32(c.nEmbd)
        full.n_layer = Int32(c.nLayer); full.n_head = Int32(c.nHead); full.n_inner = Int32(c.innerSize)
        full.n_params = Int64(m.parameterCount)
        full.has_tokenizer = m.tokenizer == nil ? 0 : 1
        full.dtype = m.dtype.code
        full.kv_cache_dtype = m.kvCacheDType.code
        full.eos_token = Int32(c.eosTokenID.flatMap { $0 < c.vocabSize ? $0 : nil } ?? m.tokenizer?.endOfTextID.map(Int.init) ?? -1)
        let core = Array(BLAS.coreName.utf8.prefix(31))
        withUnsafeMutableBytes(of: &full.blas_core) { b in
            for (k, ch) in core.enumerated() { b[k] = ch }
            b[core.count] = 0
        }
        withUnsafeBytes(of: &full) { src in
            UnsafeMutableRawPointer(i).copyMemory(from: src.baseAddress!, byteCount: size)
        }
    }
}

// MARK: tokens

func tokenizer(_ m: Model) throws -> Tokenizer {
    guard let t = m.tokenizer else { throw LoRAError.wrongState("the model has no tokenizer (vocab.json + merges.txt or tokenizer.json)") }
    return t
}

@_cdecl("lora_tokenize")
public func lora_tokenize(
    _ model: OpaquePointer?, _ text: UnsafePointer<CChar>?, _ textLen: Int,
    _ tokens: UnsafeMutablePointer<Int32>?, _ capacity: Int, _ nTokens: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let n = try count(textLen, "text_len")
        let cap = try count(capacity, "capacity")
        guard let text else { throw invalid("text is NULL") }
        let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(text).assumingMemoryBound(to: UInt8.self), count: n)
        guard let s = String(validating: bytes, as: UTF8.self) else { throw invalid("text is not valid UTF-8") }
        let ids = try tokenizer(m).encode(s)
        nTokens?.pointee = ids.count
        guard ids.count <= cap else { throw CError.bufferTooSmall("\(ids.count) tokens do not fit a buffer of \(cap)") }
        guard let tokens else { if ids.isEmpty { return }; throw invalid("tokens is NULL") }
        for (k, t) in ids.enumerated() { tokens[k] = t }
    }
}

@_cdecl("lora_detokenize")
public func lora_detokenize(
    _ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int,
    _ buf: UnsafeMutablePointer<CChar>?, _ capacity: Int, _ needed: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let n = try count(nTokens, "n_tokens")
        let cap = try count(capacity, "capacity")
        guard tokens != nil || n == 0 else { throw invalid("tokens is NULL") }
        let ids = n == 0 ? [] : Array(UnsafeBufferPointer(start: tokens, count: n))
        let text = try tokenizer(m).decode(ids)
        try writeText(text, buf, cap, needed)
    }
}

// MARK: logits

func tokenArray(_ p: UnsafePointer<Int32>?, _ n: Int, _ what: String) throws -> [TokenID] {
    let n = try count(n, "n_" + what)
    guard n > 0 else { throw invalid("\(what): empty sequence") }
    guard let p else { throw invalid("\(what) is NULL") }
    return Array(UnsafeBufferPointer(start: p, count: n))
}

func copyFloats(_ values: [Float], _ dst: UnsafeMutablePointer<Float>?, _ capacity: Int) throws {
    let cap = try count(capacity, "capacity")
    guard values.count <= cap else { throw CError.bufferTooSmall("\(values.count) floats do not fit a buffer of \(cap)") }
    guard let dst else { throw invalid("logits is NULL") }
    values.withUnsafeBufferPointer { src in
        if let b = src.baseAddress { dst.update(from: b, count: values.count) }
    }
}

@_cdecl("lora_logits")
public func lora_logits(
    _ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int,
    _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let ids = try tokenArray(tokens, nTokens, "tokens")
        let cap = try count(capacity, "capacity")
        let need = ids.count.multipliedReportingOverflow(by: m.config.vocabSize)
        guard !need.overflow else { throw invalid("n_tokens is too large") }
        if need.partialValue > cap { throw CError.bufferTooSmall("logits need \(need.partialValue) floats, the buffer holds \(cap)") }
        guard let logits else { throw invalid("logits is NULL") }
        try m.logits(ids, into: UnsafeMutableBufferPointer(start: logits, count: need.partialValue))
    }
}

@_cdecl("lora_logits_batch")
public func lora_logits_batch(
    _ model: OpaquePointer?, _ seqs: UnsafePointer<UnsafePointer<Int32>?>?, _ lens: UnsafePointer<Int>?,
    _ nSeqs: Int, _ leftPadding: Int32, _ logits: UnsafeMutablePointer<Float>?, _ capacity: Int
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let n = try count(nSeqs, "n_seqs", max: 1 << 20)
        guard n > 0 else { throw invalid("n_seqs must be at least 1") }
        guard let seqs, let lens else { throw invalid("seqs or lens is NULL") }
        var batch: [[TokenID]] = []
        for i in 0..<n {
            guard lens[i] <= m.config.nPositions else { throw invalid("sequence \(i) is longer than n_positions (\(m.config.nPositions))") }
            batch.append(try tokenArray(seqs[i], lens[i], "seqs[\(i)]"))
        }
        let T = batch.map(\.count).max() ?? 0
        let need = n * T * m.config.vocabSize
        let cap = try count(capacity, "capacity")
        if need > cap { throw CError.bufferTooSmall("logits need \(need) floats, the buffer holds \(cap)") }
        try copyFloats(try m.logits(batch: batch, padding: leftPadding != 0 ? .left : .right), logits, cap)
    }
}

// MARK: generation

var defaultSamplingParams: lora_sampling_params {
    let d = SamplingParams()
    return lora_sampling_params(
        struct_size: UInt32(MemoryLayout<lora_sampling_params>.size), max_new_tokens: Int32(d.maxNewTokens),
        temperature: d.temperature, top_k: Int32(d.topK), top_p: d.topP,
        repetition_penalty: d.repetitionPenalty, seed: d.seed, stop_at_eos: 1,
        stop_strings: nil, n_stop_strings: 0)
}

@_cdecl("lora_sampling_default_params")
public func lora_sampling_default_params(_ p: UnsafeMutablePointer<lora_sampling_params>?) {
    writeDefaults(p, defaultSamplingParams, size: FrozenParamsSize.sampling)
}

@_cdecl("lora_sampling_default_params_v2")
public func lora_sampling_default_params_v2(_ p: UnsafeMutablePointer<lora_sampling_params>?, _ size: Int) {
    writeDefaults(p, defaultSamplingParams, size: size)
}

func samplingParams(_ p: UnsafePointer<lora_sampling_params>?) throws -> SamplingParams {
    let c = try readParams(p, defaults: defaultSamplingParams, name: "lora_sampling_params")
    var s = SamplingParams()
    s.maxNewTokens = Int(c.max_new_tokens)
    s.temperature = c.temperature
    s.topK = Int(c.top_k)
    s.topP = c.top_p
    s.repetitionPenalty = c.repetition_penalty
    s.seed = c.seed
    s.stopAtEndOfText = c.stop_at_eos != 0
    let n = try count(c.n_stop_strings, "n_stop_strings", max: 1 << 16)
    if n > 0 {
        guard let list = c.stop_strings else { throw invalid("stop_strings is NULL") }
        s.stopStrings = try (0..<n).map { try string(list[$0], "stop_strings[\($0)]") }
    }
    try s.validate()
    return s
}

/// Wraps a C token callback for the core; a non-zero return stops generation.
func tokenCallback(_ cb: lora_token_callback?, _ user: UnsafeMutableRawPointer?, stopped: UnsafeMutablePointer<Bool>) -> (
    (TokenID, String) -> CallbackAction
)? {
    guard let cb else { return nil }
    return { id, piece in
        var bytes = Array(piece.utf8)
        bytes.append(0)
        let r = bytes.withUnsafeBufferPointer { b in
            b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { cb(id, $0, b.count - 1, user) }
        }
        if r != 0 { stopped.pointee = true }
        return r == 0 ? .continue : .stop
    }
}

@_cdecl("lora_generate")
public func lora_generate(
    _ model: OpaquePointer?, _ prompt: UnsafePointer<CChar>?, _ params: UnsafePointer<lora_sampling_params>?,
    _ callback: lora_token_callback?, _ user: UnsafeMutableRawPointer?,
    _ outText: UnsafeMutablePointer<CChar>?, _ capacity: Int, _ needed: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let text = try string(prompt, "prompt")
        let s = try samplingParams(params)
        let cap = try count(capacity, "capacity")
        let ids = try tokenizer(m).encode(text)
        guard !ids.isEmpty else { throw invalid("the prompt encodes to no token") }
        var stopped = false
        let r = try m.generate(prompt: ids, params: s, onToken: tokenCallback(callback, user, stopped: &stopped))
        needed?.pointee = r.text.utf8.count
        if stopped {
            // A stop from the callback wins over a short buffer; the text is written when it fits.
            if outText != nil, cap > r.text.utf8.count { try writeText(r.text, outText, cap, needed) }
            throw LoRAError.aborted
        }
        if outText != nil || cap > 0 { try writeText(r.text, outText, cap, needed) }
    }
}

@_cdecl("lora_generate_tokens")
public func lora_generate_tokens(
    _ model: OpaquePointer?, _ prompt: UnsafePointer<Int32>?, _ nPrompt: Int,
    _ params: UnsafePointer<lora_sampling_params>?,
    _ callback: lora_token_callback?, _ user: UnsafeMutableRawPointer?,
    _ outTokens: UnsafeMutablePointer<Int32>?, _ capacity: Int, _ nOut: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        let ids = try tokenArray(prompt, nPrompt, "prompt")
        let s = try samplingParams(params)
        let cap = try count(capacity, "capacity")
        var stopped = false
        let r = try m.generate(prompt: ids, params: s, onToken: tokenCallback(callback, user, stopped: &stopped))
        nOut?.pointee = r.tokens.count
        // out_tokens NULL with capacity 0: stream only (as lora_generate), nothing to copy.
        if outTokens == nil && cap == 0 {
            if stopped { throw LoRAError.aborted }
            return
        }
        if stopped && r.tokens.count > cap { throw LoRAError.aborted }
        if r.tokens.count > cap { throw CError.bufferTooSmall("\(r.tokens.count) tokens do not fit a buffer of \(cap)") }
        if !r.tokens.isEmpty {
            guard let outTokens else { throw invalid("out_tokens is NULL") }
            for (k, t) in r.tokens.enumerated() { outTokens[k] = t }
        }
        if stopped { throw LoRAError.aborted }
    }
}
