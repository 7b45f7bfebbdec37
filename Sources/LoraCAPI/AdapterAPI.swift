import CLoraABI
import Foundation
import LoRA

var defaultAdapterParams: lora_adapter_params {
    let d = LoRAConfig()
    return lora_adapter_params(
        struct_size: UInt32(MemoryLayout<lora_adapter_params>.size), r: Int32(d.r),
        lora_alpha: Float(d.loraAlpha), lora_dropout: Float(d.loraDropout),
        target_modules: nil, target_modules_regex: 0, use_rslora: 0,
        `init`: LORA_INIT_DEFAULT, seed: 0, layers_to_transform: nil, n_layers_to_transform: 0,
        pissa_niter: 0, use_dora: d.useDoRA ? 1 : 0, modules_to_save: nil, lora_bias: d.loraBias ? 1 : 0)
}

@_cdecl("lora_adapter_default_params")
public func lora_adapter_default_params(_ p: UnsafeMutablePointer<lora_adapter_params>?) {
    writeDefaults(p, defaultAdapterParams, size: FrozenParamsSize.adapter)
}

@_cdecl("lora_adapter_default_params_v2")
public func lora_adapter_default_params_v2(_ p: UnsafeMutablePointer<lora_adapter_params>?, _ size: Int) {
    writeDefaults(p, defaultAdapterParams, size: size)
}

@_cdecl("lora_adapter_create")
public func lora_adapter_create(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ model: OpaquePointer?,
    _ params: UnsafePointer<lora_adapter_params>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let mb = try box(model, ModelBox.self, "model")
        let p = try readParams(params, defaults: defaultAdapterParams, name: "lora_adapter_params")
        var c = LoRAConfig()
        c.r = Int(p.r)
        c.loraAlpha = Double(try finite(p.lora_alpha, "lora_alpha"))
        c.loraDropout = Double(try finite(p.lora_dropout, "lora_dropout"))
        if let t = p.target_modules {
            let s = try string(t, "target_modules")
            c.targetModules =
                p.target_modules_regex != 0
                ? .regex(s)
                : .names(list: s)
        }
        c.useRSLoRA = p.use_rslora != 0
        c.useDoRA = p.use_dora != 0
        c.loraBias = p.lora_bias != 0
        if let m = p.modules_to_save {
            let names = try string(m, "modules_to_save").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            c.modulesToSave = names.filter { !$0.isEmpty }
        }
        switch p.`init` {
        case LORA_INIT_DEFAULT: c.initLoraWeights = .kaiming
        case LORA_INIT_GAUSSIAN: c.initLoraWeights = .gaussian
        case LORA_INIT_RANDOM: c.initLoraWeights = .random
        case LORA_INIT_PISSA:
            guard p.pissa_niter >= 0 else { throw invalid("pissa_niter must be >= 0") }
            c.initLoraWeights = .pissa(niter: p.pissa_niter > 0 ? Int(p.pissa_niter) : nil)
        case LORA_INIT_OLORA: c.initLoraWeights = .olora
        default: throw invalid("init \(p.`init`) is not a LORA_INIT_* value")
        }
        let n = try count(p.n_layers_to_transform, "n_layers_to_transform", max: 1 << 16)
        if n > 0 {
            guard let layers = p.layers_to_transform else { throw invalid("layers_to_transform is NULL") }
            c.layersToTransform = (0..<n).map { Int(layers[$0]) }
        }
        c.baseModelNameOrPath = mb.model.directory
        let adapter = try Adapter(config: c, modelConfig: mb.model.config)
        try adapter.initialize(from: mb.model, seed: p.seed)
        o.pointee = retain(AdapterBox(adapter, model: mb))
    }
}

@_cdecl("lora_adapter_load")
public func lora_adapter_load(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ model: OpaquePointer?,
    _ path: UnsafePointer<CChar>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let mb = try box(model, ModelBox.self, "model")
        let adapter = try Adapter.load(directory: try string(path, "path"), modelConfig: mb.model.config)
        o.pointee = retain(AdapterBox(adapter, model: mb))
    }
}

