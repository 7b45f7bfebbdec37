import Foundation
import LoRA
import Testing

/// A new user's first hour with `lora train` and `lora generate` (issue 18):
/// errors that name the flag, training runs that behave as transformers'
/// Trainer (output-dir refusal, history across resumes, Ctrl-C), the
/// progress bar at 80 columns and the loss plot as an image.
@Suite(.serialized) struct CLIRunTests {
    let model = Fixtures.path("gpt2-tok")

    func data() throws -> String {
        let dir = try Fixtures.tempDir()
        let lines = (0..<40).map { "Line \($0): the quick brown fox jumps over the lazy dog, and the dog sleeps.\n%\n" }
        try lines.joined().write(toFile: dir + "/data.txt", atomically: true, encoding: .utf8)
        return dir + "/data.txt"
    }

    /// Exactly one line on stderr containing every fragment, nothing on stdout, the given exit status.
    func expectOneLineError(
        _ args: [String], _ fragments: [String], status: Int32? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let r = try CLI.run(args)
        #expect(r.status != 0, "\(args) succeeded", sourceLocation: sourceLocation)
        if let status { #expect(r.status == status, "\(args): status \(r.status)", sourceLocation: sourceLocation) }
        let lines = r.err.split(separator: "\n")
        #expect(lines.count == 1, "\(args): stderr \(r.err)", sourceLocation: sourceLocation)
        for f in fragments { #expect(r.err.contains(f), "\(args): \(r.err) lacks \(f)", sourceLocation: sourceLocation) }
        #expect(r.out.isEmpty, "\(args): printed \(r.out)", sourceLocation: sourceLocation)
    }

    func steps(_ metrics: String) throws -> [Int] {
        try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").map { line in
            guard case .object(let o) = try JSON.parse(String(line)), case .number(let s)? = o["step"], let i = s.int else {
                throw LoRAError.invalidArgument("bad metrics line \(line)")
            }
            return i
        }
    }

    @Test func negativeNumbersAreValuesAndErrorsNameTheFlag() throws {
        let d = try data()
        try expectOneLineError(
            ["train", "--model", model, d, "--learning-rate", "-1e-3"],
            ["--learning-rate must be a finite number of at least 0 (got -0.001)"], status: 64)
        try expectOneLineError(
            ["train", "--model", model, d, "--warmup-steps=-1"], ["--warmup-steps must be at least 0 (got -1)"], status: 64)
        try expectOneLineError(["train", "--model", model, d, "--lora-dropout", "1"], ["--lora-dropout must be at least 0 and below 1"])
        try expectOneLineError(["generate", "--model", model, "--temperature", "-1", "hi"], ["--temperature", "at least 0"], status: 64)
        // Validation before any output: nothing of the prompt is echoed.
        try expectOneLineError(["generate", "--model", model, "--top-p", "0", "hi"], ["--top-p must be greater than 0 and at most 1"])
        try expectOneLineError(["generate", "--model", model, String(repeating: "hello ", count: 300)], ["shorten", "n_positions"])
        try expectOneLineError(["train", "--model", model, d, "--lr-scheduler", "foo"], ["constant_with_warmup"])
        try expectOneLineError(["train", "--model", model, d, "--eval-steps", "5"], ["--eval-steps needs validation data"])
        try expectOneLineError(["train", "--model", model, d, "--block-size", "65"], ["--block-size must be between 2 and 64"])
        try expectOneLineError(
            ["train", "--model", model, d, "--loraplus-lr-ratio", "-4"], ["--loraplus-lr-ratio must be a finite number greater than 0"],
            status: 64)
        try expectOneLineError(
            ["train", "--model", model, d, "--full-finetune", "--loraplus-lr-ratio", "4", "--output-dir", try Fixtures.tempDir() + "/ft"],
            ["loraplus_lr_ratio applies to LoRA adapters"])
        // A value that looks like an option.
        let r = try CLI.run(["generate", "--model", model, "--stop", "--", "--max-new-tokens", "4", "--seed", "1", "hi"])
        #expect(r.status == 0 && r.out.hasPrefix("hi"), "\(r.err)")
    }

    /// --dtype (issue #16): `lora convert` writes a q8_0 model that generate
    /// and eval load in its dtype; a bf16 base trains an adapter; a full
    /// fine-tune on it and an unknown dtype are one-line errors.
    @Test func dtypeConvertGenerateTrainAndErrors() throws {
        let out = try Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let c = try CLI.run(["convert", "--model", model, "--dtype", "q8_0", "--output-dir", out + "/q8"])
        #expect(c.status == 0, "\(c.err)")
        let file = try SafeTensorsFile(path: out + "/q8/model.safetensors")
        #expect(file.metadata?["liblora.dtype"] == "q8_0")
        #expect(file["transformer.h.0.mlp.c_fc.weight.q8_0_scale"] != nil)
        let g = try CLI.run(["generate", "--model", out + "/q8", "--max-new-tokens", "4", "Hello"])
        #expect(g.status == 0 && g.out.hasPrefix("Hello"), "\(g.err)")
        let data = try data()
        let e = try CLI.run(["eval", "--model", out + "/q8", data])
        #expect(e.status == 0 && e.out.contains("perplexity"), "\(e.err)")
        let t = try CLI.run([
            "train", "--model", model, "--dtype", "bf16", "--max-steps", "2", "--block-size", "16", "--output-dir", out + "/adapter", data,
        ])
        #expect(t.status == 0, "\(t.err)")
        #expect(FileManager.default.fileExists(atPath: out + "/adapter/adapter_model.safetensors"))
        try expectOneLineError(
            ["train", "--model", model, "--dtype", "f16", "--full-finetune", "--max-steps", "1", "--output-dir", out + "/full", data],
            ["full fine-tuning needs an f32 base"])
        try expectOneLineError(["generate", "--model", model, "--dtype", "int4", "Hi"], ["--dtype", "f32", "q8_0"], status: 64)
        // --kv-cache-dtype: bf16 generates (one prompt, and a batch through the engine); q8_0 is refused.
        let kv = try CLI.run(["generate", "--model", model, "--kv-cache-dtype", "bf16", "--max-new-tokens", "4", "Hello"])
        #expect(kv.status == 0 && kv.out.hasPrefix("Hello"), "\(kv.err)")
        try "Hello\nCaptain\n".write(toFile: out + "/prompts.txt", atomically: true, encoding: .utf8)
        let kvBatch = try CLI.run([
            "generate", "--model", model, "--kv-cache-dtype", "bf16", "--max-new-tokens", "4", "--batch-file", out + "/prompts.txt",
        ])
        #expect(kvBatch.status == 0 && kvBatch.out.split(separator: "\n").count == 2, "\(kvBatch.err)")
        try expectOneLineError(
            ["generate", "--model", model, "--kv-cache-dtype", "q8_0", "Hi"], ["--kv-cache-dtype", "f32", "bf16"], status: 64)
    }

    @Test func pathsThatAreNotWhatTheCommandWants() throws {
        let dir = try Fixtures.tempDir()
        try expectOneLineError(["generate", "--model", Fixtures.path("lora/all"), "hi"], ["is a PEFT adapter", "--adapter"])
        try "just some text\n".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)
        try expectOneLineError(["inspect", dir + "/notes.txt"], ["not a safetensors file"])
        // extract defaults --base to the embedded model (here: not the shape of gpt2-a).
        try expectOneLineError(
            ["extract", "--tuned", Fixtures.path("gpt2-a"), "--rank", "2", "--output-dir", dir + "/ex"], ["different configs"])
    }

