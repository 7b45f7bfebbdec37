import ArgumentParser
import Foundation
import LoRA

extension GGUFDType: ExpressibleByArgument {}

struct ExportGGUF: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-gguf",
        abstract: "Write the model, or an adapter for it, as GGUF for llama.cpp.",
        discussion: """
            Without --adapter: the model as a GGUF model (architecture gpt2, llama.cpp's tensor names, the tokenizer), \
            for llama-cli -m FILE. With --adapter: the adapter as a GGUF LoRA for that model, for llama-cli --lora FILE. \
            GGUF v3, 32-byte alignment, written atomically.
            """)

    @Option(help: "Model directory (default: the embedded model). With --adapter, the model the adapter was made for.")
    var model: String?
    @Option(help: "A PEFT adapter directory: export it as a GGUF LoRA instead of the model.") var adapter: String?
    @Option(help: "Output file (.gguf).") var out: String
    @Option(
        help: "Tensor type of the matrices: \(GGUFDType.allCases.map(\.rawValue).joined(separator: ", ")) (LayerNorms and biases stay f32)."
    )
    var dtype: GGUFDType = .f32

    func run() throws {
        try LoRACommand.run {
            let dir = model ?? Defaults.modelDirectory
            let t0 = Date()
            if let adapter {
                let config = try loadModel(dir).config
                try Adapter.exportGGUF(directory: adapter, base: config, path: out, dtype: dtype)
            } else {
                try loadModel(dir).exportGGUF(path: out, dtype: dtype)
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            say(
                String(
                    format: "wrote %@ (%@ %@, %.1f MB) in %.2f s", out as NSString, adapter == nil ? "model" : "LoRA adapter",
                    dtype.rawValue, Double(size) / 1e6, Date().timeIntervalSince(t0)))
        }
    }
}
