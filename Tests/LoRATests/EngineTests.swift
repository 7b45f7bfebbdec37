import Foundation
import Testing

@testable import LoRA

/// Logits of a sequence in a mixed batch against the same sequence run alone:
/// the base products run over a different number of rows (OpenBLAS blocks
/// them differently), so sums differ in the last bits; 1e-4 is the issue's bound.
let engineLogitTolerance: Float = 1e-4

/// The batched engine against today's path (attach + generate, one sequence at a time).
@Suite(.serialized) struct EngineTests {
    static let model: Model = { try! Model.load(directory: Fixtures.path("gpt2-tok")) }()

    /// Two random adapters on all four module types (B non-zero, so each changes the output).
    static let adapters: (Adapter, Adapter) = {
        func make(_ seed: UInt64, r: Int, name: String) -> Adapter {
            var cfg = LoRAConfig()
            cfg.r = r
            cfg.loraAlpha = Double(2 * r)
            cfg.targetModules = .names(["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"])
            cfg.initLoraWeights = .random
            let a = try! Adapter(config: cfg, modelConfig: model.config, name: name)
            try! a.initialize(from: model, seed: seed)
            return a
        }
        return (make(11, r: 4, name: "a"), make(12, r: 8, name: "b"))
    }()

    /// The adapter sets of the test: none, a, b, a + b·0.5.
    static func sets() -> [[AdapterUse]] {
        let (a, b) = adapters
        return [[], [AdapterUse(a)], [AdapterUse(b, scale: 1.5)], [AdapterUse(a), AdapterUse(b, scale: 0.5)]]
    }

    /// Generation alone, through attach/detach.
    static func solo(_ prompt: [TokenID], _ set: [AdapterUse], _ params: SamplingParams) throws -> GenerationResult {
        for u in set { try model.attach(u.adapter, scale: u.scale) }
        defer { for u in set { try? model.detach(u.adapter) } }
        return try model.generate(prompt: prompt, params: params)
    }

    static func soloLogits(_ ids: [TokenID], _ set: [AdapterUse]) throws -> [Float] {
        for u in set { try model.attach(u.adapter, scale: u.scale) }
        defer { for u in set { try? model.detach(u.adapter) } }
        let V = model.config.vocabSize
        let all = try model.logits(ids)
        return Array(all[(ids.count - 1) * V..<ids.count * V])
    }

    static func prompt(_ k: Int, length: Int) -> [TokenID] {
        (0..<length).map { TokenID((k * 131 + $0 * 17 + 3) % 1000) }
    }

