import ArgumentParser
import Foundation
import LoRA

@main
struct LoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Fine-tune GPT-2 with LoRA and run it, on the CPU.",
        discussion: """
            Models are Hugging Face GPT-2 directories (config.json, model.safetensors, vocab.json + merges.txt);
            adapters are PEFT directories (adapter_config.json, adapter_model.safetensors).
            Without --model, commands use the small GPT-2 that ships with liblora (\(Defaults.modelDescription)).
            """,
        subcommands: [
            Demo.self, Train.self, Generate.self, Eval.self, Merge.self, Compress.self, Combine.self, Extract.self, Inspect.self,
            Tokenize.self, Bench.self, InitModel.self, Convert.self, ExportGGUF.self, Serve.self,
        ],
        defaultSubcommand: nil)

    /// Parses, validates and runs: every error is one line on stderr
    /// (`lora: error: ...`) and a non-zero exit (64 for usage errors, 1 for
    /// failures of the work itself); `--help` prints the help on stdout.
    static func main() {
        // Past a file-size limit, writes then fail with EFBIG (a clear error) instead of killing the process.
        signal(SIGXFSZ, SIG_IGN)
        do {
            var command = try parseAsRoot(joinStopValues(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help, --version and the like.
                let text = fullMessage(for: error)
                if !text.isEmpty { say(text) }
                Foundation.exit(0)
            }
            let message = LoRACommand.message(for: error)
            if !message.isEmpty {
                // One line: the parser's own messages may span several.
                let oneLine = message.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
                    .filter { !$0.isEmpty }.joined(separator: "; ")
                stderrLine("lora: error: \(oneLine)")
            }
            Foundation.exit(code.rawValue)
        }
    }

    /// `--stop --` would end the options before the parser sees a value: pass it as `--stop=--`.
    static func joinStopValues(_ args: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < args.count {
            if args[i] == "--" { out += args[i...]; break }
            if args[i] == "--stop", i + 1 < args.count { out.append("--stop=" + args[i + 1]); i += 2; continue }
            out.append(args[i]); i += 1
        }
        return out
    }

    /// Runs a command body: errors become one line on stderr and exit code 1.
    static func run(_ body: () throws -> Void) throws {
        do { try body() } catch let e as LoRAError {
            stderrLine("lora: error: \(e)")
            throw ExitCode(1)
        }
    }
}

enum Defaults {
    /// The environment variable naming the model used without --model.
    static let modelVariable = "LORA_MODEL"
    static let modelName = "fortunes-gpt2"
    /// The model used without --model: $LORA_MODEL (or the older
    /// $LORA_DEFAULT_MODEL), else the copy installed beside the command
    /// (<prefix>/share/lora/fortunes-gpt2, by scripts/install.sh), else the
    /// source tree's models/fortunes-gpt2 above the executable (a build in
    /// the checkout). Found from where the command is, not where it was built.
    static var modelDirectory: String {
        let env = ProcessInfo.processInfo.environment
        for name in [modelVariable, "LORA_DEFAULT_MODEL"] { if let v = env[name], !v.isEmpty { return v } }
        for dir in executableDirectories() {
            var d = URL(fileURLWithPath: dir)
            for _ in 0..<6 {
                for candidate in ["share/lora/" + modelName, "models/" + modelName] {
                    let p = d.appendingPathComponent(candidate).path
                    if FileManager.default.fileExists(atPath: p + "/config.json") { return p }
                }
                d = d.deletingLastPathComponent()
            }
        }
        return "share/lora/" + modelName + " (not found; set \(modelVariable) or pass --model)"
    }

