import CLoraSupport
import Foundation
import Testing

@testable import LoRA

@Test func blasLoadsAndReportsCore() throws {
    try BLAS.load()
    #expect(!BLAS.coreName.isEmpty)
}

/// oneDNN runs the matrix products where libdnnl.so.2 is installed;
/// `LORA_SGEMM=openblas` (scripts/test.sh runs the suite with it too), or
/// no oneDNN, leaves them to OpenBLAS.
@Test func sgemmLibraryFollowsTheEnvironment() throws {
    try BLAS.load()
    let dnnl = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL)
    defer { if let dnnl { dlclose(dnnl) } }
    let openblas = ProcessInfo.processInfo.environment["LORA_SGEMM"] == "openblas" || dnnl == nil
    #expect(BLAS.sgemmLibrary == (openblas ? "OpenBLAS" : "oneDNN"))
}
