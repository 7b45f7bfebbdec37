// The C entry points of the batched engine (include/lora.h, "Batched engine").
import CLoraABI
import Foundation
import LoRA

final class EngineBox {
    let engine: Engine
    /// The model's box, kept for its tokenizer and lifetime.
    let model: ModelBox
    init(_ e: Engine, model: ModelBox) { engine = e; self.model = model }
}

var defaultEngineParams: lora_engine_params {
    let d = EngineParams()
    return lora_engine_params(
        struct_size: UInt32(MemoryLayout<lora_engine_params>.size), max_sequences: Int32(d.maxSequences),
        max_tokens_per_step: Int32(d.maxTokensPerStep), context_per_sequence: Int32(d.contextPerSequence))
}

@_cdecl("lora_engine_default_params")
public func lora_engine_default_params(_ p: UnsafeMutablePointer<lora_engine_params>?) {
    writeDefaults(p, defaultEngineParams, size: FrozenParamsSize.engine)
}

@_cdecl("lora_engine_default_params_v2")
public func lora_engine_default_params_v2(_ p: UnsafeMutablePointer<lora_engine_params>?, _ size: Int) {
    writeDefaults(p, defaultEngineParams, size: size)
}

@_cdecl("lora_engine_create")
public func lora_engine_create(
    _ outEngine: UnsafeMutablePointer<OpaquePointer?>?, _ model: OpaquePointer?,
    _ params: UnsafePointer<lora_engine_params>?
) -> lora_status {
    outEngine?.pointee = nil
    return guarded {
        let o = try out(outEngine, "out")
        let mb = try box(model, ModelBox.self, "model")
        let c = try readParams(params, defaults: defaultEngineParams, name: "lora_engine_params")
        var p = EngineParams()
        p.maxSequences = Int(c.max_sequences)
        p.maxTokensPerStep = Int(c.max_tokens_per_step)
        p.contextPerSequence = Int(c.context_per_sequence)
        let e = try Engine(model: mb.model, params: p)
        o.pointee = retain(EngineBox(e, model: mb))
    }
}

@_cdecl("lora_engine_free")
public func lora_engine_free(_ engine: OpaquePointer?) {
    release(engine, EngineBox.self)
}

var defaultRequest: lora_request {
    lora_request(
        struct_size: UInt32(MemoryLayout<lora_request>.size), prompt: nil, tokens: nil, n_tokens: 0,
        adapters: nil, n_adapters: 0, sampling: nil, callback: nil, user_data: nil)
}

@_cdecl("lora_request_default_params")
public func lora_request_default_params(_ p: UnsafeMutablePointer<lora_request>?) {
    writeDefaults(p, defaultRequest, size: FrozenParamsSize.request)
}

@_cdecl("lora_request_default_params_v2")
public func lora_request_default_params_v2(_ p: UnsafeMutablePointer<lora_request>?, _ size: Int) {
    writeDefaults(p, defaultRequest, size: size)
}

@_cdecl("lora_engine_submit")
public func lora_engine_submit(
    _ engine: OpaquePointer?, _ request: UnsafePointer<lora_request>?,
    _ id: UnsafeMutablePointer<Int64>?
) -> lora_status {
    guarded {
        let eb = try box(engine, EngineBox.self, "engine")
        let idOut = try out(id, "id")
        guard request != nil else { throw invalid("request is NULL") }
        let r = try readParams(request, defaults: defaultRequest, name: "lora_request")
        let prompt: [TokenID]
        if r.prompt != nil {
            let text = try string(r.prompt, "request->prompt")
            prompt = try tokenizer(eb.model.model).encode(text)
            guard !prompt.isEmpty else { throw invalid("the prompt encodes to no token") }
        } else {
            prompt = try tokenArray(r.tokens, r.n_tokens, "tokens")
        }
        let n = try count(r.n_adapters, "n_adapters", max: 1 << 16)
        var uses: [AdapterUse] = []
        if n > 0 {
            guard let list = r.adapters else { throw invalid("request->adapters is NULL but n_adapters is \(n)") }
            for k in 0..<n {
                let a = try box(list[k].adapter, AdapterBox.self, "adapters[\(k)].adapter")
                // As lora_model_attach: an adapter belongs to the model handle it was made for.
                guard a.model === eb.model else { throw invalid("adapters[\(k)].adapter belongs to another model handle") }
                uses.append(AdapterUse(a.adapter, scale: try finite(list[k].scale, "adapters[\(k)].scale")))
            }
        }
        let sampling = try samplingParams(r.sampling)
        var onToken: ((TokenID, String) -> CallbackAction)? = nil
        if let cb = r.callback {
            let user = r.user_data
            onToken = { id, piece in
                var bytes = Array(piece.utf8)
                bytes.append(0)
                let ret = bytes.withUnsafeBufferPointer { b in
                    b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) { cb(id, $0, b.count - 1, user) }
                }
                return ret == 0 ? .continue : .stop
            }
        }
        idOut.pointee = try eb.engine.submit(EngineRequest(prompt: prompt, adapters: uses, params: sampling, onToken: onToken))
    }
}

@_cdecl("lora_engine_step")
public func lora_engine_step(
    _ engine: OpaquePointer?, _ finished: UnsafeMutablePointer<Int64>?, _ capacity: Int,
    _ nFinished: UnsafeMutablePointer<Int>?, _ nTokens: UnsafeMutablePointer<Int>?
) -> lora_status {
    nFinished?.pointee = 0
    nTokens?.pointee = 0
    return guarded {
        let r = try step(engine, finished: finished, capacity: capacity, nFinished: nFinished)
        nTokens?.pointee = r.produced.count
    }
}

