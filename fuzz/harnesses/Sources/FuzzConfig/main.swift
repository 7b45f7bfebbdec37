import FuzzSupport
import LoRA

// config.json: parse, and for an accepted config, write it back and reparse.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(Fuzz.buffer(data, size))
    Fuzz.expectingErrors {
        let config = try GPT2Config.parse(bytes, path: "config.json")
        _ = config.headDim
        _ = config.innerSize
        Fuzz.expectingErrors { try config.validate(path: "config.json") }
        Fuzz.expectingErrors { _ = try GPT2Config.parse(Array(config.json().utf8), path: "config.json (rewritten)") }
    }
    return 0
}

Fuzz.run(fuzz)
