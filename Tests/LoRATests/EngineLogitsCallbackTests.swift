import Foundation
import Testing

@testable import LoRA

/// `EngineRequest.onLogits`: the row a request sees is the model's logits for
/// its next token (what the server's log-probabilities are computed from),
/// one call per new token, before the token callback. In the engine suite: it
/// attaches to the suite's model, so it must not run beside the other engine
/// tests (as a suite of its own it once did, and a solo run there saw its adapter).
extension EngineTests {
    @Test func onLogitsSeesTheRowOfEachNewToken() throws {
        let model = EngineTests.model
        let (a, _) = EngineTests.adapters
        let engine = try Engine(model: model)
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 5
        sp.stopAtEndOfText = false
        let prompt = EngineTests.prompt(3, length: 7)
        final class Log: @unchecked Sendable {
            var rows: [[Float]] = []
            var order: [String] = []
            var tokens: [TokenID] = []
        }
        let log = Log()
        var request = EngineRequest(prompt: prompt, adapters: [AdapterUse(a, scale: 0.5)], params: sp) { t, _ in
            log.order.append("token")
            log.tokens.append(t)
            return .continue
        }
        request.onLogits = { row in
            log.order.append("logits")
            log.rows.append(Array(row))
        }
        // A second request without the callback runs in the same steps.
        _ = try engine.submit(EngineRequest(prompt: EngineTests.prompt(4, length: 5), params: sp))
        _ = try engine.submit(request)
        try engine.runUntilDone()
        #expect(log.order == Array(repeating: ["logits", "token"], count: 5).flatMap { $0 })
        #expect(log.rows.count == 5 && log.rows.allSatisfy { $0.count == model.config.vocabSize })
        // Each row is the solo model's logits after prompt + the tokens before it.
        for (i, row) in log.rows.enumerated() {
            let want = try EngineTests.soloLogits(prompt + log.tokens.prefix(i), [AdapterUse(a, scale: 0.5)])
            let diff = zip(row, want).map { abs($0 - $1) }.max() ?? 0
            #expect(diff <= engineLogitTolerance, "token \(i): max difference \(diff)")
            // Greedy: the token picked is the row's argmax.
            #expect(row.indices.max { row[$0] < row[$1] } == Int(log.tokens[i]))
        }
    }
}