@_cdecl("lora_engine_step_report")
public func lora_engine_step_report(
    _ engine: OpaquePointer?, _ produced: UnsafeMutablePointer<Int64>?, _ producedCapacity: Int,
    _ nProduced: UnsafeMutablePointer<Int>?, _ finished: UnsafeMutablePointer<Int64>?, _ finishedCapacity: Int,
    _ nFinished: UnsafeMutablePointer<Int>?
) -> lora_status {
    nProduced?.pointee = 0
    nFinished?.pointee = 0
    return guarded {
        let cap = try count(producedCapacity, "produced_capacity")
        if cap > 0 && produced == nil { throw invalid("produced is NULL but its capacity is \(cap)") }
        let r = try step(engine, finished: finished, capacity: finishedCapacity, nFinished: nFinished)
        nProduced?.pointee = r.produced.count
        if let produced { for (k, id) in r.produced.prefix(cap).enumerated() { produced[k] = id } }
    }
}

/// One step; the ids of the requests that ended go into `finished`.
private func step(
    _ engine: OpaquePointer?, finished: UnsafeMutablePointer<Int64>?, capacity: Int, nFinished: UnsafeMutablePointer<Int>?
) throws -> EngineStepReport {
    let eb = try box(engine, EngineBox.self, "engine")
    let cap = try count(capacity, "capacity")
    if cap > 0 && finished == nil { throw invalid("finished is NULL but its capacity is \(cap)") }
    let r = try eb.engine.step()
    nFinished?.pointee = r.finished.count
    if let finished { for (k, id) in r.finished.prefix(cap).enumerated() { finished[k] = id } }
    return r
}

@_cdecl("lora_engine_run")
public func lora_engine_run(_ engine: OpaquePointer?) -> lora_status {
    guarded { try box(engine, EngineBox.self, "engine").engine.runUntilDone() }
}

@_cdecl("lora_engine_cancel")
public func lora_engine_cancel(_ engine: OpaquePointer?, _ id: Int64) -> lora_status {
    guarded { try box(engine, EngineBox.self, "engine").engine.cancel(id) }
}

func stopCode(_ r: StopReason?, cancelled: Bool) -> Int32 {
    if cancelled { return LORA_STOP_CANCELLED }
    switch r {
    case nil: return LORA_STOP_NONE
    case .maxNewTokens: return LORA_STOP_MAX_TOKENS
    case .endOfText: return LORA_STOP_EOS
    case .stopString: return LORA_STOP_STRING
    case .contextFull: return LORA_STOP_CONTEXT_FULL
    case .callback: return LORA_STOP_CALLBACK
    case .error: return LORA_STOP_ERROR
    }
}

@_cdecl("lora_engine_request_info")
public func lora_engine_request_info(_ engine: OpaquePointer?, _ id: Int64, _ info: UnsafeMutablePointer<lora_request_info>?) -> lora_status
{
    guarded {
        let eb = try box(engine, EngineBox.self, "engine")
        let i = try out(info, "info")
        let size = Int(UnsafeRawPointer(i).load(as: UInt32.self))
        guard size >= 4, size <= MemoryLayout<lora_request_info>.size else {
            throw invalid("info->struct_size must be set to sizeof(lora_request_info) (got \(size))")
        }
        let s = try eb.engine.state(id)
        var full = lora_request_info()
        full.struct_size = UInt32(size)
        full.state = s.state.rawValue
        let cancelled = s.state == .cancelled
        full.stop_reason = stopCode(s.state == .finished || cancelled ? s.result?.stopReason : nil, cancelled: cancelled)
        full.status =
            cancelled
            ? LORA_OK
            : s.result?.stopReason == .callback ? LORA_ABORTED : s.error.map(statusOf) ?? LORA_OK
        full.n_tokens = Int64(s.tokenCount)
        withUnsafeBytes(of: &full) { src in
            UnsafeMutableRawPointer(i).copyMemory(from: src.baseAddress!, byteCount: size)
        }
    }
}

/// An ended request's result (wrongState before it ends).
func endedResult(_ e: Engine, _ id: Int64) throws -> GenerationResult {
    let s = try e.state(id)
    guard s.state == .finished || s.state == .cancelled, let r = s.result else {
        throw LoRAError.wrongState("request \(id) has not ended")
    }
    return r
}

@_cdecl("lora_engine_request_tokens")
public func lora_engine_request_tokens(
    _ engine: OpaquePointer?, _ id: Int64, _ outTokens: UnsafeMutablePointer<Int32>?,
    _ capacity: Int, _ nOut: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let eb = try box(engine, EngineBox.self, "engine")
        let cap = try count(capacity, "capacity")
        let r = try endedResult(eb.engine, id)
        nOut?.pointee = r.tokens.count
        if r.tokens.count > cap { throw CError.bufferTooSmall("\(r.tokens.count) tokens do not fit a buffer of \(cap)") }
        if !r.tokens.isEmpty {
            guard let outTokens else { throw invalid("out_tokens is NULL") }
            for (k, t) in r.tokens.enumerated() { outTokens[k] = t }
        }
    }
}

@_cdecl("lora_engine_request_text")
public func lora_engine_request_text(
    _ engine: OpaquePointer?, _ id: Int64, _ outText: UnsafeMutablePointer<CChar>?,
    _ capacity: Int, _ needed: UnsafeMutablePointer<Int>?
) -> lora_status {
    guarded {
        let eb = try box(engine, EngineBox.self, "engine")
        let cap = try count(capacity, "capacity")
        let r = try endedResult(eb.engine, id)
        try writeText(r.text, outText, cap, needed)
    }
}

@_cdecl("lora_engine_release")
public func lora_engine_release(_ engine: OpaquePointer?, _ id: Int64) -> lora_status {
    guarded { try box(engine, EngineBox.self, "engine").engine.release(id) }
}
