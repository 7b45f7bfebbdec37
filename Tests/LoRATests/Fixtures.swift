import Foundation
import LoRA

/// Paths of the committed fixtures (written by scripts/make_fixtures.py).
enum Fixtures {
    static let root: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }()
    static func path(_ name: String) -> String { root + "/" + name }

    /// The fixture's two greedy runs as engine requests (greedy, no stop at
    /// <|endoftext|>, as many new tokens as transformers generated), with the
    /// whole sequences transformers produced.
    static func greedyRequests(_ exp: SafeTensorsFile) throws -> (requests: [EngineRequest], wants: [[TokenID]]) {
        var requests: [EngineRequest] = []
        var wants: [[TokenID]] = []
        for k in 0..<2 {
            let prompt = try exp.ints("greedy\(k).prompt").tokenIDs
            let want = try exp.ints("greedy\(k).output").tokenIDs
            var params = SamplingParams.greedy
            params.maxNewTokens = want.count - prompt.count
            params.stopAtEndOfText = false
            requests.append(EngineRequest(prompt: prompt, params: params))
            wants.append(want)
        }
        return (requests, wants)
    }

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