    @Test func mixedBatchMatchesSoloRuns() throws {
        let model = Self.model
        var p = EngineParams()
        p.maxSequences = 6  // fewer slots than requests: the rest queue and join later
        p.maxTokensPerStep = 24  // long prompts arrive in chunks
        let engine = try Engine(model: model, params: p)
        let sets = Self.sets()
        struct Job { var prompt: [TokenID]; var set: Int; var params: SamplingParams; var id: Int64 = 0; var streamed: [TokenID] = [] }
        var jobs: [Job] = []
        for k in 0..<10 {
            var sp = k % 3 == 2 ? SamplingParams() : SamplingParams.greedy
            sp.seed = UInt64(100 + k)
            sp.topK = k % 2 == 0 ? 0 : 20
            sp.maxNewTokens = 6 + k % 4
            sp.stopAtEndOfText = false
            jobs.append(Job(prompt: Self.prompt(k, length: 3 + (k * 7) % 30), set: k % sets.count, params: sp))
        }
        let streams = StreamBox(count: jobs.count)
        // The first six start together; the rest join while those decode.
        func submit(_ i: Int) throws {
            let box = streams
            jobs[i].id = try engine.submit(
                EngineRequest(prompt: jobs[i].prompt, adapters: sets[jobs[i].set], params: jobs[i].params) { t, _ in
                    box.append(i, t); return .continue
                })
        }
        for i in 0..<6 { try submit(i) }
        _ = try engine.step()
        _ = try engine.step()
        for i in 6..<10 { try submit(i) }
        // A request cancelled mid-way, the others undisturbed.
        var cancelled = Job(prompt: Self.prompt(42, length: 9), set: 3, params: .greedy)
        cancelled.params.maxNewTokens = 30
        cancelled.id = try engine.submit(EngineRequest(prompt: cancelled.prompt, adapters: sets[3], params: cancelled.params))
        var steps = 0
        var reported: [Int64] = []
        while engine.pendingCount > 0 {
            let r = try engine.step()
            reported += r.finished
            steps += 1
            let c = try engine.state(cancelled.id)
            if c.state == .running && c.tokenCount >= 2 {
                try engine.cancel(cancelled.id)  // mid-way, between steps: ends at once
                #expect(try engine.state(cancelled.id).state == .cancelled)
            }
            #expect(r.rows <= p.maxTokensPerStep)
        }
        #expect(reported.sorted() == jobs.map(\.id).sorted())
        // Every set is forgotten with its last request.
        #expect(engine.liveAdapterSets == 0)
        let c = try engine.state(cancelled.id)
        #expect(c.state == .cancelled)
        #expect(c.result.map { $0.tokens.count >= 2 && $0.tokens.count < 30 } == true)
        #expect(throws: LoRAError.self) { try engine.cancel(cancelled.id) }
        for (i, j) in jobs.enumerated() {
            let info = try engine.state(j.id)
            #expect(info.state == .finished)
            let want = try Self.solo(j.prompt, sets[j.set], j.params)
            #expect(info.result?.tokens == want.tokens, "request \(i) (set \(j.set))")
            #expect(info.result?.text == want.text)
            #expect(info.result?.stopReason == want.stopReason)
            #expect(streams.tokens(i) == want.tokens)
        }
    }

    /// Swift's streaming iterator: each stream gives its request's tokens and
    /// pieces as generation alone does, the tokens another stream's steps
    /// produced waiting in it.
    @Test func tokenStreamsGiveWhatGenerationAloneGives() throws {
        let sets = Self.sets()
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 7
        sp.stopAtEndOfText = false
        let engine = try Engine(model: Self.model, params: EngineParams())
        let prompts = [Self.prompt(4, length: 6), Self.prompt(5, length: 2), Self.prompt(6, length: 9)]
        var seeded = SamplingParams()
        seeded.seed = 21; seeded.maxNewTokens = 5; seeded.stopAtEndOfText = false
        let params = [sp, seeded, sp]
        let streams = try (0..<3).map {
            try engine.submitStreaming(EngineRequest(prompt: prompts[$0], adapters: sets[$0 + 1], params: params[$0]))
        }
        for k in [2, 0, 1] {  // out of order: the tokens of the others wait in their streams
            var tokens: [TokenID] = []
            var text = ""
            while let t = try streams[k].next() {
                tokens.append(t.token)
                text += t.piece
            }
            let want = try Self.solo(prompts[k], sets[k + 1], params[k])
            #expect(tokens == want.tokens && text == want.text, "stream \(k)")
            #expect(streams[k].result?.tokens == want.tokens)
            #expect(try streams[k].next() == nil)
        }
        #expect(engine.pendingCount == 0)
    }

    /// A stop string ends its request where generation alone ends it (same
    /// tokens, text and reason); the request beside it goes on.
    @Test func stopStringEndsOnlyItsRequest() throws {
        let sets = Self.sets()
        var free = SamplingParams.greedy
        free.maxNewTokens = 16
        free.stopAtEndOfText = false
        let prompt = Self.prompt(3, length: 5)
        let full = try Self.solo(prompt, sets[1], free)
        // Two characters from the middle of the text: the first time they
        // appear is after some tokens and before the last.
        let chars = Array(full.text)
        try #require(chars.count >= 8, "text too short: \(full.text)")
        let stop = String(chars[chars.count / 2..<chars.count / 2 + 2])
        var stopping = free
        stopping.stopStrings = [stop]
        let want = try Self.solo(prompt, sets[1], stopping)
        try #require(want.stopReason == .stopString && want.tokens.count < full.tokens.count, "\(want)")
        var p = EngineParams()
        p.maxSequences = 4
        let engine = try Engine(model: Self.model, params: p)
        let other = Self.prompt(9, length: 3)
        let otherWant = try Self.solo(other, sets[3], free)
        let a = try engine.submit(EngineRequest(prompt: prompt, adapters: sets[1], params: stopping))
        let b = try engine.submit(EngineRequest(prompt: other, adapters: sets[3], params: free))
        try engine.runUntilDone()
        let got = try #require(try engine.state(a).result)
        #expect(got.tokens == want.tokens && got.text == want.text && got.stopReason == .stopString, "\(got)")
        #expect(got.text.contains(stop))
        let rest = try #require(try engine.state(b).result)
        #expect(rest.tokens == otherWant.tokens && rest.stopReason == .maxNewTokens)
    }

