import Testing
import CLoraSupport
@testable import LoRA

@Test func blasLoadsAndReportsCore() throws {
    try BLAS.load()
    #expect(!BLAS.coreName.isEmpty)
}
