import Foundation
// swift-tools-version: 6.0
import PackageDescription

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path

let package = Package(
    name: "liblora",
    products: [
        // The Swift API.
        .library(name: "LoRA", targets: ["LoRA"]),
        // liblora.so: the C ABI declared by include/lora.h.
        .library(name: "lora", type: .dynamic, targets: ["LoraCAPI"]),
        // The `lora` command line (named lora-cli: SwiftPM skips an executable
        // named like the library product; scripts/install.sh links it as `lora`).
        .executable(name: "lora-cli", targets: ["LoraCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `lora serve` only (the LoraServer target): LoRA and liblora.so never link them.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // OpenBLAS and LAPACKE are not linked: CLoraSupport loads them at run
        // time (dlopen) after choosing OpenBLAS's kernel set, which is only
        // possible before the library's constructor runs. Their ABI is
        // declared in CLoraSupport/blas_abi.h, checked against the system
        // headers by scripts/check_blas_abi.c (run by scripts/test.sh).
        // No unsafeFlags here: SwiftPM refuses them in a package used as a
        // versioned dependency. Release builds compile C with -O2 (measured:
        // the kernels are as fast as with the former -O3; see the commit).
        .target(
            name: "CLoraSupport",
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("m")]),
        .target(name: "LoRA", dependencies: ["CLoraSupport"]),
        // include/lora.h, compiled for the C ABI target (Sources/CLoraABI/include/lora.h links to it).
        .target(name: "CLoraABI"),
        // The @_cdecl entry points of liblora.so: validate, convert, call the core.
        .target(
            name: "LoraCAPI", dependencies: ["LoRA", "CLoraABI", "CLoraSupport"], exclude: ["exports.map"],
            linkerSettings: [
                .unsafeFlags([
                    "-Xlinker", "--version-script=\(packageRoot)/Sources/LoraCAPI/exports.map",
                    "-Xlinker", "-soname=liblora.so.1",
                ])
            ]),
        // Open MPI's C API (Debian: libopenmpi-dev), for data-parallel `lora train`
        // under mpirun. Linked only into the command: liblora.so never needs libmpi.
        .systemLibrary(
            name: "CMPI", pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev"])]),
        // The OpenAI-compatible HTTP server of `lora serve`: Hummingbird (SwiftNIO),
        // swift-metrics and swift-prometheus stay in this target and the command.
        .target(
            name: "LoraServer",
            dependencies: [
                "LoRA", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .executableTarget(
            name: "LoraCLI",
            dependencies: [
                "LoRA", "CMPI", "LoraServer", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "LoRATests", dependencies: ["LoRA", "CLoraSupport"], exclude: ["Fixtures"]),
    ]
)