    /// Adapter sets are numbered while requests use them and forgotten after:
    /// a long-running engine does not grow with every set and scale it saw.
    @Test func adapterSetsAreForgottenWithTheirLastRequest() throws {
        let (a, b) = Self.adapters
        var p = EngineParams()
        p.maxSequences = 2
        let engine = try Engine(model: Self.model, params: p)
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 2
        sp.stopAtEndOfText = false
        let prompt = Self.prompt(7, length: 4)
        let first = try engine.submit(EngineRequest(prompt: prompt, adapters: [AdapterUse(a, scale: 0.5)], params: sp))
        _ = try engine.submit(EngineRequest(prompt: prompt, adapters: [AdapterUse(a, scale: 0.5)], params: sp))
        let queued = try engine.submit(EngineRequest(prompt: prompt, adapters: [AdapterUse(b)], params: sp))
        #expect(engine.liveAdapterSets == 2)
        try engine.cancel(queued)  // a queued request's set goes with it
        #expect(engine.liveAdapterSets == 1)
        _ = try engine.step()
        try engine.runUntilDone()
        #expect(engine.liveAdapterSets == 0)
        // Many distinct scales one after another: the table stays empty between them.
        for k in 0..<50 {
            _ = try engine.submit(EngineRequest(prompt: prompt, adapters: [AdapterUse(b, scale: 0.01 * Float(k))], params: sp))
            try engine.runUntilDone()
        }
        #expect(engine.liveAdapterSets == 0)
        #expect(try engine.state(first).state == .finished)
    }

    /// Logits: every row of every step (chunked prefills, decodes, joins in
    /// the middle) against the sequence alone with its adapters attached.
    @Test func batchedLogitsMatchSoloLogits() throws {
        let model = Self.model
        var p = EngineParams()
        p.maxSequences = 8
        p.maxTokensPerStep = 20
        let engine = try Engine(model: model, params: p)
        let sets = Self.sets()
        var captured: [Int64: [[Float]]] = [:]
        var prompts: [Int64: ([TokenID], Int)] = [:]
        engine.logitsHook = { id, row in captured[id, default: []].append(row) }
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 4
        sp.stopAtEndOfText = false
        for k in 0..<8 {
            if k == 5 { _ = try engine.step(); _ = try engine.step() }  // joins while others decode
            let prompt = Self.prompt(k, length: 2 + k * 4)
            let id = try engine.submit(EngineRequest(prompt: prompt, adapters: sets[k % 4], params: sp))
            prompts[id] = (prompt, k % 4)
        }
        try engine.runUntilDone()
        #expect(captured.count == 8)
        var worst: Float = 0
        for (id, (prompt, set)) in prompts {
            let tokens = try #require(try engine.state(id).result?.tokens)
            let rows = try #require(captured[id])
            #expect(rows.count == 4 && tokens.count == 4)
            for (k, got) in rows.enumerated() {
                let want = try Self.soloLogits(prompt + tokens[0..<k], sets[set])
                worst = max(worst, maxAbsDiff(got, want))
                #expect(maxAbsDiff(got, want) <= engineLogitTolerance, "request \(id) token \(k)")
            }
        }
        // The adapters matter: without them the logits differ by far more than the tolerance.
        let (first, _) = prompts.first { $0.value.1 == 3 }!.value
        let plain = try Self.soloLogits(first, [])
        #expect(maxAbsDiff(plain, try Self.soloLogits(first, sets[3])) > 100 * engineLogitTolerance)
        print("engine logits: worst difference to solo runs \(worst)")
    }

