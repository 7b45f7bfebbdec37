import CLoraABI
import Foundation
import LoRA

func rankTarget(_ rank: Int32, _ energy: Float) throws -> RankTarget {
    if rank > 0 { return .fixed(Int(rank)) }
    guard rank == 0 else { throw invalid("rank must be >= 0 (0: use energy)") }
    return .energy(Double(try finite(energy, "energy")))
}

@_cdecl("lora_adapter_compress")
public func lora_adapter_compress(_ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapter: OpaquePointer?, _ rank: Int32,
                                  _ energy: Float, _ maxError: UnsafeMutablePointer<Float>?) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let ab = try box(adapter, AdapterBox.self, "adapter")
        guard let mb = ab.model else { throw LoRAError.wrongState("the adapter's model was freed") }
        let (a, reports) = try ab.adapter.compressed(to: try rankTarget(rank, energy))
        maxError?.pointee = Float(reports.map(\.relativeError).max() ?? 0)
        o.pointee = retain(AdapterBox(a, model: mb))
    }
}

@_cdecl("lora_adapter_combine")
public func lora_adapter_combine(_ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapters: UnsafePointer<OpaquePointer?>?,
                                 _ weights: UnsafePointer<Float>?, _ n: Int, _ method: Int32, _ svdRank: Int32,
                                 _ svdClamp: Float) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let count = try count(n, "n_adapters", max: 1 << 12)
        guard count >= 1, let adapters, let weights else { throw invalid("adapters and weights must hold n_adapters >= 1 entries") }
        let boxes = try (0..<count).map { try box(adapters[$0], AdapterBox.self, "adapters[\($0)]") }
        guard let mb = boxes[0].model, boxes.allSatisfy({ $0.model === mb }) else {
            throw invalid("the adapters must belong to one live model handle")
        }
        let inputs = try (0..<count).map { (adapter: boxes[$0].adapter, weight: Double(try finite(weights[$0], "weights[\($0)]"))) }
        let m: CombinationMethod
        switch method {
        case LORA_COMBINE_CAT: m = .cat
        case LORA_COMBINE_LINEAR: m = .linear
        case LORA_COMBINE_SVD:
            let clamp = try finite(svdClamp, "svd_clamp")
            m = .svd(rank: svdRank > 0 ? Int(svdRank) : nil, clamp: clamp > 0 ? Double(clamp) : nil)
        default: throw invalid("method \(method) is not a LORA_COMBINE_* value")
        }
        o.pointee = retain(AdapterBox(try Adapter.combine(inputs, method: m), model: mb))
    }
}

@_cdecl("lora_adapter_extract")
public func lora_adapter_extract(_ outp: UnsafeMutablePointer<OpaquePointer?>?, _ base: OpaquePointer?, _ tuned: OpaquePointer?,
                                 _ targets: UnsafePointer<CChar>?, _ rank: Int32, _ energy: Float,
                                 _ maxError: UnsafeMutablePointer<Float>?) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let bb = try box(base, ModelBox.self, "base"), tb = try box(tuned, ModelBox.self, "tuned")
        var names = LoRAConfig.Targets.names(["c_attn"])
        if let targets { names = .names(list: try string(targets, "target_modules")) }
        let (a, reports) = try Adapter.extract(base: bb.model, tuned: tb.model, targetModules: names, rank: try rankTarget(rank, energy))
        maxError?.pointee = Float(reports.map(\.relativeError).max() ?? 0)
        o.pointee = retain(AdapterBox(a, model: bb))
    }
}

@_cdecl("lora_adapter_convert_for_original_base")
public func lora_adapter_convert_for_original_base(_ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapter: OpaquePointer?) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let ab = try box(adapter, AdapterBox.self, "adapter")
        guard let mb = ab.model else { throw LoRAError.wrongState("the adapter's model was freed") }
        guard ab.adapter.initialParams != nil else {
            throw invalid("the adapter was not initialised with PiSSA or OLoRA in this process")
        }
        o.pointee = retain(AdapterBox(try ab.adapter.convertedForOriginalBase(), model: mb))
    }
}
