// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "liblora",
    products: [
        // The Swift API.
        .library(name: "LoRA", targets: ["LoRA"]),
        // liblora.so: the C ABI declared by include/lora.h.
        .library(name: "lora", type: .dynamic, targets: ["LoraCAPI"]),
        .executable(name: "lora-bench", targets: ["LoraBench"]),
    ],
    targets: [
        // Headers only; the libraries are loaded at run time (see CLoraSupport/blas.c).
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLAPACKE", pkgConfig: "lapacke",
                       providers: [.apt(["liblapacke-dev"])]),
        .target(name: "CLoraSupport", dependencies: ["COpenBLAS", "CLAPACKE"],
                cSettings: [.unsafeFlags(["-O3"])],
                linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("m")]),
        .target(name: "LoRA", dependencies: ["CLoraSupport"]),
        .target(name: "LoraCAPI", dependencies: ["LoRA"]),
        .executableTarget(name: "LoraBench", dependencies: ["LoRA"]),
        .testTarget(name: "LoRATests", dependencies: ["LoRA", "CLoraSupport"], exclude: ["Fixtures"]),
    ]
)