    @Test func badInputGivesClearErrors() throws {
        let model = Self.model
        var p = EngineParams()
        p.maxSequences = 2
        p.maxTokensPerStep = 16
        p.contextPerSequence = 20
        let engine = try Engine(model: model, params: p)
        let (a, _) = Self.adapters
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: [])) }
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: [TokenID(model.config.vocabSize)])) }
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: Self.prompt(0, length: 20))) }
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: [1], adapters: [AdapterUse(a, scale: .nan)])) }
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: [1], adapters: [AdapterUse(a, scale: .infinity)])) }
        var other = model.config
        other.nEmbd = 16
        let foreign = try Adapter(config: LoRAConfig(), modelConfig: other)
        #expect(throws: LoRAError.self) { try engine.submit(EngineRequest(prompt: [1], adapters: [AdapterUse(foreign)])) }
        #expect(throws: LoRAError.self) { try engine.cancel(999) }
        #expect(throws: LoRAError.self) { try engine.state(999) }
        #expect(throws: LoRAError.self) {
            try Engine(
                model: model,
                params: {
                    var q = EngineParams(); q.maxSequences = 4; q.maxTokensPerStep = 2; return q
                }())
        }
        // max_new_tokens past the context: truncated at the context.
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 100
        sp.stopAtEndOfText = false
        let long = try engine.submit(EngineRequest(prompt: Self.prompt(1, length: 15), params: sp))
        // A callback that stops its request; the other goes on.
        var short = SamplingParams.greedy
        short.maxNewTokens = 4
        short.stopAtEndOfText = false
        let stopped = try engine.submit(EngineRequest(prompt: [5, 6], params: short) { _, _ in .stop })
        let third = try engine.submit(EngineRequest(prompt: [7, 8], params: short))  // queued: 2 slots
        #expect(try engine.state(third).state == .queued)
        try engine.runUntilDone()
        let l = try engine.state(long)
        #expect(l.result?.stopReason == .contextFull && l.result?.tokens.count == 5)
        #expect(try engine.state(stopped).result?.stopReason == .callback)
        #expect(try engine.state(stopped).result?.tokens.count == 1)
        #expect(try engine.state(third).result?.tokens == Self.solo([7, 8], [], short).tokens)
        try engine.release(third)
        #expect(throws: LoRAError.self) { try engine.state(third) }
        // generate: results in order, records released.
        let results = try engine.generate([EngineRequest(prompt: [7, 8], params: short), EngineRequest(prompt: [1], params: short)])
        #expect(results.map(\.tokens) == [try Self.solo([7, 8], [], short).tokens, try Self.solo([1], [], short).tokens])
    }

    /// Two threads submit and cancel while a third steps (a second stepper: secondStepperIsRefusedMidStep).
    @Test func concurrentSubmitAndCancel() throws {
        var p = EngineParams()
        p.maxSequences = 4
        p.maxTokensPerStep = 32
        let engine = try Engine(model: Self.model, params: p)
        let sets = Self.sets()
        let done = Flag()
        let ids = IDBox()
        let stepper = Thread {
            while !done.isSet || engine.pendingCount > 0 { _ = try? engine.step() }
        }
        stepper.start()
        let group = DispatchGroup()
        for t in 0..<2 {
            DispatchQueue.global().async(group: group) {
                for k in 0..<8 {
                    var sp = SamplingParams.greedy
                    sp.maxNewTokens = 5
                    sp.stopAtEndOfText = false
                    if let id = try? engine.submit(
                        EngineRequest(prompt: Self.prompt(t * 8 + k, length: 4 + k), adapters: sets[k % 4], params: sp))
                    {
                        ids.add(id, prompt: Self.prompt(t * 8 + k, length: 4 + k), set: k % 4)
                        if k % 3 == 0 { try? engine.cancel(id) }
                    }
                }
            }
        }
        group.wait()
        done.set()
        while !stepper.isFinished { usleep(1000) }
        let all = ids.all()
        #expect(all.count == 16)
        for (id, prompt, set) in all {
            let info = try engine.state(id)
            #expect(info.state == .finished || info.state == .cancelled)
            if info.state == .finished {
                var sp = SamplingParams.greedy
                sp.maxNewTokens = 5
                sp.stopAtEndOfText = false
                #expect(info.result?.tokens == (try Self.solo(prompt, sets[set], sp)).tokens)
            }
        }
    }
}