@_cdecl("lora_adapter_save")
public func lora_adapter_save(_ adapter: OpaquePointer?, _ path: UnsafePointer<CChar>?) -> lora_status {
    guarded {
        let a = try box(adapter, AdapterBox.self, "adapter").adapter
        try a.save(directory: try string(path, "path"))
    }
}

@_cdecl("lora_adapter_free")
public func lora_adapter_free(_ adapter: OpaquePointer?) {
    guard let ab = try? box(adapter, AdapterBox.self, "adapter") else { return }
    if let mb = ab.model, mb.model.attachments.contains(where: { $0.adapter === ab.adapter }) {
        try? mb.model.detach(ab.adapter)
    }
    release(adapter, AdapterBox.self)
}

@_cdecl("lora_adapter_n_params")
public func lora_adapter_n_params(_ adapter: OpaquePointer?) -> Int64 {
    guard let ab = try? box(adapter, AdapterBox.self, "adapter") else { return -1 }
    return Int64(ab.adapter.parameterCount)
}

func modelAndAdapter(_ model: OpaquePointer?, _ adapter: OpaquePointer?) throws -> (Model, Adapter) {
    let mb = try box(model, ModelBox.self, "model")
    let ab = try box(adapter, AdapterBox.self, "adapter")
    guard ab.model === mb else { throw invalid("the adapter belongs to another model handle") }
    return (mb.model, ab.adapter)
}

@_cdecl("lora_model_attach")
public func lora_model_attach(_ model: OpaquePointer?, _ adapter: OpaquePointer?, _ scale: Float) -> lora_status {
    guarded {
        let (m, a) = try modelAndAdapter(model, adapter)
        try m.attach(a, scale: try finite(scale, "scale"))
    }
}

@_cdecl("lora_model_detach")
public func lora_model_detach(_ model: OpaquePointer?, _ adapter: OpaquePointer?) -> lora_status {
    guarded {
        let (m, a) = try modelAndAdapter(model, adapter)
        try m.detach(a)
    }
}

@_cdecl("lora_model_set_adapter_scale")
public func lora_model_set_adapter_scale(_ model: OpaquePointer?, _ adapter: OpaquePointer?, _ scale: Float) -> lora_status {
    guarded {
        let (m, a) = try modelAndAdapter(model, adapter)
        try m.setScale(a, try finite(scale, "scale"))
    }
}

@_cdecl("lora_model_merge")
public func lora_model_merge(_ model: OpaquePointer?, _ adapter: OpaquePointer?) -> lora_status {
    guarded {
        let (m, a) = try modelAndAdapter(model, adapter)
        try m.merge(a)
    }
}

@_cdecl("lora_model_unmerge")
public func lora_model_unmerge(_ model: OpaquePointer?, _ adapter: OpaquePointer?) -> lora_status {
    guarded {
        let (m, a) = try modelAndAdapter(model, adapter)
        try m.unmerge(a)
    }
}

@_cdecl("lora_model_save")
public func lora_model_save(_ model: OpaquePointer?, _ path: UnsafePointer<CChar>?) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        try m.save(directory: try string(path, "path"))
    }
}

/// LORA_GGUF_* → the export's tensor type.
func ggufType(_ type: Int32) throws -> GGUFDType {
    switch type {
    case LORA_GGUF_F32: return .f32
    case LORA_GGUF_F16: return .f16
    default: throw invalid("type \(type) is not LORA_GGUF_F32 or LORA_GGUF_F16")
    }
}

@_cdecl("lora_model_export_gguf")
public func lora_model_export_gguf(_ model: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ type: Int32) -> lora_status {
    guarded {
        let m = try box(model, ModelBox.self, "model").model
        try m.exportGGUF(path: try string(path, "path"), dtype: try ggufType(type))
    }
}

@_cdecl("lora_adapter_export_gguf")
public func lora_adapter_export_gguf(_ adapter: OpaquePointer?, _ path: UnsafePointer<CChar>?, _ type: Int32) -> lora_status {
    guarded {
        let a = try box(adapter, AdapterBox.self, "adapter").adapter
        try a.exportGGUF(path: try string(path, "path"), base: a.modelConfig, dtype: try ggufType(type))
    }
}
