import CLoraABI
import Foundation
import LoRA

func rankTarget(_ rank: Int32, _ energy: Float) throws -> RankTarget {
    if rank > 0 { return .fixed(Int(rank)) }
    guard rank == 0 else { throw invalid("rank must be >= 0 (0: use energy)") }
    return .energy(Double(try finite(energy, "energy")))
}

@_cdecl("lora_adapter_compress")
public func lora_adapter_compress(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapter: OpaquePointer?, _ rank: Int32,
    _ energy: Float, _ maxError: UnsafeMutablePointer<Float>?
) -> lora_status {
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

/// The adapters and weights of a combine call, checked: 1 to 4096 live adapters of one model, finite weights.
private func combineInputs(_ adapters: UnsafePointer<OpaquePointer?>?, _ weights: UnsafePointer<Float>?, _ n: Int) throws
    -> (inputs: [(adapter: Adapter, weight: Double)], model: ModelBox)
{
    let count = try count(n, "n_adapters", max: 1 << 12)
    guard count >= 1, let adapters, let weights else { throw invalid("adapters and weights must hold n_adapters >= 1 entries") }
    let boxes = try (0..<count).map { try box(adapters[$0], AdapterBox.self, "adapters[\($0)]") }
    guard let mb = boxes[0].model, boxes.allSatisfy({ $0.model === mb }) else {
        throw invalid("the adapters must belong to one live model handle")
    }
    return (try (0..<count).map { (adapter: boxes[$0].adapter, weight: Double(try finite(weights[$0], "weights[\($0)]"))) }, mb)
}

@_cdecl("lora_adapter_combine")
public func lora_adapter_combine(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapters: UnsafePointer<OpaquePointer?>?,
    _ weights: UnsafePointer<Float>?, _ n: Int, _ method: Int32, _ svdRank: Int32,
    _ svdClamp: Float
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let (inputs, mb) = try combineInputs(adapters, weights, n)
        guard [LORA_COMBINE_CAT, LORA_COMBINE_LINEAR, LORA_COMBINE_SVD].contains(method) else {
            throw invalid("method \(method) is not LORA_COMBINE_CAT, _LINEAR or _SVD (the task merges need lora_adapter_combine_v2)")
        }
        var p = defaultCombineParams
        p.method = method; p.svd_rank = svdRank; p.svd_clamp = svdClamp
        o.pointee = retain(AdapterBox(try Adapter.combine(inputs, method: try combinationMethod(p)), model: mb))
    }
}

var defaultCombineParams: lora_combine_params {
    var p = lora_combine_params()
    p.struct_size = UInt32(MemoryLayout<lora_combine_params>.size)
    p.method = LORA_COMBINE_SVD
    p.svd_rank = 0
    p.svd_clamp = 0
    p.density = 1
    p.majority_sign_method = LORA_MAJORITY_SIGN_TOTAL
    p.seed = 0
    return p
}

@_cdecl("lora_combine_default_params")
public func lora_combine_default_params(_ p: UnsafeMutablePointer<lora_combine_params>?) {
    writeDefaults(p, defaultCombineParams, size: FrozenParamsSize.combine)
}

@_cdecl("lora_combine_default_params_v2")
public func lora_combine_default_params_v2(_ p: UnsafeMutablePointer<lora_combine_params>?, _ size: Int) {
    writeDefaults(p, defaultCombineParams, size: size)
}

