import FuzzSupport
import LoRA

// tokenizer.json. An accepted tokenizer encodes a short text and decodes it.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let path = Fuzz.write(Fuzz.buffer(data, size), name: "tokenizer.json")
    Fuzz.expectingErrors {
        let tokenizer = try Tokenizer(tokenizerJSONPath: path)
        let ids = tokenizer.encode("Hello world, <|endoftext|> héllo 123!")
        _ = try tokenizer.decode(ids)
        for id in ids { _ = tokenizer.token(for: id) }
    }
    return 0
}

Fuzz.run(fuzz)
