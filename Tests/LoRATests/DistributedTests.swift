import Foundation
import LoRA
import Testing

/// N ranks as N threads of one process: an all-reduce (sum) over a barrier.
/// The real transport is MPI (Tests/mpi); this one tests the core's side.
final class ThreadReducer: @unchecked Sendable {
    let worldSize: Int
    private let cond = NSCondition()
    private var sum: [Float] = []
    private var arrived = 0, departed = 0, filled = 0, emptied = 0

    /// Added to rank r's result × r: a transport that gives ranks different sums.
    let skew: Float

    init(worldSize: Int, skew: Float = 0) { self.worldSize = worldSize; self.skew = skew }

    func rank(_ r: Int) throws -> GradientReducer {
        try FunctionGradientReducer(rank: r, worldSize: worldSize) { [self] buffer in
            allReduce(buffer)
            if skew != 0, buffer.count > 100 { buffer[0] += skew * Float(r) }
        }
    }

    /// Two barriers: all ranks add their buffer, then all copy the sum out.
    private func allReduce(_ b: UnsafeMutableBufferPointer<Float>) {
        cond.lock(); defer { cond.unlock() }
        if arrived == 0 { sum = [Float](repeating: 0, count: b.count) }
        for i in 0..<b.count { sum[i] += b[i] }
        arrived += 1
        let f = filled
        if arrived == worldSize { filled += 1; cond.broadcast() } else { while filled == f { cond.wait() } }
        for i in 0..<b.count { b[i] = sum[i] }
        departed += 1
        let e = emptied
        if departed == worldSize { arrived = 0; departed = 0; emptied += 1; cond.broadcast() } else { while emptied == e { cond.wait() } }
    }
}

final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var r: [Int: Result<([Double], [Float]), Error>] = [:]
    func set(_ k: Int, _ v: Result<([Double], [Float]), Error>) { lock.lock(); r[k] = v; lock.unlock() }
    func all(_ n: Int) -> [Result<([Double], [Float]), Error>] { (0..<n).map { r[$0]! } }
}

@Suite struct DistributedTests {
    func examples(_ n: Int) -> Dataset {
        var rng = SplitMix64(seed: 11)
        return Dataset(
            examples: (0..<n).map { i in
                TrainingExample(ids: (0..<(6 + i % 5)).map { _ in TokenID(rng.next() % 101) })
            })
    }

    func trainer(batch: Int, seed: UInt64 = 9, dropout: Double = 0.1) throws -> (Trainer, Adapter) {
        let model = try Model.load(directory: Fixtures.path("gpt2-a"))
        var lc = LoRAConfig(); lc.r = 4; lc.loraAlpha = 8; lc.loraDropout = dropout
        lc.targetModules = .names(["c_attn", "c_proj"])
        let adapter = try Adapter(config: lc, modelConfig: model.config)
        try adapter.initialize(seed: 3)
        var tc = TrainerParams()
        tc.learningRate = 1e-3; tc.maxSteps = 7; tc.batchSize = batch; tc.blockSize = 12; tc.seed = seed
        tc.gradientAccumulationSteps = 1
        return (try Trainer(model: model, adapter: adapter, config: tc), adapter)
    }