func combinationMethod(_ p: lora_combine_params) throws -> CombinationMethod {
    let clamp = try finite(p.svd_clamp, "svd_clamp")
    let rank = p.svd_rank > 0 ? Int(p.svd_rank) : nil
    let clampOpt = clamp > 0 ? Double(clamp) : nil
    func merge(_ kind: TaskMerge.Kind) throws -> TaskMerge {
        let d = try finite(p.density, "density")
        guard d > 0, d <= 1 else { throw invalid("density must be in (0, 1], got \(d)") }
        let sign: TaskMerge.MajoritySignMethod
        switch p.majority_sign_method {
        case LORA_MAJORITY_SIGN_TOTAL: sign = .total
        case LORA_MAJORITY_SIGN_FREQUENCY: sign = .frequency
        default: throw invalid("majority_sign_method \(p.majority_sign_method) is not a LORA_MAJORITY_SIGN_* value")
        }
        return TaskMerge(kind: kind, density: Double(d), majoritySignMethod: sign, seed: p.seed)
    }
    switch p.method {
    case LORA_COMBINE_CAT: return .cat
    case LORA_COMBINE_LINEAR: return .linear
    case LORA_COMBINE_SVD: return .svd(rank: rank, clamp: clampOpt)
    case LORA_COMBINE_TIES: return .taskMerge(try merge(.ties))
    case LORA_COMBINE_DARE_LINEAR: return .taskMerge(try merge(.dareLinear))
    case LORA_COMBINE_DARE_TIES: return .taskMerge(try merge(.dareTies))
    case LORA_COMBINE_MAGNITUDE_PRUNE: return .taskMerge(try merge(.magnitudePrune))
    case LORA_COMBINE_TIES_SVD: return .taskMergeSVD(try merge(.ties), rank: rank, clamp: clampOpt)
    case LORA_COMBINE_DARE_LINEAR_SVD: return .taskMergeSVD(try merge(.dareLinear), rank: rank, clamp: clampOpt)
    case LORA_COMBINE_DARE_TIES_SVD: return .taskMergeSVD(try merge(.dareTies), rank: rank, clamp: clampOpt)
    case LORA_COMBINE_MAGNITUDE_PRUNE_SVD: return .taskMergeSVD(try merge(.magnitudePrune), rank: rank, clamp: clampOpt)
    default: throw invalid("method \(p.method) is not a LORA_COMBINE_* value")
    }
}

@_cdecl("lora_adapter_combine_v2")
public func lora_adapter_combine_v2(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapters: UnsafePointer<OpaquePointer?>?,
    _ weights: UnsafePointer<Float>?, _ n: Int,
    _ params: UnsafePointer<lora_combine_params>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let (inputs, mb) = try combineInputs(adapters, weights, n)
        let p = try readParams(params, defaults: defaultCombineParams, name: "lora_combine_params")
        o.pointee = retain(AdapterBox(try Adapter.combine(inputs, method: try combinationMethod(p)), model: mb))
    }
}

@_cdecl("lora_adapter_extract")
public func lora_adapter_extract(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ base: OpaquePointer?, _ tuned: OpaquePointer?,
    _ targets: UnsafePointer<CChar>?, _ rank: Int32, _ energy: Float,
    _ maxError: UnsafeMutablePointer<Float>?
) -> lora_status {
    lora_adapter_extract_v2(outp, base, tuned, targets, rank, energy, 0, maxError)
}

@_cdecl("lora_adapter_extract_v2")
public func lora_adapter_extract_v2(
    _ outp: UnsafeMutablePointer<OpaquePointer?>?, _ base: OpaquePointer?, _ tuned: OpaquePointer?,
    _ targets: UnsafePointer<CChar>?, _ rank: Int32, _ energy: Float, _ loraBias: Int32,
    _ maxError: UnsafeMutablePointer<Float>?
) -> lora_status {
    outp?.pointee = nil
    return guarded {
        let o = try out(outp, "out")
        let bb = try box(base, ModelBox.self, "base")
        let tb = try box(tuned, ModelBox.self, "tuned")
        var names = LoRAConfig.Targets.names(["c_attn"])
        if let targets { names = .names(list: try string(targets, "target_modules")) }
        let (a, reports) = try Adapter.extract(
            base: bb.model, tuned: tb.model, targetModules: names, rank: try rankTarget(rank, energy), loraBias: loraBias != 0)
        maxError?.pointee = Float(reports.map(\.relativeError).max() ?? 0)
        o.pointee = retain(AdapterBox(a, model: bb))
    }
}

@_cdecl("lora_adapter_convert_for_original_base")
public func lora_adapter_convert_for_original_base(_ outp: UnsafeMutablePointer<OpaquePointer?>?, _ adapter: OpaquePointer?) -> lora_status
{
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
