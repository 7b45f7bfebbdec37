import Foundation
import FuzzSupport
import LoRA

// JSONL dataset records, loaded with the fixture tokenizer under both bad
// record policies (skip must accept whatever reject accepts, and more).
let fixtureDirectory: String = {
    let here = URL(fileURLWithPath: #filePath)  // fuzz/harnesses/Sources/FuzzJsonl/main.swift
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Tests/LoRATests/Fixtures/tokenizer").path
}()

let tokenizer: Tokenizer = {
    let dir = ProcessInfo.processInfo.environment["LORA_FUZZ_TOKENIZER_DIR"] ?? fixtureDirectory
    do { return try Tokenizer(tokenizerJSONPath: dir + "/tokenizer.json") } catch {
        fatalError("fuzz: cannot load the fixture tokenizer from \(dir): \(error)")
    }
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    // The first byte picks the block size (2...65), the rest is the file.
    let blockSize = 2 + Int(input.first ?? 0) % 64
    let path = Fuzz.write(UnsafeRawBufferPointer(rebasing: input.dropFirst()), name: "data.jsonl")
    var rejected: Dataset? = nil
    for policy in [BadRecordPolicy.reject, .skip] {
        var options = DatasetOptions(blockSize: blockSize)
        options.badRecords = policy
        Fuzz.expectingErrors {
            let dataset = try Dataset.load(paths: [path], tokenizer: tokenizer, options: options)
            for e in dataset.examples {
                precondition(e.ids.count == e.labels.count && e.ids.count <= blockSize)
            }
            _ = dataset.tokenCount
            for w in dataset.warnings { _ = w.description }
            if policy == .reject { rejected = dataset }
            if let rejected {
                precondition(rejected.examples == dataset.examples, "skip and reject disagree on a clean file")
            }
        }
    }
    return 0
}

Fuzz.run(fuzz)