    @Test func theEmbeddedModelIsFoundFromTheCommandAndTheEnvironmentOverrides() throws {
        var r = try CLI.run(["generate", "--max-new-tokens", "3", "--seed", "1", "Captain"])
        #expect(r.status == 0 && r.out.hasPrefix("Captain"), "\(r.err)")
        r = try CLI.run(["generate", "--max-new-tokens", "3", "--seed", "1", "Hello"], environment: ["LORA_MODEL": model])
        #expect(r.status == 0, "\(r.err)")
        r = try CLI.run(["generate", "--max-new-tokens", "3", "Hello"], environment: ["LORA_MODEL": "/nonexistent-model"])
        #expect(r.status != 0 && r.err.contains("/nonexistent-model"))
    }

    @Test func aUsedOutputDirIsRefusedUnlessOverwrittenOrResumed() throws {
        let d = try data()
        let out = try Fixtures.tempDir() + "/run"
        let args = [
            "train", "--model", model, d, "--output-dir", out, "--max-steps", "4", "--block-size", "16", "--batch-size", "2",
            "--save-steps", "2", "--save-total-limit", "5",
        ]
        var r = try CLI.run(args)
        #expect(r.status == 0, "\(r.err)")
        try expectOneLineError(args.map { $0 == "4" ? "2" : $0 }, ["--output-dir", "is not empty", "--overwrite-output-dir", "--resume"])
        // Overwriting drops the old run's checkpoints: the new run's last checkpoint is the newest.
        r = try CLI.run(args.map { $0 == "4" ? "2" : $0 } + ["--overwrite-output-dir"])
        #expect(r.status == 0, "\(r.err)")
        #expect(Checkpoint.list(root: out + "/checkpoints").map(\.step) == [2])
        #expect(try steps(out + "/metrics.jsonl") == [1, 2])
    }

