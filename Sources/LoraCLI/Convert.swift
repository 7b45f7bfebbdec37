import ArgumentParser
import Foundation
import LoRA

/// `lora convert`: a model with its weight matrices stored in another dtype,
/// saved so later loads need no conversion.
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Store a model's weight matrices as bf16, f16 or q8_0 (or back to f32) and save it.",
        discussion: """
            Writes config.json + model.safetensors (+ tokenizer files) into --output-dir, each file atomically:
            bf16/f16 as BF16/F16 tensors, q8_0 as <name>.q8_0 (I8) + <name>.q8_0_scale (F16) tensors (see the README,
            "Reduced-precision base weights"). Any command loads the result in its dtype without --dtype.
            """)

    @Option(help: "Model directory (default: the embedded model).") var model: String?
    @Option(help: "Storage of the weight matrices in the output.", completion: nil) var dtype: WeightDType
    @Option(help: "Output directory for the converted model.") var outputDir: String

    func run() throws {
        try LoRACommand.run {
            let dir = model ?? Defaults.modelDirectory
            let m = try loadModel(dir, dtype: dtype)
            try m.save(directory: outputDir)
            let bytes = m.weights.matrices.values.reduce(0) { $0 + $1.dataBytes + 2 * $1.scaleCount }
            say(
                String(
                    format: "%@ → %@: weight matrices as %@, %.1f MiB", dir as NSString, outputDir as NSString, dtype.rawValue,
                    Double(bytes) / 1_048_576))
        }
    }
}
