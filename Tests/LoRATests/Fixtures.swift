import Foundation
import LoRA

/// Paths of the committed fixtures (written by scripts/make_fixtures.py).
enum Fixtures {
    static let root: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }()
    static func path(_ name: String) -> String { root + "/" + name }

    static func expected(_ model: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: path("expected/\(model).safetensors"))
    }

    /// A fresh temporary directory.
    static func tempDir() throws -> String {
        let p = NSTemporaryDirectory() + "lora-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "length mismatch \(a.count) vs \(b.count)")
    var m: Float = 0
    for i in 0..<a.count { m = max(m, abs(a[i] - b[i])) }
    return m
}

extension Array where Element == Int {
    var tokenIDs: [TokenID] { map { TokenID($0) } }
}
