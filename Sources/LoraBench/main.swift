// lora-bench: speed of the engine on a GPT-2 124M-shaped model with random
// weights. Prints one JSON line per measurement (medians of --repeat runs).
//
//   swift run -c release lora-bench [inference] [--threads 2] [--prompt 512] [--decode 128] [--repeat 3]
import Foundation
import LoRA

func arg(_ name: String, _ def: Int) -> Int {
    let a = CommandLine.arguments
    if let i = a.firstIndex(of: name), i + 1 < a.count, let v = Int(a[i + 1]) { return v }
    return def
}

func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

do {
    let threads = arg("--threads", 2)
    let promptLen = arg("--prompt", 512)
    let decodeLen = arg("--decode", 128)
    let repeats = max(1, arg("--repeat", 3))
    try BLAS.load()
    BLAS.threads = threads
    let config = GPT2Config()
    let model = try Model.random(config: config, seed: 1)
    print("{\"core\":\"\(BLAS.coreName)\",\"initial_core\":\"\(BLAS.initialCoreName)\",\"threads\":\(threads),\"params\":\(model.parameterCount)}")
    var rng = SplitMix64(seed: 3)
    let prompt = (0..<promptLen).map { _ in TokenID(rng.next() % 50257) }

    // Prompt processing: logits for every position.
    var prefill: [Double] = []
    for _ in 0..<repeats {
        let s = try InferenceSession(model: model, batch: 1, capacity: promptLen)
        let t0 = now()
        _ = try s.forward(prompt, batch: 1, lastOnly: false)
        prefill.append(Double(promptLen) / (now() - t0))
    }
    print(String(format: "{\"bench\":\"prefill\",\"tokens\":%d,\"tokens_per_s\":%.1f}", promptLen, median(prefill)))

    // Decode, batch 1, with the KV cache, after a 16-token prompt.
    var decode: [Double] = []
    for _ in 0..<repeats {
        let s = try InferenceSession(model: model, batch: 1, capacity: 16 + decodeLen)
        _ = try s.forward(Array(prompt[0..<16]), batch: 1, lastOnly: true)
        let t0 = now()
        var tok: TokenID = 50
        for _ in 0..<decodeLen {
            let l = try s.forward([tok], batch: 1, lastOnly: true)
            var best = 0
            for i in 1..<l.count where l[i] > l[best] { best = i }
            tok = TokenID(best)
        }
        decode.append(Double(decodeLen) / (now() - t0))
    }
    print(String(format: "{\"bench\":\"decode\",\"tokens\":%d,\"tokens_per_s\":%.1f}", decodeLen, median(decode)))
} catch {
    FileHandle.standardError.write(("lora-bench: \(error)\n").data(using: .utf8)!)
    exit(1)
}
