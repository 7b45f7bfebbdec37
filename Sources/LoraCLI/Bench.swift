import ArgumentParser
import Foundation
import LoRA

/// Speed of the engine on a GPT-2 124M-shaped model with random weights, one
/// JSON line per measurement (medians). Compare with scripts/bench_transformers.py
/// and scripts/bench_peft.py run on the same machine (scripts/bench.sh runs both).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Benchmark inference, LoRA training, the adapter algebra or PiSSA/OLoRA initialisation on a GPT-2 124M-shaped model (random weights).",
        discussion:
            "Run one measurement per process so that peak RSS is its own. --threads sets the compute threads (OPENBLAS_NUM_THREADS is ignored)."
    )

    @Argument(help: "inference, train, bound, svd, init or engine") var kind = "inference"
    @Option(help: "Compute threads.") var threads = 2
    @Option(help: "Prompt tokens (inference).") var prompt = 512
    @Option(help: "Decoded tokens (inference).") var decode = 128
    @Option(help: "Batch size (train).") var batch = 4
    @Option(help: "Block size (train).") var block = 256
    @Option(help: "LoRA rank (train).") var r = 8
    @Option(help: "Timed training steps.") var steps = 5
    @Option(help: "Repeats (inference, init).") var repeats = 3
    @Option(help: "init: pissa, pissa_niter_N or olora, on c_attn of every layer.") var initLoraWeights = "pissa_niter_4"
    @Flag(help: "Gradient checkpointing (train).") var gradientCheckpointing = false
    @Flag(help: "DoRA adapters (train, engine).") var useDora = false
    @Flag(help: "GPT-2's own dropouts, 0.1 each (train).") var modelDropout = false
    @Option(help: "Concurrent requests, comma-separated (engine).") var sequences = "16,64"
    @Option(help: "Prompt tokens per request (engine).") var enginePrompt = 64
    @Option(help: "New tokens per request (engine).") var newTokens = 128
    @Option(help: "Requests that join a busy engine, for time to first token (engine).") var joins = 32
    @Option(help: "Storage of the base weight matrices: f32, bf16, f16 or q8_0 (inference, train, bound, engine).")
    var dtype: WeightDType = .f32
    @OptionGroup var kvCache: KVCacheOption

    func run() throws {
        try LoRACommand.run {
            guard threads >= 1, prompt >= 1, prompt <= 1024, decode >= 1, batch >= 1, block >= 2, block <= 1024, r >= 1, steps >= 1,
                repeats >= 1, joins >= 1
            else {
                throw LoRAError.invalidArgument("bench options out of range")
            }
            try BLAS.load()
            BLAS.threads = threads
            switch kind {
            case "inference": try inference()
            case "train": try train()
            case "bound": try bound()
            case "svd": try svd()
            case "init": try initialization()
            case "engine": try engineBench()
            default: throw LoRAError.invalidArgument("bench kind must be inference, train, bound, svd, init or engine")
            }
        }
    }

    func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
    func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }
    func peakRSSGiB() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) * 1024 / 1_073_741_824
    }

    func inference() throws {
        let model = try Model.random(config: GPT2Config(), seed: 1, dtype: dtype)
        try kvCache.apply(to: model)
        var rng = SplitMix64(seed: 3)
        let ids = (0..<prompt).map { _ in TokenID(rng.next() % 50257) }
        var prefill: [Double] = []
        // Logits for every position into one buffer, as lora_logits does with
        // the caller's (no KV cache kept, as transformers' use_cache=False).
        var logits = [Float](repeating: 0, count: prompt * model.config.vocabSize)
        for _ in 0..<repeats {
            let t0 = now()
            try logits.withUnsafeMutableBufferPointer { try model.logits(ids, into: $0) }
            prefill.append(Double(prompt) / (now() - t0))
        }
        var dec: [Double] = []
        for _ in 0..<repeats {
            let s = try InferenceSession(model: model, batch: 1, capacity: min(1024, 16 + decode))
            _ = try s.forward(Array(ids.prefix(16)), batch: 1, lastOnly: true)
            var tok: TokenID = 50
            let t0 = now()
            for _ in 0..<min(decode, 1024 - 16) {
                let l = try s.forward([tok], batch: 1, lastOnly: true)
                var best = 0
                for i in 1..<l.count where l[i] > l[best] { best = i }
                tok = TokenID(best)
            }
            dec.append(Double(min(decode, 1024 - 16)) / (now() - t0))
        }
        // The machine's bounds, measured after the runs (same process, same kernels).
        let pb = try MachineBound.prefill(model.config, M: prompt, threads: threads).tokensPerS
        let db = try MachineBound.decode(model)
        say(
            String(
                format:
                    "{\"engine\":\"liblora\",\"bench\":\"prefill\",\"dtype\":\"%@\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"tokens\":%d,\"tokens_per_s\":%.1f,\"bound_tokens_per_s\":%.1f,\"fraction_of_bound\":%.3f}",
                dtype.rawValue, BLAS.coreName, BLAS.sgemmLibrary, threads, prompt, median(prefill), pb, median(prefill) / pb))
        say(
            String(
                format:
                    "{\"engine\":\"liblora\",\"bench\":\"decode\",\"dtype\":\"%@\",\"kv_cache_dtype\":\"%@\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"tokens\":%d,\"tokens_per_s\":%.1f,\"bound_tokens_per_s\":%.1f,\"weights_gb_per_s\":%.1f,\"fraction_of_bound\":%.3f}",
                dtype.rawValue, kvCache.kvCacheDType.rawValue, BLAS.coreName, BLAS.sgemmLibrary, threads, decode, median(dec),
                db.tokensPerS, db.gbPerS,
                median(dec) / db.tokensPerS))
    }

    func train() throws {
        let model = try Model.random(config: GPT2Config(), seed: 1, dtype: dtype)
        var lc = LoRAConfig()
        lc.r = r; lc.loraAlpha = 16; lc.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc"])
        lc.useDoRA = useDora
        let adapter = try Adapter(config: lc, modelConfig: model.config)
        try adapter.initialize(from: model, seed: 1)
        var tc = TrainerParams()
        tc.batchSize = batch; tc.blockSize = block; tc.learningRate = 1e-4; tc.maxSteps = steps + 1
        tc.gradientCheckpointing = gradientCheckpointing
        tc.modelDropout = modelDropout
        let trainer = try Trainer(model: model, adapter: adapter, config: tc)
        var rng = SplitMix64(seed: 5)
        func makeBatch() -> [[TokenID]] { (0..<batch).map { _ in (0..<block).map { _ in TokenID(rng.next() % 50257) } } }
        _ = try trainer.step(ids: makeBatch())  // warm-up
        var rates: [Double] = []
        for _ in 0..<steps {
            let ids = makeBatch()
            let t0 = now()
            _ = try trainer.step(ids: ids)
            rates.append(Double(batch * block) / (now() - t0))
        }
        let rss = peakRSSGiB()
        let tb = try MachineBound.training(model.config, batch: batch, block: block, threads: threads).tokensPerS
        let sorted = rates.sorted()
        say(
            String(
                format:
                    "{\"engine\":\"liblora\",\"bench\":\"lora_train\",\"use_dora\":%@,\"model_dropout\":%@,\"dtype\":\"%@\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"batch\":%d,\"block\":%d,\"r\":%d,\"trainable\":%d,\"tokens_per_s\":%.1f,\"min_tokens_per_s\":%.1f,\"max_tokens_per_s\":%.1f,\"peak_rss_gib\":%.3f,\"bound_tokens_per_s\":%.1f,\"fraction_of_bound\":%.3f}",
                useDora ? "true" : "false", modelDropout ? "true" : "false", dtype.rawValue, BLAS.coreName, BLAS.sgemmLibrary,
                threads, batch, block, r, adapter.parameterCount, median(rates),
                sorted.first ?? 0,
                sorted.last ?? 0, rss,
                tb, median(rates) / tb))
    }

    /// The machine's own limits on GPT-2 124M's products: GFLOP/s per shape
    /// on 1 and `threads` workers (M = prompt), the bounds they imply, and the
    /// weight sweep that bounds decode.
    func bound() throws {
        let config = GPT2Config()
        for t in Set([1, threads]).sorted() {
            let p = try MachineBound.prefill(config, M: prompt, threads: t)
            let shapes = (MachineBound.shapes(config).map(\.name) + ["attention"]).map {
                String(format: "\"%@\":%.1f", $0, p.shapes[$0] ?? 0)
            }.joined(separator: ",")
            let train = try MachineBound.training(config, batch: batch, block: block, threads: t)
            let liblora = try MachineBound.libloraAttentionRate(config, T: block, threads: t)
            say(
                String(
                    format:
                        "{\"engine\":\"liblora\",\"bench\":\"bound\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"M\":%d,\"sgemm_gflop_per_s\":{%@},\"prefill_bound_tokens_per_s\":%.1f,\"train_M\":%d,\"lora_train_bound_tokens_per_s\":%.1f,\"train_attention_gflop_per_s\":{\"sgemm\":%.1f,\"liblora\":%.1f}}",
                    BLAS.coreName, BLAS.sgemmLibrary, t, prompt, shapes, p.tokensPerS, batch * block, train.tokensPerS,
                    train.attention / 1e9,
                    liblora / 1e9))
        }
        let model = try Model.random(config: config, seed: 1, dtype: dtype)
        for t in Set([1, threads]).sorted() {
            BLAS.threads = t
            let d = try MachineBound.decode(model)
            say(
                String(
                    format:
                        "{\"engine\":\"liblora\",\"bench\":\"bound\",\"dtype\":\"%@\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"weights_gb_per_s\":%.1f,\"decode_bound_tokens_per_s\":%.1f}",
                    dtype.rawValue, BLAS.coreName, BLAS.sgemmLibrary, t, d.gbPerS, d.tokensPerS))
        }
        BLAS.threads = threads
    }

    /// The adapter algebra on GPT-2 124M shapes: compress r=64 (all four module
    /// types, 12 layers) to r=16; combine two r=64 adapters by svd to r=16;
    /// extract a rank-16 c_attn adapter from a full fine-tune (dense SVDs).
    func svd() throws {
        let config = GPT2Config()
        func randomAdapter(seed: UInt64) throws -> Adapter {
            var lc = LoRAConfig(); lc.r = 64; lc.loraAlpha = 128
            lc.targetModules = .names(["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
            lc.initLoraWeights = .random
            let a = try Adapter(config: lc, modelConfig: config)
            try a.initialize(seed: seed)
            return a
        }
        let a = try randomAdapter(seed: 1)
        let b = try randomAdapter(seed: 2)
        var t0 = now()
        _ = try a.compressed(to: .fixed(16))
        let compress = now() - t0
        t0 = now()
        _ = try Adapter.combine([(adapter: a, weight: 0.5), (adapter: b, weight: 0.5)], method: .svd(rank: 16, clamp: nil))
        let combine = now() - t0
        let base = try Model.random(config: config, seed: 1)
        let tuned = try Model.random(config: config, seed: 1)
        var rng = SplitMix64(seed: 9)
        for l in tuned.weights.layers {
            guard let w = l.attnW.f32 else { continue }
            for i in 0..<(768 * 2304) { w[i] += 0.001 * rng.nextGaussian() }
        }
        t0 = now()
        _ = try Adapter.extract(base: base, tuned: tuned, targetModules: .names(["c_attn"]), rank: .fixed(16))
        let extract = now() - t0
        say(
            String(
                format:
                    "{\"engine\":\"liblora\",\"bench\":\"svd\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"compress_r64_to_r16_48_modules_s\":%.3f,\"combine_svd_2xr64_to_r16_48_modules_s\":%.3f,\"extract_r16_c_attn_12_layers_s\":%.3f}",
                BLAS.coreName, BLAS.sgemmLibrary, threads, compress, combine, extract))
    }

    /// Adapter initialisation from the base weights (c_attn of all layers): seconds, median of `repeats`.
    func initialization() throws {
        var lc = LoRAConfig()
        lc.r = r; lc.loraAlpha = Double(2 * r); lc.targetModules = .names(["c_attn"])
        guard let i = LoRAConfig.Initialization(peftName: initLoraWeights), i != .gaussian else {
            throw LoRAError.invalidArgument("--init-lora-weights must be pissa, pissa_niter_N or olora")
        }
        lc.initLoraWeights = i
        var times: [Double] = []
        var modules = 0
        for i in 0..<repeats {
            let model = try Model.random(config: GPT2Config(), seed: UInt64(1 + i))
            let adapter = try Adapter(config: lc, modelConfig: model.config)
            let t0 = now()
            try adapter.initialize(from: model, seed: 1)
            times.append(now() - t0)
            modules = adapter.slots.count
        }
        say(
            String(
                format:
                    "{\"engine\":\"liblora\",\"bench\":\"init\",\"init\":\"%@\",\"core\":\"%@\",\"sgemm\":\"%@\",\"threads\":%d,\"modules\":%d,\"r\":%d,\"seconds\":%.3f,\"min_seconds\":%.3f}",
                initLoraWeights, BLAS.coreName, BLAS.sgemmLibrary, threads, modules, r, median(times), times.min() ?? 0))
    }
}