    @Test func resumeKeepsTheWholeHistoryAndExtendsAFinishedRun() throws {
        let d = try data()
        let out = try Fixtures.tempDir() + "/run"
        let args = [
            "train", "--model", model, d, "--output-dir", out, "--block-size", "16", "--batch-size", "2",
            "--validation-split", "0.2", "--eval-steps", "3", "--save-steps", "2",
        ]
        var r = try CLI.run(args + ["--max-steps", "6"])
        #expect(r.status == 0, "\(r.err)")
        r = try CLI.run(args + ["--max-steps", "9", "--resume"])
        #expect(r.status == 0 && r.out.contains("resumed from") && r.out.contains("step 9/9"), "\(r.err)")
        #expect(try steps(out + "/metrics.jsonl") == Array(0...9))
        // The plot covers the whole run: its x axis reaches step 9 with a tick at 0.
        let svg = try String(contentsOfFile: out + "/loss.svg", encoding: .utf8)
        #expect(svg.contains(">0</text>") && svg.contains("loss (nats per token"))
        // A changed setting is named as a flag with both values.
        try expectOneLineError(
            args + ["--max-steps", "9", "--resume", "--learning-rate", "1e-3"],
            ["--learning-rate 0.0002 (now 0.001)"])
    }

    /// Ctrl-C: a checkpoint at the next step boundary, the resume command, exit 130; the resumed run continues the history.
    @Test func sigintSavesACheckpointAndPrintsTheResumeCommand() throws {
        let d = try data()
        let out = try Fixtures.tempDir() + "/run"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.path)
        let args = [
            "train", "--model", model, d, "--output-dir", out, "--block-size", "16", "--batch-size", "2", "--max-steps", "100000000",
        ]
        p.arguments = args
        let stdout = Pipe()
        let stderr = Pipe()
        p.standardOutput = stdout; p.standardError = stderr; p.standardInput = FileHandle.nullDevice
        try p.run()
        // Wait for the first progress line (training has begun and the handler is installed).
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("step 2/") {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen.append(chunk)
        }
        p.interrupt()
        _ = stdout.fileHandleForReading.readDataToEndOfFile()
        let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 130, "status \(p.terminationStatus): \(err)")
        #expect(err.contains("resume with: lora train") && err.contains("--resume"), "\(err)")
        let ckpts = Checkpoint.list(root: out + "/checkpoints")
        let at = try #require(ckpts.last).step
        #expect(at >= 2)
        #expect(try steps(out + "/metrics.jsonl") == Array(1...at))
        let r = try CLI.run(args.map { $0 == "100000000" ? String(at + 2) : $0 } + ["--resume"])
        #expect(r.status == 0 && r.out.contains("step \(at + 2)/\(at + 2)"), "\(r.err)")
        #expect(try steps(out + "/metrics.jsonl") == Array(1...(at + 2)))
    }

    /// The live bar never reaches the last column of an 80-column terminal (no wrapping, one line per update).
    @Test func progressBarFitsAn80ColumnTerminal() throws {
        let d = try data()
        let out = try Fixtures.tempDir() + "/run"
        let script = """
            import os, pty, sys, fcntl, termios, struct, re
            pid, fd = pty.fork()
            if pid == 0:
                os.execv(sys.argv[1], sys.argv[1:])
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            data = b""
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            _, status = os.waitpid(pid, 0)
            text = data.decode("utf-8", "replace")
            segments = [re.sub(r"\\x1b\\[[0-9;]*[A-Za-z]", "", s) for s in re.split(r"[\\r\\n]", text)]
            bars = [s for s in segments if "step " in s and "/30" in s]
            widest = max(len(s) for s in segments if "step " in s)
            print(len(bars), widest, os.waitstatus_to_exitcode(status))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", "-c", script, CLI.path, "train", "--model", model, d, "--output-dir", out, "--block-size", "16",
            "--batch-size", "2", "--max-steps", "30", "--validation-split", "0.2", "--eval-steps", "10",
        ]
        var env = ProcessInfo.processInfo.environment; env["COLUMNS"] = nil
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let o = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let fields = o.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }
        #expect(fields.count == 3, "\(o)")
        if fields.count == 3 {
            #expect(fields[0] >= 30, "progress bars seen: \(fields[0])")
            #expect(fields[1] <= 79, "widest line \(fields[1]) columns")
            #expect(fields[2] == 0)
        }
    }

    /// loss.svg rendered by librsvg (rsvg-convert) is a well-formed, non-blank PNG with axis labels.
    @Test func lossPlotRendersAsAnImage() throws {
        let d = try data()
        let out = try Fixtures.tempDir() + "/run"
        let r = try CLI.run([
            "train", "--model", model, d, "--output-dir", out, "--block-size", "16", "--batch-size", "2",
            "--max-steps", "12", "--validation-split", "0.2", "--eval-steps", "4",
        ])
        #expect(r.status == 0, "\(r.err)")
        let svg = try String(contentsOfFile: out + "/loss.svg", encoding: .utf8)
        #expect(svg.contains(">step</text>") && svg.contains("loss (nats per token"))
        let rsvg = ["/usr/bin/rsvg-convert", "/usr/local/bin/rsvg-convert"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let converter = try #require(rsvg, "rsvg-convert is missing: apt-get install librsvg2-bin (scripts/bootstrap.sh)")
        let png = out + "/loss.png"
        let c = Process()
        c.executableURL = URL(fileURLWithPath: converter)
        c.arguments = ["-o", png, out + "/loss.svg"]
        try c.run(); c.waitUntilExit()
        #expect(c.terminationStatus == 0)
        // Decode the PNG (zlib + the five row filters) and count pixels that are not white.
        let check = """
            import struct, sys, zlib
            b = open(sys.argv[1], "rb").read()
            assert b[:8] == b"\\x89PNG\\r\\n\\x1a\\n", "not a PNG"
            pos, idat, w = 8, b"", 0
            while pos < len(b):
                n, kind = struct.unpack(">I4s", b[pos:pos + 8]); body = b[pos + 8:pos + 8 + n]; pos += 12 + n
                if kind == b"IHDR": w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
                if kind == b"IDAT": idat += body
            bpp = {6: 4, 2: 3, 0: 1, 4: 2}[ctype]
            raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
            for y in range(h):
                f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
                for i in range(stride):
                    a = line[i - bpp] if i >= bpp else 0; up = prev[i]; c = prev[i - bpp] if i >= bpp else 0
                    if f == 1: line[i] = (line[i] + a) & 255
                    elif f == 2: line[i] = (line[i] + up) & 255
                    elif f == 3: line[i] = (line[i] + (a + up) // 2) & 255
                    elif f == 4:
                        p = a + up - c; pa, pb, pc = abs(p - a), abs(p - up), abs(p - c)
                        line[i] = (line[i] + (a if pa <= pb and pa <= pc else up if pb <= pc else c)) & 255
                rows.append(line); prev = line
            ink = sum(1 for row in rows for x in range(w) if min(row[x * bpp:x * bpp + min(3, bpp)]) < 200)
            print(w, h, ink)
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", check, png]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let o = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let v = o.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }
        #expect(p.terminationStatus == 0 && v.count == 3, "\(o)")
        if v.count == 3 {
            #expect(v[0] == 720 && v[1] == 420)
            // Axes, ticks, labels and curves: well above nothing, far below a filled image.
            #expect(v[2] > 2000 && v[2] < v[0] * v[1] / 4, "dark pixels: \(v[2])")
        }
    }
}
