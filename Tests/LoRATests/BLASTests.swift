import CLoraSupport
import Testing

@testable import LoRA

@Test func blasLoadsAndReportsCore() throws {
    try BLAS.load()
    #expect(!BLAS.coreName.isEmpty)
}