    /// The folder of the command as invoked (a link in <prefix>/bin) and of the file it resolves to.
    static func executableDirectories() -> [String] {
        var dirs: [String] = []
        let arg0 = CommandLine.arguments.first ?? ""
        if arg0.contains("/") {
            dirs.append(URL(fileURLWithPath: arg0).deletingLastPathComponent().path)
        } else {
            for p in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
                let c = String(p) + "/" + arg0
                if !arg0.isEmpty, FileManager.default.isExecutableFile(atPath: c) { dirs.append(String(p)); break }
            }
        }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            dirs.append(URL(fileURLWithPath: exe).deletingLastPathComponent().path)
        }
        return dirs
    }
    static let modelDescription =
        "models/fortunes-gpt2, a 4-layer GPT-2 pre-trained by this engine on Debian's fortunes; installed under <prefix>/share/lora; $LORA_MODEL overrides"
}

/// --threads, declared once for every command that computes.
struct ThreadOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Compute threads (0: OPENBLAS_NUM_THREADS or the CPU count).")
    var threads: Int = 0

    func validate() throws {
        guard (0...1024).contains(threads) else { throw ValidationError("--threads must be between 0 and 1024 (got \(threads))") }
    }

    func apply() { if threads > 0 { BLAS.threads = threads } }
}

/// Loads a model directory, with a hint when the folder is an adapter.
/// `dtype`: the weight matrices' storage (nil: as saved, else f32).
func loadModel(_ dir: String, dtype: WeightDType? = nil) throws -> Model {
    let fm = FileManager.default
    if !fm.fileExists(atPath: dir + "/config.json"), fm.fileExists(atPath: dir + "/" + Adapter.configFile) {
        throw LoRAError.invalidArgument("\(dir) is a PEFT adapter, not a model: pass it as --adapter \(dir)")
    }
    return try Model.load(directory: dir, dtype: dtype)
}

extension WeightDType: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

/// --dtype, declared once for every command that loads a model.
struct DTypeOption: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Storage of the base model's weight matrices (default: the dtype a converted model was saved in, else f32).",
            discussion: "bf16 and f16 halve the weights' memory, q8_0 (ggml's 8-bit blocks) takes about a quarter; see the README.",
            valueName: "dtype"))
    var dtype: WeightDType?
}

/// --kv-cache-dtype, for the commands that generate (a KV cache).
struct KVCacheOption: ParsableArguments {
    @Option(
        name: .customLong("kv-cache-dtype"),
        help: ArgumentHelp(
            "Storage of the cached keys and values: f32 (exact) or bf16 (half the cache's memory).", valueName: "dtype"))
    var kvCacheDType: WeightDType = .f32

    func validate() throws {
        guard kvCacheDType == .f32 || kvCacheDType == .bf16 else {
            throw ValidationError("--kv-cache-dtype must be f32 or bf16 (got \(kvCacheDType.rawValue))")
        }
    }

    func apply(to model: Model) throws { try model.setKVCacheDType(kvCacheDType) }
}

/// Options every model-using command shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "Model directory (default: the embedded model).")
    var model: String?

    @Option(name: .customLong("adapter"), help: "A PEFT adapter directory to apply, optionally with a scale: DIR[:SCALE]. Repeatable.")
    var adapters: [String] = []

    @OptionGroup var dtype: DTypeOption

    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        for spec in adapters { _ = try AdapterSpec.parse(spec) }
    }

    func load() throws -> Model {
        let model = try loadModel(model ?? Defaults.modelDirectory, dtype: dtype.dtype)
        threads.apply()
        for spec in adapters {
            let (dir, scale) = try AdapterSpec.parse(spec)
            try model.attach(try Adapter.load(directory: dir, modelConfig: model.config, name: dir), scale: scale)
        }
        return model
    }
}

enum AdapterSpec {
    /// DIR or DIR:SCALE (the part after the last ':' must parse as a number).
    static func parse(_ s: String) throws -> (String, Float) {
        if let i = s.lastIndex(of: ":"), let scale = Float(s[s.index(after: i)...]) {
            guard scale.isFinite else { throw ValidationError("--adapter \(s): the scale must be a finite number") }
            return (String(s[..<i]), scale)
        }
        return (s, 1)
    }
}

func stderrLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

func flushStdout(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

/// One line on stdout, unbuffered (progress lines and results stay in order on a pipe).
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }
