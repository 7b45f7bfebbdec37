import FuzzSupport
import LoRA

// adapter_config.json: parse, validate, and for an accepted config, write it
// back and reparse (it must reparse to an equal config).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(Fuzz.buffer(data, size))
    Fuzz.expectingErrors {
        let config = try LoRAConfig.parse(bytes, path: "adapter_config.json")
        Fuzz.expectingErrors { try config.validate() }
        let again = try LoRAConfig.parse(Array(config.json().utf8), path: "adapter_config.json (rewritten)")
        _ = again == config
    }
    return 0
}

Fuzz.run(fuzz)
