import Foundation
import LoRA
import Testing

@Suite struct SafeTensorsTests {
    /// The bytes of a small safetensors file with a hand-written header.
    func file(header: String, data: [UInt8], headerLength: UInt64? = nil) -> [UInt8] {
        let h = Array(header.utf8)
        var out: [UInt8] = []
        withUnsafeBytes(of: (headerLength ?? UInt64(h.count)).littleEndian) { out.append(contentsOf: $0) }
        return out + h + data
    }

    func write(_ bytes: [UInt8]) throws -> String {
        let p = try Fixtures.tempDir() + "/t.safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    func expectInvalid(_ bytes: [UInt8], _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let p = try write(bytes)
        do {
            _ = try SafeTensorsFile(path: p)
            Issue.record("accepted a bad file (\(fragment))", sourceLocation: sourceLocation)
        } catch let e as LoRAError {
            #expect(e.description.contains(p), "message names the file: \(e)", sourceLocation: sourceLocation)
            #expect(e.description.contains(fragment), "\(e) should mention \(fragment)", sourceLocation: sourceLocation)
        }
    }

    @Test func writerIsByteIdenticalToPythonSafetensors() throws {
        let path = Fixtures.path("writer.safetensors")
        let ref = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let f = try SafeTensorsFile(path: path)
        // Rebuild the tensors in a different order; the writer must sort them.
        let tensors = f.tensors.reversed().map {
            TensorData(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(f.rawBytes($0)))
        }
        let ours = try SafeTensorsWriter.serialize(tensors)
        #expect(ours == ref)
        #expect(f.metadata == ["format": "pt"])
        #expect(try f.ints("ids") == [0, 1, 2, 3, 4, 5])
        #expect(try f.ints("flag") == [1, 0, 1])
        #expect(try f.floats("scalar") == [2.5])
        #expect(f["empty"]?.shape == [0, 4])
        #expect(f["ünï"] != nil)
    }

    @Test func roundTripThroughAtomicWrite() throws {
        let dir = try Fixtures.tempDir()
        let p = dir + "/a.safetensors"
        try SafeTensorsWriter.write([TensorData(name: "w", shape: [2, 2], floats: [1, 2, 3, 4])], to: p)
        try SafeTensorsWriter.write([TensorData(name: "w", shape: [3], floats: [5, 6, 7])], to: p)
        #expect(try SafeTensorsFile(path: p).floats("w") == [5, 6, 7])
        // No temporary files left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["a.safetensors"])
    }

