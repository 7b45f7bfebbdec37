import Foundation
import LoRA
import Testing

/// Runs the `lora` command line: $LORA_CLI (scripts/test.sh points it at a
/// release build) or lora-cli next to the test binary.
struct CLI {
    static let path: String = {
        if let p = ProcessInfo.processInfo.environment["LORA_CLI"], !p.isEmpty { return p }
        let dir = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).deletingLastPathComponent()
        return dir.appendingPathComponent("lora-cli").path
    }()

    struct Result { var status: Int32; var out: String; var err: String }

    static func run(_ args: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        if let stdin {
            let i = Pipe()
            p.standardInput = i
            try p.run()
            i.fileHandleForWriting.write(Data(stdin.utf8))
            try i.fileHandleForWriting.close()
        } else {
            p.standardInput = FileHandle.nullDevice
            try p.run()
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: e, as: UTF8.self))
    }
}

@Suite(.serialized) struct CLITests {
    let model = Fixtures.path("gpt2-tok")

    func text() throws -> String {
        let dir = try Fixtures.tempDir()
        let lines = (0..<40).map { "Line \($0): the quick brown fox jumps over the lazy dog, and the dog sleeps.\n%\n" }
        try lines.joined().write(toFile: dir + "/data.txt", atomically: true, encoding: .utf8)
        return dir + "/data.txt"
    }

    /// One clear line on stderr and a non-zero exit.
    func expectFailure(_ args: [String], mentioning fragment: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try CLI.run(args)
        #expect(r.status != 0, "\(args) succeeded", sourceLocation: sourceLocation)
        let lines = r.err.split(separator: "\n").filter { !$0.isEmpty }
        #expect(lines.count >= 1 && lines[0].contains(fragment), "stderr: \(r.err)", sourceLocation: sourceLocation)
        #expect(!r.err.contains("Fatal error") && !r.err.contains("Stack dump"), sourceLocation: sourceLocation)
    }

    @Test func helpEverywhere() throws {
        for sub in ["", "train", "generate", "eval", "merge", "inspect", "tokenize", "bench", "demo", "init-model"] {
            let r = try CLI.run(sub.isEmpty ? ["--help"] : [sub, "--help"])
            #expect(r.status == 0 && r.out.contains("USAGE"), "\(sub) --help")
        }
    }

    @Test func trainGenerateEvalMergeInspectTokenize() throws {
        let data = try text()
        let out = try Fixtures.tempDir() + "/run"
        var r = try CLI.run([
            "train", "--model", model, data, "--output-dir", out, "--max-steps", "6", "--block-size", "32",
            "--batch-size", "2", "--learning-rate", "1e-2", "--r", "4", "--validation-split", "0.2", "--eval-steps", "3",
        ])
        #expect(r.status == 0, "train: \(r.err)")
        #expect(r.out.contains("step 6/6"))
        for f in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.svg"] {
            #expect(FileManager.default.fileExists(atPath: out + "/" + f), "\(f) missing")
        }
        let metrics = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(metrics.count == 7)  // the validation loss before training (step 0), then steps 1-6
        #expect(try String(contentsOfFile: out + "/loss.svg", encoding: .utf8).hasPrefix("<svg"))
        // Resume from the final checkpoint with more steps is refused (other settings), same settings works.
        r = try CLI.run([
            "train", "--model", model, data, "--output-dir", out, "--max-steps", "6", "--block-size", "32",
            "--batch-size", "2", "--learning-rate", "1e-2", "--r", "4", "--validation-split", "0.2", "--eval-steps", "3", "--resume",
        ])
        #expect(r.status == 0 && r.out.contains("resumed from"), "resume: \(r.err)")

        r = try CLI.run(["generate", "--model", model, "--adapter", out + ":0.5", "--max-new-tokens", "5", "--seed", "3", "Hello"])
        #expect(r.status == 0 && r.out.hasPrefix("Hello"), "generate: \(r.err)")
        let a = try CLI.run(["generate", "--model", model, "--max-new-tokens", "5", "--seed", "3", "--temperature", "0"], stdin: "Hello")
        let b = try CLI.run(["generate", "--model", model, "--max-new-tokens", "5", "--seed", "3", "--temperature", "0", "Hello"])
        #expect(a.status == 0 && a.out == b.out)