extension EngineTests {
    /// While one thread is inside `step` (here: in a token callback), a
    /// second thread's `step` and the callback's own are refused with
    /// `wrongState`; the running step and its request are not disturbed, and
    /// stepping works again once the first step has returned.
    @Test func secondStepperIsRefusedMidStep() throws {
        var p = EngineParams()
        p.maxSequences = 2
        p.maxTokensPerStep = 16
        let engine = try Engine(model: Self.model, params: p)
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 3
        sp.stopAtEndOfText = false
        let prompt = Self.prompt(5, length: 6)
        let refusals = RefusalLog()
        let id = try engine.submit(
            EngineRequest(prompt: prompt, params: sp) { _, _ in
                // On the stepping thread, inside step: another thread tries to step ...
                let done = DispatchSemaphore(value: 0)
                Thread {
                    refusals.record { _ = try engine.step() }
                    done.signal()
                }.start()
                done.wait()
                // ... and so does this callback.
                refusals.record { _ = try engine.step() }
                return .continue
            })
        while engine.pendingCount > 0 { _ = try engine.step() }
        let got = refusals.all()
        #expect(got.count == 6)  // two per token, three tokens
        for r in got {
            guard case .some(LoRAError.wrongState(let m)) = r else {
                Issue.record("expected wrongState, got \(String(describing: r))")
                continue
            }
            #expect(m.contains("already stepping"))
        }
        let info = try engine.state(id)
        #expect(info.state == .finished)
        #expect(info.result?.tokens == (try Self.solo(prompt, [], sp)).tokens)
        // Stepping is free again: a new request runs to the end.
        let again = try engine.generate([EngineRequest(prompt: prompt, params: sp)])
        #expect(again.map(\.tokens) == [info.result?.tokens ?? []])
    }
}

