// lora-bench: speed of the engine on a GPT-2 124M-shaped model with random
// weights. Prints one JSON line per measurement (medians of --repeat runs).
//
//   lora-bench inference [--threads 2] [--prompt 512] [--decode 128] [--repeat 3]
//   lora-bench train [--threads 2] [--batch 4] [--block 256] [--r 8] [--steps 5] [--checkpointing]
// (build with `swift build -c release --product lora-bench`; run one
// measurement per process so peak RSS belongs to it).
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

func peakRSSBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}

func trainBench() throws {
    let threads = arg("--threads", 2)
    let batch = arg("--batch", 4), block = arg("--block", 256), r = arg("--r", 8), steps = max(1, arg("--steps", 5))
    try BLAS.load()
    BLAS.threads = threads
    let model = try Model.random(config: GPT2Config(), seed: 1)
    var lc = LoraConfig()
    lc.r = r; lc.loraAlpha = 16; lc.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc"])
    let adapter = try Adapter(config: lc, modelConfig: model.config)
    try adapter.initialize(seed: 1)
    var tc = TrainingConfig()
    tc.batchSize = batch; tc.blockSize = block; tc.learningRate = 1e-4; tc.maxSteps = steps + 1
    tc.gradientCheckpointing = CommandLine.arguments.contains("--checkpointing")
    let trainer = try Trainer(model: model, adapter: adapter, config: tc)
    var rng = SplitMix64(seed: 5)
    func makeBatch() -> [[TokenID]] { (0..<batch).map { _ in (0..<block).map { _ in TokenID(rng.next() % 50257) } } }
    _ = try trainer.step(ids: makeBatch())  // warm-up step (not timed)
    var rates: [Double] = []
    for _ in 0..<steps {
        let ids = makeBatch()
        let t0 = now()
        _ = try trainer.step(ids: ids)
        rates.append(Double(batch * block) / (now() - t0))
    }
    print(String(format: "{\"bench\":\"lora_train\",\"core\":\"%@\",\"threads\":%d,\"batch\":%d,\"block\":%d,\"r\":%d,\"trainable\":%d,\"tokens_per_s\":%.1f,\"peak_rss_gib\":%.3f}",
                 BLAS.coreName, threads, batch, block, r, adapter.parameterCount, median(rates), Double(peakRSSBytes()) / 1073741824))
}

do {
    if CommandLine.arguments.count > 1 && CommandLine.arguments[1] == "train" {
        try trainBench()
        exit(0)
    }
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
