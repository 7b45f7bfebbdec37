import Foundation
import LoRA
import Testing

/// The GGUF writer's byte layout and refusals. The exported files are read
/// back with gguf-py and run in llama.cpp by Tests/gguf.
@Suite struct GGUFTests {
    func u32(_ b: [UInt8], _ at: Int) -> UInt32 { b[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    func u64(_ b: [UInt8], _ at: Int) -> UInt64 { b[at..<at + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }

    @Test func layoutIsVersion3With32ByteAlignedConsecutiveTensors() throws {
        var f = GGUFFile()
        try f.set("general.architecture", .string("gpt2"))
        let a: [Float] = [1, 2, 3, 4, 5]
        let h: [Float] = [0.5, -2, 65504]
        try f.addTensor(name: "a", type: .f32, ne: [5]) { try a.withUnsafeBufferPointer { try GGUFFile.encode($0, as: .f32, name: "a") } }
        try f.addTensor(name: "h", type: .f16, ne: [3, 1]) {
            try h.withUnsafeBufferPointer { try GGUFFile.encode($0, as: .f16, name: "h") }
        }
        let path = try Fixtures.tempDir() + "/t.gguf"
        try f.write(to: path)
        let b = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))

        #expect(Array(b[0..<4]) == Array("GGUF".utf8))
        #expect(u32(b, 4) == 3)
        #expect(u64(b, 8) == 2)  // tensors
        #expect(u64(b, 16) == 2)  // general.alignment + general.architecture
        // First key: general.alignment, u32 32.
        #expect(u64(b, 24) == 17 && String(decoding: b[32..<49], as: UTF8.self) == "general.alignment")
        #expect(u32(b, 49) == 4 && u32(b, 53) == 32)
        let header = f.header()
        #expect(header.count % 32 == 0)
        // Data: a's 20 bytes padded to 32, then h's 6 bytes padded to 32.
        #expect(b.count == header.count + 64)
        let data = Array(b[header.count...])
        #expect(Array(data[0..<20]) == a.withUnsafeBytes { Array($0) })
        #expect(data[20..<32].allSatisfy { $0 == 0 })
        #expect(Array(data[32..<38]) == [0x00, 0x38, 0x00, 0xC0, 0xFF, 0x7B])  // 0.5, -2, 65504 in binary16
        #expect(data[38..<64].allSatisfy { $0 == 0 })
        // Tensor infos: offsets 0 and 32 (each ends the info: name, n_dims, ne, type, offset).
        #expect(u64(header, header.lastIndex(of: UInt8(ascii: "h"))! + 1 + 4 + 16 + 4) == 32)
    }

    @Test func aFailedWriteLeavesNothingBehind() throws {
        let dir = try Fixtures.tempDir()
        let path = dir + "/m.gguf"
        try Data("old".utf8).write(to: URL(fileURLWithPath: path))
        var f = GGUFFile()
        struct Boom: Error {}
        try f.addTensor(name: "x", type: .f32, ne: [1]) { [0, 0, 0, 0] }
        try f.addTensor(name: "y", type: .f32, ne: [1]) { throw Boom() }
        #expect(throws: Boom.self) { try f.write(to: path) }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "old")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["m.gguf"])
    }

    @Test func whatGGMLWouldRefuseIsRefusedHere() throws {
        var f = GGUFFile()
        try f.set("k", .uint32(1))
        #expect(throws: LoRAError.self) { try f.set("k", .uint32(2)) }
        try f.addTensor(name: "t", type: .f32, ne: [2]) { [UInt8](repeating: 0, count: 8) }
        #expect(throws: LoRAError.self) { try f.addTensor(name: "t", type: .f32, ne: [2]) { [] } }
        #expect(throws: LoRAError.self) { try f.addTensor(name: String(repeating: "n", count: 64), type: .f32, ne: [1]) { [] } }
        #expect(throws: LoRAError.self) { try f.addTensor(name: "five", type: .f32, ne: [1, 1, 1, 1, 1]) { [] } }
        #expect(throws: LoRAError.self) { try f.addTensor(name: "zero", type: .f32, ne: [0]) { [] } }
        let big: [Float] = [70000]
        #expect(throws: LoRAError.self) { _ = try big.withUnsafeBufferPointer { try GGUFFile.encode($0, as: .f16, name: "big") } }
    }

    @Test func exportRefusesWhatLlamaCppCannotRun() throws {
        let dir = try Fixtures.tempDir()
        // gpt2-b uses the erf GELU; llama.cpp's gpt2 graph has only the tanh form.
        let b = try Model.load(directory: Fixtures.path("gpt2-b"))
        #expect {
            try b.exportGGUF(path: dir + "/b.gguf")
        } throws: { ($0 as? LoRAError)?.description.contains("gelu_new") == true }
        // An adapter made for gpt2-a does not fit gpt2-tok.
        let tok = try Model.load(directory: Fixtures.path("gpt2-tok"))
        #expect {
            try Adapter.exportGGUF(directory: Fixtures.path("lora/all"), base: tok.config, path: dir + "/x.gguf")
        } throws: { ($0 as? LoRAError)?.description.contains("the base model needs") == true }
        // DoRA is named before anything is loaded.
        let dora = try Fixtures.tempDir()
        let cfg = try String(contentsOfFile: Fixtures.path("lora/all/adapter_config.json"), encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"use_dora\": false", with: "\"use_dora\": true")
            .write(toFile: dora + "/adapter_config.json", atomically: true, encoding: .utf8)
        let a = try Model.load(directory: Fixtures.path("gpt2-a"))
        #expect {
            try Adapter.exportGGUF(directory: dora, base: a.config, path: dir + "/d.gguf")
        } throws: { ($0 as? LoRAError)?.description.contains("GGUF LoRA cannot express DoRA") == true }
        // The same adapters in memory: DoRA (loaded from PEFT's files) and modules_to_save.
        let doraAdapter = try Adapter.load(directory: Fixtures.path("dora/all"), modelConfig: a.config)
        #expect {
            try doraAdapter.exportGGUF(path: dir + "/d2.gguf", base: a.config)
        } throws: { ($0 as? LoRAError)?.description.contains("uses DoRA") == true }
        let saved = try Adapter.load(directory: Fixtures.path("modules_to_save/ln"), modelConfig: a.config)
        #expect {
            try saved.exportGGUF(path: dir + "/m.gguf", base: a.config)
        } throws: { ($0 as? LoRAError)?.description.contains("modules_to_save") == true }
        let wte = try Adapter.load(directory: Fixtures.path("embedding/wte"), modelConfig: a.config)
        #expect {
            try wte.exportGGUF(path: dir + "/w.gguf", base: a.config)
        } throws: { ($0 as? LoRAError)?.description.contains("adapts wte") == true }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}
