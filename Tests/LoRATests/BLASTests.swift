import CLoraSupport
import Foundation
import Testing

@testable import LoRA

@Test func blasLoadsAndReportsCore() throws {
    try BLAS.load()
    #expect(!BLAS.coreName.isEmpty)
}

/// `LORA_SGEMM=onednn` (scripts/test.sh runs the suite with it too) loads
/// oneDNN for the matrix products; without it, OpenBLAS runs them.
@Test func sgemmLibraryFollowsTheEnvironment() throws {
    try BLAS.load()
    let want = ProcessInfo.processInfo.environment["LORA_SGEMM"] == "onednn" ? "oneDNN" : "OpenBLAS"
    #expect(BLAS.sgemmLibrary == want)
}
