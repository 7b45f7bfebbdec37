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
        subcommands: [Demo.self, Train.self, Generate.self, Eval.self, Merge.self, Compress.self, Combine.self, Extract.self, Inspect.self, Tokenize.self, Bench.self, InitModel.self],
        defaultSubcommand: nil)

    /// Runs a command body: errors become one line on stderr and exit code 1.
    static func run(_ body: () throws -> Void) throws {
        // Past a file-size limit, writes then fail with EFBIG (a clear error) instead of killing the process.
        signal(SIGXFSZ, SIG_IGN)
        do { try body() } catch let e as LoRAError {
            FileHandle.standardError.write(Data("lora: error: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }
}

enum Defaults {
    /// The model that ships with the project: models/fortunes-gpt2 in the source tree
    /// (found from this file's compile-time path), or $LORA_DEFAULT_MODEL.
    static var modelDirectory: String {
        if let env = ProcessInfo.processInfo.environment["LORA_DEFAULT_MODEL"], !env.isEmpty { return env }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent("models/fortunes-gpt2").path
    }
    static let modelDescription = "models/fortunes-gpt2, a 4-layer GPT-2 pre-trained by this engine on Debian's fortunes"
}

/// Options every model-using command shares.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "Model directory (default: the embedded model).")
    var model: String?

    @Option(name: .customLong("adapter"), help: "A PEFT adapter directory to apply, optionally with a scale: DIR[:SCALE]. Repeatable.")
    var adapters: [String] = []

    @Option(name: .long, help: "Compute threads (0: OPENBLAS_NUM_THREADS or the CPU count).")
    var threads: Int = 0

    func load() throws -> Model {
        if threads < 0 { throw LoRAError.invalidArgument("--threads must be >= 0") }
        let model = try Model.load(directory: model ?? Defaults.modelDirectory)
        if threads > 0 { BLAS.threads = threads }
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
            guard scale.isFinite else { throw LoRAError.invalidArgument("adapter scale in \(s) must be finite") }
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
