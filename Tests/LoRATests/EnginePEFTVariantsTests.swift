import Foundation
import Testing

@testable import LoRA

/// The batched engine with PEFT's variants (DoRA, modules_to_save, LoRA on
/// wte, each from a PEFT-made fixture) against the same sequences run alone
/// with the adapters attached (the path checked against PEFT in DoRATests,
/// ModulesToSaveTests and EmbeddingTests). Tolerance: `engineLogitTolerance`.
@Suite(.serialized) struct EnginePEFTVariantsTests {
    static let model: Model = { try! Model.load(directory: Fixtures.path("gpt2-a")) }()

    static func load(_ dir: String, _ name: String) -> Adapter {
        try! Adapter.load(directory: Fixtures.path(dir), modelConfig: model.config, name: name)
    }

    static let dora = load("dora/all", "dora")
    static let saved = load("modules_to_save/ln", "saved")
    static let savedDoRA = load("modules_to_save/dora", "saved-dora")
    static let wte = load("embedding/wte", "wte")
    static let plain = load("lora/all", "plain")

    /// None; DoRA; LayerNorms saved; wte; plain then DoRA at 0.5 (DoRA
    /// rescales the plain adapter's output too); wte with DoRA and a saved
    /// ln_f; DoRA at another scale (other norms).
    static func sets() -> [[AdapterUse]] {
        [
            [], [AdapterUse(dora)], [AdapterUse(saved)], [AdapterUse(wte, scale: 1.5)],
            [AdapterUse(plain), AdapterUse(dora, scale: 0.5)], [AdapterUse(wte, scale: 0.7), AdapterUse(savedDoRA)],
            [AdapterUse(dora, scale: 2)],
        ]
    }

    static func attached<T>(_ set: [AdapterUse], _ body: () throws -> T) throws -> T {
        for u in set { try model.attach(u.adapter, scale: u.scale) }
        defer { for u in set { try? model.detach(u.adapter) } }
        return try body()
    }

    static func soloLogits(_ ids: [TokenID], _ set: [AdapterUse]) throws -> [Float] {
        try attached(set) {
            let V = model.config.vocabSize
            let all = try model.logits(ids)
            return Array(all[(ids.count - 1) * V..<ids.count * V])
        }
    }

    static func prompt(_ k: Int, length: Int) -> [TokenID] {
        (0..<length).map { TokenID((k * 37 + $0 * 11 + 5) % 100) }
    }

    /// Every row of every step (chunked prompts, decodes, requests joining
    /// others mid-way, two requests per set) against the sequence alone;
    /// greedy and seeded sampled tokens identical to generation alone.
    @Test func variantsInMixedBatchesMatchSoloRuns() throws {
        let model = Self.model
        var p = EngineParams()
        p.maxSequences = 8
        p.maxTokensPerStep = 12
        let engine = try Engine(model: model, params: p)
        let sets = Self.sets()
        var captured: [Int64: [[Float]]] = [:]
        engine.logitsHook = { id, row in captured[id, default: []].append(row) }
        struct Job { var prompt: [TokenID]; var set: Int; var params: SamplingParams; var id: Int64 = 0 }
        var jobs: [Job] = []
        for k in 0..<14 {
            var sp = k % 4 == 3 ? SamplingParams() : SamplingParams.greedy
            sp.seed = UInt64(7 + k)
            sp.maxNewTokens = 5
            sp.stopAtEndOfText = false
            jobs.append(Job(prompt: Self.prompt(k, length: 2 + (k * 5) % 17), set: k % sets.count, params: sp))
        }
        for i in jobs.indices {
            if i == 8 { _ = try engine.step(); _ = try engine.step() }  // the rest join while others decode
            jobs[i].id = try engine.submit(EngineRequest(prompt: jobs[i].prompt, adapters: sets[jobs[i].set], params: jobs[i].params))
        }
        try engine.runUntilDone()
        #expect(engine.liveAdapterSets == 0)
        var worst: Float = 0
        for j in jobs {
            let got = try #require(try engine.state(j.id).result)
            let want = try Self.attached(sets[j.set]) { try model.generate(prompt: j.prompt, params: j.params) }
            #expect(got.tokens == want.tokens, "set \(j.set)")
            let rows = try #require(captured[j.id])
            #expect(rows.count == got.tokens.count)
            for (k, row) in rows.enumerated() {
                let solo = try Self.soloLogits(j.prompt + got.tokens[0..<k], sets[j.set])
                worst = max(worst, maxAbsDiff(row, solo))
                #expect(maxAbsDiff(row, solo) <= engineLogitTolerance, "set \(j.set) token \(k)")
            }
        }
        // Each variant changes the logits by far more than the tolerance.
        let ids = Self.prompt(3, length: 9)
        let none = try Self.soloLogits(ids, [])
        for set in sets.dropFirst() {
            #expect(maxAbsDiff(none, try Self.soloLogits(ids, set)) > 100 * engineLogitTolerance)
        }
        print("engine with DoRA, modules_to_save, wte: worst difference to solo runs \(worst)")
    }

    /// A set the engine cannot run is refused at submission, by name, and
    /// leaves nothing queued: two adapters saving one module.
    @Test func conflictingSavedModulesAreRefused() throws {
        let engine = try Engine(model: Self.model, params: EngineParams())
        do {
            _ = try engine.submit(EngineRequest(prompt: [1, 2], adapters: [AdapterUse(Self.saved), AdapterUse(Self.savedDoRA)]))
            Issue.record("two adapters saving ln_f were accepted")
        } catch LoRAError.unsupported(let message) {
            #expect(message.contains("ln_f"))
        }
        #expect(engine.pendingCount == 0 && engine.liveAdapterSets == 0)
    }

    /// DoRA and a saved LayerNorm on a bf16 base: the engine's tokens and
    /// logits as the bf16 model's own with the adapter attached.
    @Test func doraOnABF16BaseMatchesSoloRuns() throws {
        let bf16 = try Model.load(directory: Fixtures.path("gpt2-a"), dtype: .bf16)
        let adapter = try Adapter.load(directory: Fixtures.path("modules_to_save/dora"), modelConfig: bf16.config)
        let engine = try Engine(model: bf16, params: EngineParams())
        var rows: [[Float]] = []
        engine.logitsHook = { _, row in rows.append(row) }
        var sp = SamplingParams.greedy
        sp.maxNewTokens = 4
        sp.stopAtEndOfText = false
        let prompt: [TokenID] = [1, 2, 30, 44, 5]
        let plain = try engine.generate([EngineRequest(prompt: prompt, params: sp)])[0]
        rows.removeAll()
        let got = try engine.generate([EngineRequest(prompt: prompt, adapters: [AdapterUse(adapter, scale: 0.9)], params: sp)])[0]
        try bf16.attach(adapter, scale: 0.9)
        let want = try bf16.generate(prompt: prompt, params: sp)
        let V = bf16.config.vocabSize
        for (k, row) in rows.enumerated() {
            let ids = prompt + got.tokens[0..<k]
            let solo = Array(try bf16.logits(ids)[(ids.count - 1) * V..<ids.count * V])
            #expect(maxAbsDiff(row, solo) <= engineLogitTolerance, "token \(k)")
        }
        try bf16.detach(adapter)
        #expect(got.tokens == want.tokens && rows.count == 4)
        let base = Array(try bf16.logits(prompt).suffix(V))
        #expect(got.tokens != plain.tokens || maxAbsDiff(rows[0], base) > 1e-2)  // the adapter matters
    }
}