extension EngineTests {
    /// A model whose vocabulary is larger than its tokenizer's (5201 against
    /// gpt2-tok's 1201): the extra ids' embeddings are zero, so their logits
    /// are 0 and greedy decoding never picks them, while sampling at a high
    /// temperature does.
    static func modelWithExtraVocab() throws -> Model {
        var c = GPT2Config()
        c.vocabSize = 5201
        c.nPositions = 64
        c.nEmbd = 32
        c.nLayer = 2
        c.nHead = 2
        let r = try Model.random(config: c, seed: 9)
        let wte = try #require(r.weights.wte.f32)
        (wte + 1201 * c.nEmbd).update(repeating: 0, count: (c.vocabSize - 1201) * c.nEmbd)
        return try Model(config: c, weights: r.weights, tokenizer: try #require(Self.model.tokenizer))
    }

    /// A sampled token the tokenizer has no text for ends that request with
    /// stop reason `.error` and the error in its state; its step reports it
    /// as finished and does not throw; the request beside it gets its tokens
    /// and finishes as if alone.
    @Test func undecodableTokenFailsOnlyItsRequest() throws {
        let model = try Self.modelWithExtraVocab()
        let engine = try Engine(model: model, params: EngineParams())
        var hot = SamplingParams()
        hot.temperature = 100
        hot.topK = 0
        hot.topP = 1
        hot.seed = 3
        hot.maxNewTokens = 20
        var greedy = SamplingParams.greedy
        greedy.maxNewTokens = 6
        greedy.stopAtEndOfText = false
        let prompt = Self.prompt(2, length: 5)
        let failing = try engine.submit(EngineRequest(prompt: prompt, params: hot))
        let other = try engine.submit(EngineRequest(prompt: prompt, params: greedy))
        var finished: [Int64] = []
        while engine.pendingCount > 0 { finished += try engine.step().finished }
        #expect(finished.contains(failing) && finished.contains(other))
        let f = try engine.state(failing)
        #expect(f.state == .finished)
        #expect(f.result?.stopReason == .error)
        #expect(f.result.map { $0.tokens.last! >= 1201 } == true)
        guard case .some(LoRAError.invalidArgument(let m)) = f.error else {
            Issue.record("expected the request's error, got \(String(describing: f.error))")
            return
        }
        #expect(m.contains("out of range"))
        let o = try engine.state(other)
        #expect(o.state == .finished && o.error == nil)
        #expect(o.result?.stopReason == .maxNewTokens)
        #expect(o.result?.tokens == (try model.generate(prompt: prompt, params: greedy)).tokens)
    }

    /// `lora generate --batch-file`: the failed prompt's line says so, the
    /// others are complete, and the command ends with a one-line error.
    @Test func batchFileReportsAFailedPrompt() throws {
        let dir = try Fixtures.tempDir()
        let model = try Self.modelWithExtraVocab()
        try model.save(directory: dir + "/m")
        for f in ["vocab.json", "merges.txt"] {
            try FileManager.default.copyItem(atPath: Fixtures.path("gpt2-tok") + "/" + f, toPath: dir + "/m/" + f)
        }
        let lines = [
            #"{"prompt": "Hello", "max_new_tokens": 20, "temperature": 100, "top_k": 0, "seed": 3}"#,
            #"{"prompt": "Hello", "max_new_tokens": 4, "temperature": 0, "ignore_eos": true}"#,
        ]
        try lines.joined(separator: "\n").write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        let r = try CLI.run(["generate", "--model", dir + "/m", "--batch-file", dir + "/in.jsonl", "--top-p", "1"])
        #expect(r.status != 0)
        #expect(r.err.contains("1 of 2 prompts failed"))
        #expect(r.err.split(separator: "\n").count == 1, "\(r.err)")
        let out = r.out.split(separator: "\n").map(String.init)
        #expect(out.count == 2)
        let first = try #require(try JSON.parse(out[0]).objectValue)
        #expect(first["stop_reason"]?.stringValue == "error")
        #expect(first["error"]?.stringValue?.contains("out of range") == true)
        let second = try #require(try JSON.parse(out[1]).objectValue)
        #expect(second["stop_reason"]?.stringValue == "max_new_tokens")
        #expect(second["error"] == nil)
    }
}

/// What each refused call threw (nil: it did not throw).
final class RefusalLog: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Error?] = []
    func record(_ body: () throws -> Void) {
        var e: Error? = nil
        do { try body() } catch { e = error }
        lock.lock()
        items.append(e)
        lock.unlock()
    }
    func all() -> [Error?] { lock.lock(); defer { lock.unlock() }; return items }
}

