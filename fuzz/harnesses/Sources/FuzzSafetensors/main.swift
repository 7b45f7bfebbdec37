import FuzzSupport

@testable import LoRA  // JSON and SafeTensorsFile are `package` API (fuzz.sh builds in debug, testable)

// The bytes as a .safetensors file, memory-mapped by SafeTensorsFile; every
// tensor it accepts is then read back (floats or ints, per its dtype).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = Fuzz.write(Fuzz.buffer(data, size), name: "input.safetensors")
    Fuzz.expectingErrors {
        let file = try SafeTensorsFile(path: path)
        _ = file.metadata
        for info in file.tensors {
            precondition(file[info.name] == info)
            let raw = file.rawBytes(info)
            precondition(raw.count == info.end - info.begin)
            // Cap the work per input: huge zero-byte shapes are legal.
            guard info.count <= 1 << 20 else { continue }
            switch info.dtype {
            case .F32, .F16, .BF16, .F64:
                let values = try file.floats(info.name)
                precondition(values.count == info.count)
                _ = try file.withF32(info.name) { $0.count }
            default:
                Fuzz.expectingErrors { _ = try file.ints(info.name) }
            }
        }
    }
    return 0
}

Fuzz.run(fuzz)