    /// Runs `world` ranks on threads; returns each rank's losses and adapter.
    func runRanks(_ world: Int, data: Dataset, seeds: [UInt64]? = nil, skew: Float = 0) -> [Result<([Double], [Float]), Error>] {
        let reducer = ThreadReducer(worldSize: world, skew: skew)
        let results = Results()
        let group = DispatchGroup()
        let make = self
        for r in 0..<world {
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    let (t, a) = try make.trainer(batch: 1, seed: seeds?[r] ?? 9)
                    t.gradientReducer = try reducer.rank(r)
                    var losses: [Double] = []
                    try t.train(data) {
                        losses.append($0.loss); return .continue
                    }
                    results.set(r, .success((losses, Array(a.params.buffer))))
                } catch {
                    results.set(r, .failure(error))
                }
            }.start()
        }
        group.wait()
        return results.all(world)
    }

    @Test func shardsPartitionTheGlobalMicroBatch() {
        for world in 1...5 {
            let b = 3
            let all = (0..<world).flatMap { Array(Trainer.shard(globalMicroBatch: b * world, rank: $0, worldSize: world)) }
            #expect(all == Array(0..<(b * world)))
        }
    }

    /// 3 ranks × 1 on 7 examples (not divisible by 3) over 3 epochs, with
    /// dropout: the same losses and adapter as one process × 3.
    @Test func threeRanksOnSevenExamplesEqualOneProcess() throws {
        let data = examples(7)
        let (t1, a1) = try trainer(batch: 3)
        var losses1: [Double] = []
        try t1.train(data) {
            losses1.append($0.loss); return .continue
        }
        let ranks = runRanks(3, data: data)
        for r in ranks {
            let (losses, params) = try r.get()
            #expect(losses.count == 7)
            #expect(zip(losses, losses1).allSatisfy { abs($0 - $1) <= 1e-5 })
            #expect(zip(params, Array(a1.params.buffer)).allSatisfy { abs($0 - $1) <= 1e-5 })
        }
        // Every rank applied the identical update.
        #expect(try ranks.map { try $0.get().1 }.allSatisfy { $0 == (try ranks[0].get().1) })
    }

    @Test func ranksWithDifferentSeedsAllStop() {
        let ranks = runRanks(2, data: examples(7), seeds: [1, 2])
        for r in ranks {
            guard case .failure(let e) = r else { Issue.record("a rank trained with another seed"); continue }
            #expect("\(e)".contains("were started with different training settings"))
        }
    }

    /// Runs `world` ranks on threads with `body(rank, trainer)`; nil when they
    /// did not all finish within a minute (a rank left waiting in a reduction).
    func runRanks(_ world: Int, _ body: @escaping @Sendable (Int, Trainer) throws -> Void) -> [Result<([Double], [Float]), Error>]? {
        let reducer = ThreadReducer(worldSize: world)
        let results = Results()
        let group = DispatchGroup()
        let make = self
        for r in 0..<world {
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    let (t, a) = try make.trainer(batch: 1)
                    t.gradientReducer = try reducer.rank(r)
                    try body(r, t)
                    results.set(r, .success(([Double(t.step)], Array(a.params.buffer))))
                } catch {
                    results.set(r, .failure(error))
                }
            }.start()
        }
        guard group.wait(timeout: .now() + 60) == .success else { return nil }
        return results.all(world)
    }

    /// One rank's callback stops the run: every rank stops after that step
    /// (none is left waiting in the next step's reduction), all holding the
    /// same parameters.
    @Test func oneRankStoppingStopsEveryRank() throws {
        let data = examples(7)
        guard
            let ranks = runRanks(
                3,
                { r, t in
                    do {
                        try t.train(data) { p in r == 1 && p.step == 3 ? .stop : .continue }
                    } catch LoRAError.aborted {
                        #expect(t.step == 3, "rank \(r) stopped at step \(t.step)")
                        return
                    }
                    Issue.record("rank \(r) did not stop")
                })
        else {
            Issue.record("a rank was left waiting after another stopped")
            return
        }
        let params = try ranks.map { try $0.get().1 }
        #expect(params.allSatisfy { $0 == params[0] })
    }

    /// Rank 0's checkpoint fails (the directory is a file): rank 0 reports
    /// its error, every other rank stops naming another rank's failure.
    @Test func aCheckpointFailureOnRankZeroStopsEveryRank() throws {
        let data = examples(7)
        let blocker = FileManager.default.temporaryDirectory.appendingPathComponent("lora-ckpt-\(UUID().uuidString)")
        try Data("not a directory".utf8).write(to: blocker)
        defer { try? FileManager.default.removeItem(at: blocker) }
        var options = TrainParams()
        options.saveSteps = 2
        options.checkpointDirectory = blocker.path + "/sub"
        let opts = options
        guard let ranks = runRanks(2, { _, t in try t.train(data, options: opts) }) else {
            Issue.record("a rank was left waiting after rank 0's checkpoint failed")
            return
        }
        guard case .failure(let e0) = ranks[0], case .failure(let e1) = ranks[1] else {
            Issue.record("training went on after a failed checkpoint")
            return
        }
        #expect(!"\(e0)".contains("another rank"))
        #expect("\(e1)".contains("another rank failed after step 2"))
    }

    /// A transport whose sums differ between ranks is caught at the end of training.
    @Test func ranksThatDivergeAreCaught() {
        for r in runRanks(2, data: examples(7), skew: 1e-3) {
            guard case .failure(let e) = r else { Issue.record("diverged ranks were not detected"); continue }
            #expect("\(e)".contains("parameters diverged"))
        }
    }
}
