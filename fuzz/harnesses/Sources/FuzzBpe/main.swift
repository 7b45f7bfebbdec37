import Foundation
import FuzzSupport
import LoRA

// BPE encoding of arbitrary text with the test fixture tokenizer (GPT-2's
// format, all 256 byte symbols): decode(encode(s)) == s for valid UTF-8.
let fixtureDirectory: String = {
    let here = URL(fileURLWithPath: #filePath)  // fuzz/harnesses/Sources/FuzzBpe/main.swift
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Tests/LoRATests/Fixtures/tokenizer").path
}()

let tokenizers: [Tokenizer] = {
    let dir = ProcessInfo.processInfo.environment["LORA_FUZZ_TOKENIZER_DIR"] ?? fixtureDirectory
    do {
        return [
            try Tokenizer(tokenizerJSONPath: dir + "/tokenizer.json"),
            try Tokenizer(vocabPath: dir + "/vocab.json", mergesPath: dir + "/merges.txt"),
        ]
    } catch {
        fatalError("fuzz: cannot load the fixture tokenizer from \(dir): \(error)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    let text = String(decoding: input, as: UTF8.self)
    let valid = text.utf8.elementsEqual(input)
    for tokenizer in tokenizers {
        let ids = tokenizer.encode(text)
        let decoded: String
        do { decoded = try tokenizer.decode(ids) } catch {
            fatalError("decode refused ids from encode: \(error)")
        }
        if valid {
            precondition(Array(decoded.utf8) == Array(input), "round trip changed the text")
        }
    }
    return 0
}

Fuzz.run(fuzz)
