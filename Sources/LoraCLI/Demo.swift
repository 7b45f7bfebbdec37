import ArgumentParser
import Foundation
import LoRA

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The main job: LoRA-fine-tune the embedded model on Star Trek quotes, compare, save, merge.")
    func run() throws {
        try Lora.run { throw LoraError.unsupported("demo: not ready yet") }
    }
}
