import FuzzSupport
import LoRA

// vocab.json and merges.txt: the input split at its first 0 byte (all of it
// is vocab.json if it has none). An accepted tokenizer encodes a short text.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    let cut = input.firstIndex(of: 0) ?? input.count
    let vocab = Fuzz.write(UnsafeRawBufferPointer(rebasing: input[0..<cut]), name: "vocab.json")
    let merges = Fuzz.write(UnsafeRawBufferPointer(rebasing: input[min(cut + 1, input.count)...]), name: "merges.txt")
    Fuzz.expectingErrors {
        let tokenizer = try Tokenizer(vocabPath: vocab, mergesPath: merges)
        let ids = tokenizer.encode("Hello world, <|endoftext|> héllo 123!")
        _ = try tokenizer.decode(ids)
    }
    return 0
}

Fuzz.run(fuzz)