    @Test func dataOffsetsNearIntMaxAreRejectedWithoutOverflow() throws {
        // Found by fuzz/harnesses (FuzzSafetensors): tensors that tile the data
        // section up to an end offset near Int.max made the truncation check
        // (end + header size) overflow and trap instead of throwing.
        var entries: [String] = []
        var offset = 0
        for (i, size) in (Array(repeating: 1 << 59, count: 15) + [(1 << 59) - 5]).enumerated() {
            entries.append(#""t\#(i + 10)": {"dtype": "U8", "shape": [\#(size)], "data_offsets": [\#(offset), \#(offset + size)]}"#)
            offset += size
        }
        #expect(offset == Int.max - 4)
        try expectInvalid(file(header: "{" + entries.joined(separator: ", ") + "}", data: []), "file is truncated")
    }

    @Test func acceptsWhatTheReferenceAccepts() throws {
        // Leading/trailing white space, no metadata, header length not a multiple of 8, extra fields.
        let h = #"  {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"foo":1}} "#
        let p = try write(file(header: h, data: [0, 0, 128, 63]))
        let f = try SafeTensorsFile(path: p)
        #expect(try f.floats("a") == [1])
        #expect(f.metadata == nil)
    }

    @Test func rejectsBadFiles() throws {
        let good = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let data = [UInt8](repeating: 0, count: 8)
        try expectInvalid([1, 2, 3], "too small")
        try expectInvalid(file(header: good, data: data, headerLength: 1 << 40), "exceeds the limit")
        try expectInvalid(file(header: good, data: data, headerLength: 10_000), "beyond the end")
        try expectInvalid(file(header: "not json at all", data: data), "not valid JSON")
        try expectInvalid(file(header: "[1,2]", data: data), "not a JSON object")
        try expectInvalid(file(header: good, data: Array(data[0..<5])), "truncated")
        try expectInvalid(file(header: good, data: data + [0]), "trailing")
        try expectInvalid(file(header: #"{"a":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}}"#, data: data), "unknown dtype F128")
        try expectInvalid(file(header: #"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, data: data), "non-negative")
        try expectInvalid(file(header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: data), "needs 12 bytes")
        try expectInvalid(
            file(
                header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#,
                data: data), "overlap or leave a gap")
        try expectInvalid(file(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: data), "overlap or leave a gap")
        try expectInvalid(
            file(header: #"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#, data: data), "overflows"
        )
        try expectInvalid(
            file(header: #"{"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: data), "not a string"
        )
        try expectInvalid(
            file(
                header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                data: data), "duplicate")
        var badUTF8 = file(header: #"{"ab":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, data: data)
        badUTF8[10] = 0xFF
        try expectInvalid(badUTF8, "not valid JSON")
    }

    @Test func modelFilesThatDoNotFitTheConfigAreRejected() throws {
        let dir = try Fixtures.tempDir()
        let src = Fixtures.path("gpt2-a")
        try FileManager.default.copyItem(atPath: src + "/model.safetensors", toPath: dir + "/model.safetensors")
        // n_embd 48 → 96: shapes no longer fit.
        var cfg = try String(contentsOfFile: src + "/config.json", encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"n_embd\": 48", with: "\"n_embd\": 96").write(
            toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        #expect(throws: LoRAError.self) { try Model.load(directory: dir) }
        do { _ = try Model.load(directory: dir) } catch { #expect("\(error)".contains("shape")) }
        // n_head 5 does not divide 48.
        cfg = cfg.replacingOccurrences(of: "\"n_head\": 3", with: "\"n_head\": 5")
        try cfg.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        do { _ = try Model.load(directory: dir); Issue.record("accepted") } catch {
            #expect("\(error)".contains("not divisible by n_head"))
        }
        // A missing tensor.
        let f = try SafeTensorsFile(path: src + "/model.safetensors")
        let kept = f.tensors.filter { $0.name != "transformer.h.1.mlp.c_fc.bias" }.map {
            TensorData(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: Array(f.rawBytes($0)))
        }
        try SafeTensorsWriter.write(kept, to: dir + "/model.safetensors")
        try FileManager.default.removeItem(atPath: dir + "/config.json")
        try FileManager.default.copyItem(atPath: src + "/config.json", toPath: dir + "/config.json")
        do { _ = try Model.load(directory: dir); Issue.record("accepted") } catch {
            #expect("\(error)".contains("missing tensor h.1.mlp.c_fc.bias"))
        }
    }

    @Test func absurdConfigsFailBeforeAllocating() throws {
        for (key, value) in [("n_embd", "1000000000"), ("n_layer", "1000000"), ("vocab_size", "1000000000"), ("n_positions", "-1")] {
            let json = "{\"\(key)\": \(value)}"
            #expect(throws: LoRAError.self) { try GPT2Config.parse(Array(json.utf8), path: "config.json") }
        }
        #expect(throws: LoRAError.self) { try GPT2Config.parse(Array(#"{"activation_function": "mish"}"#.utf8), path: "c") }
        #expect(throws: LoRAError.self) { try GPT2Config.parse(Array(#"{"n_embd": 4.5}"#.utf8), path: "c") }
        #expect(throws: LoRAError.self) { try GPT2Config.parse(Array(#"{"model_type": "llama"}"#.utf8), path: "c") }
        let c = try GPT2Config.parse(Array(#"{"unknown_key": [1, {"x": null}], "n_inner": null}"#.utf8), path: "c")
        #expect(c == GPT2Config())
    }
}

@Suite struct JSONTests {
    @Test func parsesAndWritesLikePython() throws {
        let v = try JSON.parse(#"{"b": [1, 2.5, -0.0, 1e-05, true, null], "a": "x\u00e9\ud83d\ude00\n", "c": {}}"#)
        #expect(v["b"]?.arrayValue?[0].intValue == 1)
        #expect(v["b"]?.arrayValue?[1].intValue == nil)
        #expect(v["a"]?.stringValue == "xé😀\n")
        // json.dumps(v, indent=2, sort_keys=True)
        let want =
            "{\n  \"a\": \"x\\u00e9\\ud83d\\ude00\\n\",\n  \"b\": [\n    1,\n    2.5,\n    -0.0,\n    1e-05,\n    true,\n    null\n  ],\n  \"c\": {}\n}"
        #expect(JSON.pythonPretty(v) == want)
        #expect(JSONNumber(0.05).text == "0.05")
        #expect(JSONNumber(16.0).text == "16.0")
        #expect(JSONNumber(1e-5).text == "1e-05")
        #expect(JSONNumber(22.627416997969522).text == "22.627416997969522")
    }

    @Test func rejectsMalformedJSON() {
        for bad in [
            "", "{", "[1,]", "{\"a\":}", "01", "1.", "\"\\ud800\"", "\"a\u{01}\"", "tru", "{} x",
            "[" + String(repeating: "[", count: 300) + "]",
        ] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }
}