        r = try CLI.run(["eval", "--model", model, "--adapter", out, data, "--block-size", "32"])
        #expect(r.status == 0 && r.out.contains("perplexity"), "eval: \(r.err)")

        let merged = try Fixtures.tempDir() + "/merged"
        r = try CLI.run(["merge", "--model", model, "--adapter", out, "--output-dir", merged])
        #expect(r.status == 0, "merge: \(r.err)")
        let m1 = try Model.load(directory: model)
        try m1.attach(try Adapter.load(directory: out, modelConfig: m1.config))
        let ids: [TokenID] = try #require(m1.tokenizer).encode("the quick brown fox")
        #expect(maxAbsDiff(try m1.logits(ids), try Model.load(directory: merged).logits(ids)) < 1e-4)

        r = try CLI.run(["inspect", out])
        #expect(r.status == 0 && r.out.contains("PEFT LoRA adapter") && r.out.contains("lora_A.weight"))
        r = try CLI.run(["inspect", model])
        #expect(r.status == 0 && r.out.contains("GPT-2 model"))
        r = try CLI.run(["inspect", out + "/adapter_model.safetensors"])
        #expect(r.status == 0 && r.out.contains("tensors"))

        r = try CLI.run(["tokenize", "--model", model, "Hello world"])
        #expect(r.status == 0)
        let decoded = try CLI.run(["tokenize", "--model", model, "--decode", r.out.trimmingCharacters(in: .whitespacesAndNewlines)])
        #expect(decoded.out == "Hello world\n")
    }

    /// `lora train --use-dora` saves a DoRA adapter in PEFT's layout; `lora
    /// merge` folds it in with the logits of the adapter applied on the fly.
    @Test func trainWithDoRAAndMerge() throws {
        let data = try text()
        let dir = try Fixtures.tempDir()
        let out = dir + "/run"
        var r = try CLI.run([
            "train", "--model", model, data, "--output-dir", out, "--max-steps", "3", "--block-size", "32",
            "--batch-size", "2", "--learning-rate", "1e-2", "--r", "4", "--use-dora", "--target-modules", "c_attn,c_proj,c_fc",
        ])
        #expect(r.status == 0, "train: \(r.err)")
        let base = try Model.load(directory: model)
        let adapter = try Adapter.load(directory: out, modelConfig: base.config)
        #expect(adapter.config.useDoRA && adapter.slots.allSatisfy { $0.offsetM != nil })
        let names = try SafeTensorsFile(path: out + "/" + Adapter.weightsFile).tensors.map(\.name)
        #expect(names.contains("base_model.model.transformer.h.0.mlp.c_proj.lora_magnitude_vector"))
        r = try CLI.run(["merge", "--model", model, "--adapter", out, "--output-dir", dir + "/merged"])
        #expect(r.status == 0, "merge: \(r.err)")
        let ids: [TokenID] = try #require(base.tokenizer).encode("the quick brown fox")
        try base.attach(adapter)
        #expect(maxAbsDiff(try base.logits(ids), try Model.load(directory: dir + "/merged").logits(ids)) < logitsTolerance)
        r = try CLI.run(["inspect", out])
        #expect(r.out.contains("dora true"), "\(r.out)")
        // lora_bias: B's bias trained and saved under PEFT's key; merged into the module's bias.
        r = try CLI.run([
            "train", "--model", model, data, "--output-dir", dir + "/bias", "--max-steps", "3", "--block-size", "32",
            "--batch-size", "2", "--learning-rate", "1e-2", "--r", "2", "--lora-bias", "--target-modules", "c_attn,c_fc",
        ])
        #expect(r.status == 0, "train: \(r.err)")
        let bias = try SafeTensorsFile(path: dir + "/bias/" + Adapter.weightsFile).floats(
            "base_model.model.transformer.h.0.mlp.c_fc.lora_B.bias")
        #expect(bias.contains { $0 != 0 })
        r = try CLI.run(["merge", "--model", model, "--adapter", dir + "/bias", "--output-dir", dir + "/bias-merged"])
        #expect(r.status == 0, "merge: \(r.err)")
        let biased = try Adapter.load(directory: dir + "/bias", modelConfig: base.config)
        let plainBase = try Model.load(directory: model)
        try plainBase.attach(biased)
        #expect(maxAbsDiff(try plainBase.logits(ids), try Model.load(directory: dir + "/bias-merged").logits(ids)) < logitsTolerance)
        r = try CLI.run(["inspect", dir + "/bias"])
        #expect(r.out.contains("lora_bias true"), "\(r.out)")
        r = try CLI.run(["train", "--model", model, data, "--output-dir", dir + "/bad", "--lora-bias", "--use-dora"])
        #expect(r.status != 0 && r.err.contains("--lora-bias"), "\(r.err)")
        // modules_to_save: ln_f trained in full and saved under PEFT's key.
        r = try CLI.run([
            "train", "--model", model, data, "--output-dir", dir + "/ln", "--max-steps", "2", "--block-size", "32",
            "--batch-size", "2", "--learning-rate", "1e-2", "--r", "2", "--modules-to-save", "ln_f",
        ])
        #expect(r.status == 0, "train: \(r.err)")
        let lnf = try SafeTensorsFile(path: dir + "/ln/" + Adapter.weightsFile).floats("base_model.model.transformer.ln_f.weight")
        let fresh = try Model.load(directory: model)  // held while its weights are read
        let baseLnf = withExtendedLifetime(fresh) { Array(UnsafeBufferPointer(start: fresh.weights.lnfW, count: lnf.count)) }
        #expect(lnf != baseLnf)
        r = try CLI.run(["train", "--model", model, data, "--use-dora", "--init-lora-weights", "olora", "--output-dir", dir + "/x"])
        #expect(r.status == 64 && r.err.contains("--use-dora"), "\(r.err)")
    }

    /// `lora train --init-lora-weights pissa_niter_2`: the saved adapter is the
    /// converted one (rank 2r, for the original base), the unconverted one is
    /// kept on request, and both describe the same model.
    @Test func trainWithPiSSASavesTheConvertedAdapter() throws {
        let data = try text()
        let dir = try Fixtures.tempDir()
        let out = dir + "/run"
        let r = try CLI.run([
            "train", "--model", model, data, "--output-dir", out, "--max-steps", "3",
            "--block-size", "32", "--batch-size", "2", "--learning-rate", "1e-2", "--r", "4",
            "--init-lora-weights", "pissa_niter_2", "--save-unconverted-adapter", "--seed", "5",
        ])
        #expect(r.status == 0, "train: \(r.err)")
        let base = try Model.load(directory: model)
        let converted = try Adapter.load(directory: out, modelConfig: base.config)
        let raw = try Adapter.load(directory: out + "/unconverted", modelConfig: base.config)
        #expect(converted.config.r == 8 && converted.config.initLoraWeights == .kaiming)
        #expect(raw.config.r == 4 && raw.config.initLoraWeights == .pissa(niter: 2))
        let ids: [TokenID] = try #require(base.tokenizer).encode("the quick brown fox")
        // The residual model, rebuilt with the same seed, + the unconverted adapter...
        let residual = try Model.load(directory: model)
        let again = try Adapter(config: raw.config, modelConfig: base.config)
        try again.initialize(from: residual, seed: 5)
        again.params.base.update(from: raw.params.base, count: raw.params.count)
        try residual.attach(again)
        // ...equals the original base + the converted adapter.
        try base.attach(converted)
        #expect(maxAbsDiff(try base.logits(ids), try residual.logits(ids)) < logitsTolerance)

        let bad = try CLI.run([
            "train", "--model", model, data, "--output-dir", out, "--max-steps", "1",
            "--block-size", "32", "--init-lora-weights", "pissa_niter_x",
        ])
        #expect(bad.status != 0 && bad.err.contains("--init-lora-weights"), "\(bad.err)")
    }

    @Test func compressCombineExtractInitModel() throws {
        let a = Fixtures.path("gpt2-a")
        let all = Fixtures.path("lora/all")
        let pattern = Fixtures.path("lora/pattern")
        let out = try Fixtures.tempDir()
        var r = try CLI.run(["compress", all, "--model", a, "--rank", "2", "--output-dir", out + "/small"])
        #expect(r.status == 0 && r.out.contains("6144 → 3072 parameters"), "compress: \(r.err)")
        r = try CLI.run(["compress", all, "--model", a, "--energy", "0.9", "--output-dir", out + "/energy"])
        #expect(r.status == 0, "compress --energy: \(r.err)")
        r = try CLI.run([
            "combine", "--model", a, all + ":0.7", pattern + ":0.3", "--combination-type", "svd", "--svd-rank", "3",
            "--output-dir", out + "/mix",
        ])
        #expect(r.status == 0 && r.out.contains("rank 3"), "combine: \(r.err)")
        let c = try GPT2Config.load(path: a + "/config.json")
        #expect(try Adapter.load(directory: out + "/mix", modelConfig: c).config.r == 3)
        let merged = out + "/merged"
        r = try CLI.run(["merge", "--model", a, "--adapter", all, "--output-dir", merged])
        #expect(r.status == 0)
        r = try CLI.run([
            "extract", "--base", a, "--tuned", merged, "--target-modules", "c_attn,c_proj,c_fc", "--rank", "4",
            "--output-dir", out + "/ex",
        ])
        #expect(r.status == 0 && r.out.contains("extracted 8 modules"), "extract: \(r.err)")
        // A fine-tune with bias changes (PEFT's lora_bias adapter merged), extracted with --lora-bias.
        r = try CLI.run(["merge", "--model", a, "--adapter", Fixtures.path("lora_bias/all"), "--output-dir", out + "/merged-bias"])
        #expect(r.status == 0, "merge: \(r.err)")
        r = try CLI.run([
            "extract", "--base", a, "--tuned", out + "/merged-bias", "--target-modules", "c_attn,c_proj,c_fc", "--rank", "4",
            "--lora-bias", "--output-dir", out + "/ex-bias",
        ])
        #expect(r.status == 0, "extract --lora-bias: \(r.err)")
        let exBias = try Adapter.load(directory: out + "/ex-bias", modelConfig: try GPT2Config.load(path: a + "/config.json"))
        #expect(exBias.config.loraBias && exBias.slots.allSatisfy { $0.offsetBias != nil })
        r = try CLI.run(["init-model", out + "/fresh", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-positions", "32"])
        #expect(r.status == 0, "init-model: \(r.err)")
        let fresh = try Model.load(directory: out + "/fresh")
        #expect(fresh.config.vocabSize == 257 && fresh.tokenizer?.vocabSize == 257)
        try expectFailure(["compress", all, "--model", a, "--rank", "5", "--output-dir", out + "/bad"], mentioning: "exceeds")
        try expectFailure(
            ["combine", "--model", a, all, "--combination-type", "tie", "--output-dir", out + "/bad"], mentioning: "combination-type")
        // TIES needs a density in (0, 1] and equal ranks.
        try expectFailure(
            ["combine", "--model", a, all, "--combination-type", "ties", "--output-dir", out + "/bad"], mentioning: "--density")
        try expectFailure(
            ["combine", "--model", a, all, "--combination-type", "ties", "--density", "1.5", "--output-dir", out + "/bad"],
            mentioning: "--density")
        try expectFailure(
            ["combine", "--model", a, all, pattern, "--combination-type", "ties", "--density", "0.5", "--output-dir", out + "/bad"],
            mentioning: "same rank")
        r = try CLI.run([
            "combine", "--model", a, all + ":0.6", Fixtures.path("combine/all2") + ":0.5", "--combination-type", "ties",
            "--density", "0.5", "--output-dir", out + "/ties",
        ])
        #expect(r.status == 0 && r.out.contains("(ties)"), "combine ties: \(r.err)")
        // The same tensors as PEFT's (TaskMergeTests checks them against the fixture).
        let ties = try Adapter.load(directory: out + "/ties", modelConfig: c)
        let peftTies = try Adapter.load(directory: Fixtures.path("task_merge/ties"), modelConfig: c)
        #expect(maxAbsDiff(Array(ties.params.buffer), Array(peftTies.params.buffer)) < 1e-5)
        r = try CLI.run([
            "combine", "--model", a, all, pattern + ":0.5", "--combination-type", "dare_ties_svd", "--density", "0.5",
            "--majority-sign-method", "frequency", "--seed", "3", "--svd-rank", "2", "--output-dir", out + "/dare",
        ])
        #expect(r.status == 0 && r.out.contains("rank 2"), "combine dare_ties_svd: \(r.err)")
        try expectFailure(
            ["extract", "--base", a, "--tuned", Fixtures.path("gpt2-b"), "--rank", "2", "--output-dir", out + "/bad"],
            mentioning: "different configs")
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["LORA_CLI"] != nil, "needs the release CLI (scripts/test.sh)"))
    func benchPrintsJSON() throws {
        let r = try CLI.run(["bench", "inference", "--prompt", "8", "--decode", "2", "--repeats", "1", "--threads", "1"])
        #expect(r.status == 0 && r.out.contains("\"bench\":\"prefill\"") && r.out.contains("\"bench\":\"decode\""), "bench: \(r.err)")
        let e = try CLI.run([
            "bench", "engine", "--sequences", "2", "--engine-prompt", "4", "--new-tokens", "3", "--joins", "2", "--threads", "1",
        ])
        #expect(e.status == 0, "bench engine: \(e.err)")
        for c in ["single_sequence", "distinct_adapters", "shared_adapter", "sequential_attach_detach", "join_busy_engine"] {
            #expect(e.out.contains("\"case\":\"\(c)\""), "bench engine prints no \(c) line: \(e.out)")
        }
        #expect(e.out.contains("\"first_tokens_s\":"), "bench engine: \(e.out)")
    }

    @Test func badInputIsOneLineAndNonZero() throws {
        let data = try text()
        try expectFailure(["generate", "--model", "/nonexistent", "x"], mentioning: "/nonexistent")
        try expectFailure(["train", "--model", model, "/nonexistent.txt", "--max-steps", "1"], mentioning: "/nonexistent.txt")
        try expectFailure(
            ["train", "--model", model, data, "--target-modules", "q_proj", "--max-steps", "1", "--block-size", "32"], mentioning: "q_proj")
        try expectFailure(
            ["train", "--model", model, data, "--learning-rate", "nan", "--max-steps", "1", "--block-size", "32"],
            mentioning: "--learning-rate")
        try expectFailure(["train", "--model", model, data, "--block-size", "65"], mentioning: "block-size")
        try expectFailure(["train", "--model", model, data, "--r", "0", "--block-size", "32"], mentioning: "r must be")
        try expectFailure(["generate", "--model", model, "--top-p", "2", "x"], mentioning: "--top-p")
        try expectFailure(["generate", "--model", model, "--adapter", "/nonexistent", "x"], mentioning: "adapter_config.json")
        try expectFailure(["inspect", "/nonexistent"], mentioning: "/nonexistent")
        try expectFailure(["tokenize", "--model", model, "--decode", "12", "x"], mentioning: "not a token id")
        let r = try CLI.run(["train", "--max-steps", "abc"])
        #expect(r.status != 0)
    }

    @Test func demoRunsEndToEnd() throws {
        // The shipped model with a release build of the CLI (scripts/test.sh), the small test model otherwise.
        let shipped = URL(fileURLWithPath: Fixtures.root).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("models/fortunes-gpt2").path
        let release = ProcessInfo.processInfo.environment["LORA_CLI"] != nil
        let m = release && FileManager.default.fileExists(atPath: shipped + "/model.safetensors") ? shipped : model
        let data = try Fixtures.tempDir() + "/startrek"
        var quotes = ""
        for i in 0..<60 {
            quotes += "Quote number \(i) about the ship.\n\t\t-- Kirk, \"Episode \(i % 7)\", stardate \(1000 + i).\(i % 10)\n%\n"
        }
        try quotes.write(toFile: data, atomically: true, encoding: .utf8)
        let out = try Fixtures.tempDir()
        let r = try CLI.run([
            "demo", "--model", m, "--data", data, "--output-dir", out, "--max-steps", "12", "--block-size", "64",
            "--batch-size", "4", "--max-new-tokens", "8", "--r", "4",
        ])
        #expect(r.status == 0, "demo failed: \(r.err)\n\(r.out)")
        #expect(r.out.contains("held-out loss before") && r.out.contains("held-out loss after"))
        // A valid PEFT adapter that loads onto the model; the merged model matches base + adapter (the demo checks it too).
        let model = try Model.load(directory: m)
        let adapter = try Adapter.load(directory: out + "/adapter", modelConfig: model.config)
        #expect(adapter.config.r == 4)
        try model.attach(adapter)
        let ids: [TokenID] = try #require(model.tokenizer).encode("-- Kirk, \"Episode 3\"")
        #expect(maxAbsDiff(try model.logits(ids), try Model.load(directory: out + "/merged").logits(ids)) < 1e-4)
    }
}
