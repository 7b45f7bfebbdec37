import Foundation
// swift-tools-version: 6.0
// libFuzzer harnesses for liblora's parsers. Separate from the main package so
// that its Package.swift stays free of fuzzing flags. Build and run with
// scripts/fuzz.sh (which passes -sanitize=fuzzer,address to every Swift target,
// so the LoRA module is instrumented too).
import PackageDescription

// SwiftPM names a path dependency after its directory: the repository's.
let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let lora = Target.Dependency.product(name: "LoRA", package: repository.lastPathComponent)

let harnesses = ["safetensors", "config", "adapter_config", "vocab_merges", "tokenizer_json", "bpe", "jsonl", "json"]

func targetName(_ h: String) -> String {
    "Fuzz" + h.split(separator: "_").map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
}

let package = Package(
    name: "liblora-fuzz",
    products: harnesses.map { .executable(name: targetName($0), targets: [targetName($0)]) },
    dependencies: [.package(path: repository.path)],
    targets: [
        .target(name: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", lora]),
    ]
        + harnesses.map {
            // main.swift hands LLVMFuzzerTestOneInput to libFuzzer's driver.
            .executableTarget(
                name: targetName($0),
                dependencies: ["FuzzSupport", lora],
                path: "Sources/\(targetName($0))")
        }
)