/// `lora generate --batch-file`: JSONL with per-line adapters and sampling,
/// output in input order. In the engine suite: it shares (and attaches to)
/// the suite's model, so it must not run beside the other engine tests.
extension EngineTests {
    @Test func batchFileMatchesSingleGeneration() throws {
        let model = EngineTests.model
        let (a, b) = EngineTests.adapters
        let dir = try Fixtures.tempDir()
        try a.save(directory: dir + "/a")
        try b.save(directory: dir + "/b")
        let lines = [
            #"{"prompt": "Hello", "max_new_tokens": 6, "temperature": 0}"#,
            #"{"prompt": "The quick brown fox", "adapters": ["\#(dir)/a"], "max_new_tokens": 4, "temperature": 0}"#,
            "",
            #"{"prompt": "café", "adapters": ["\#(dir)/a", "\#(dir)/b:0.5"], "seed": 7, "temperature": 0.9, "top_k": 30, "max_new_tokens": 5, "ignore_eos": true}"#,
            #"{"prompt": "Hi", "adapters": ["\#(dir)/b:1.5"], "max_new_tokens": 3, "temperature": 0, "stop": ["zzz"]}"#,
        ]
        try lines.joined(separator: "\n").write(toFile: dir + "/in.jsonl", atomically: true, encoding: .utf8)
        let r = try CLI.run([
            "generate", "--model", Fixtures.path("gpt2-tok"), "--batch-file", dir + "/in.jsonl",
            "--max-sequences", "2", "--max-tokens-per-step", "4", "--top-p", "1",
        ])
        #expect(r.status == 0, "\(r.err)")
        let out = r.out.split(separator: "\n").map(String.init)
        #expect(out.count == 4)
        let t = try #require(model.tokenizer)
        func expectLine(_ i: Int, _ prompt: String, _ set: [AdapterUse], _ p: SamplingParams) throws {
            let want = try EngineTests.solo(t.encode(prompt), set, p)
            let o = try #require(try JSON.parse(out[i]).objectValue)
            #expect(o["index"]?.intValue == i && o["prompt"]?.stringValue == prompt)
            #expect(o["text"]?.stringValue == want.text, "line \(i)")
            #expect(o["stop_reason"]?.stringValue == want.stopReason.rawValue)
        }
        var p = SamplingParams.greedy
        p.topP = 1
        p.maxNewTokens = 6
        try expectLine(0, "Hello", [], p)
        p.maxNewTokens = 4
        // Adapters loaded from the saved directories equal the in-memory ones (safetensors round trip is exact).
        try expectLine(1, "The quick brown fox", [AdapterUse(a)], p)
        var s = SamplingParams()
        s.temperature = 0.9; s.topK = 30; s.topP = 1; s.seed = 7; s.maxNewTokens = 5; s.stopAtEndOfText = false
        try expectLine(2, "café", [AdapterUse(a), AdapterUse(b, scale: 0.5)], s)
        p.maxNewTokens = 3
        p.stopStrings = ["zzz"]
        try expectLine(3, "Hi", [AdapterUse(b, scale: 1.5)], p)

        // Bad lines name the file and line.
        try #"{"prompt": "x", "top_p": 3}"#.write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        let bad = try CLI.run(["generate", "--model", Fixtures.path("gpt2-tok"), "--batch-file", dir + "/bad.jsonl"])
        #expect(bad.status != 0 && bad.err.contains("line 1") && bad.err.contains("top_p"), "\(bad.err)")
        try "{\"prompt\": 3}\n".write(toFile: dir + "/bad2.jsonl", atomically: true, encoding: .utf8)
        let bad2 = try CLI.run(["generate", "--model", Fixtures.path("gpt2-tok"), "--batch-file", dir + "/bad2.jsonl"])
        #expect(bad2.status != 0 && bad2.err.contains("prompt"), "\(bad2.err)")
        // Plain text: one prompt per line.
        try "Hello\nHi\n".write(toFile: dir + "/in.txt", atomically: true, encoding: .utf8)
        let plain = try CLI.run([
            "generate", "--model", Fixtures.path("gpt2-tok"), "--batch-file", dir + "/in.txt",
            "--temperature", "0", "--max-new-tokens", "3",
        ])
        #expect(plain.status == 0 && plain.out.split(separator: "\n").count == 2, "\(plain.err)")
    }
}

final class StreamBox: @unchecked Sendable {
    private let lock = NSLock()
    private var streams: [[TokenID]]
    init(count: Int) { streams = Array(repeating: [], count: count) }
    func append(_ i: Int, _ t: TokenID) { lock.lock(); streams[i].append(t); lock.unlock() }
    func tokens(_ i: Int) -> [TokenID] { lock.lock(); defer { lock.unlock() }; return streams[i] }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

final class IDBox: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(Int64, [TokenID], Int)] = []
    func add(_ id: Int64, prompt: [TokenID], set: Int) { lock.lock(); items.append((id, prompt, set)); lock.unlock() }
    func all() -> [(Int64, [TokenID], Int)] { lock.lock(); defer { lock.unlock() }; return items }
}
