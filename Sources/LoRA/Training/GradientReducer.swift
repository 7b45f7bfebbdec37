import Foundation

/// Data-parallel training: what the trainer needs from a host that runs it
/// in several processes (MPI, mpi4py, anything with an all-reduce). The core
/// knows no transport; the host implements this.
///
/// The rule, on every rank the same:
/// - Every rank loads the same model, adapter, settings and data, and the
///   trainer checks that they agree before the first step (a digest of each).
/// - The examples form one stream: epoch after epoch, each epoch in
///   `Dataset.order(epoch:seed:)` — exactly the stream of one process.
///   A *global batch* is the next `batchSize × worldSize × accumulation`
///   examples of that stream. Micro-step `a` of it is the slice
///   `[a·B·N, (a+1)·B·N)`; rank `r` computes the slice `[a·B·N + r·B, a·B·N + (r+1)·B)`.
///   A global batch that reaches the end of an epoch continues with the
///   next epoch's order, so across an epoch no example is dropped or
///   repeated, whatever the dataset size (see `Trainer.shard`).
/// - The loss is normalised by the target count of the *global* batch (every
///   rank counts it from the data it holds, without communication), so the
///   sum over ranks of the per-rank gradients is the gradient of one process
///   with batch `B·N`. One `sumOverRanks` a step carries the gradients and the
///   step's loss; clipping and AdamW then run identically on every rank.
/// - LoRA dropout masks are indexed by the example's position in the global
///   micro-batch (and the token's position in the block), so a rank draws
///   exactly the mask rows one process would: dropout does not change the
///   equivalence.
/// - Rank 0 alone writes checkpoints; validation batches are split across
///   ranks and their summed loss and token counts reduced.
public protocol GradientReducer: AnyObject {
    /// This process's index, 0..<worldSize.
    var rank: Int { get }
    var worldSize: Int { get }
    /// Replaces every element of `buffer` by its sum over all ranks. Every
    /// rank calls it in the same order with buffers of the same length.
    /// Throwing stops the training with that error.
    func sumOverRanks(_ buffer: UnsafeMutableBufferPointer<Float>) throws
}

/// A reducer from a function (the C ABI's callback, tests).
public final class FunctionGradientReducer: GradientReducer {
    public let rank: Int
    public let worldSize: Int
    let sum: (UnsafeMutableBufferPointer<Float>) throws -> Void

    public init(rank: Int, worldSize: Int, sum: @escaping (UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
        guard worldSize >= 1, worldSize <= 1 << 16, rank >= 0, rank < worldSize else {
            throw LoRAError.invalidArgument("rank \(rank) and world size \(worldSize) must satisfy 0 <= rank < world_size <= 65536")
        }
        self.rank = rank
        self.worldSize = worldSize
        self.sum = sum
    }

    public func sumOverRanks(_ buffer: UnsafeMutableBufferPointer<Float>) throws { try sum(buffer) }
}

extension GradientReducer {
    /// Every rank calls this after a step that can fail locally (reading its
    /// data): if any rank failed, all of them throw, naming the ranks.
    /// `localError` is this rank's own failure (rethrown as is on this rank).
    public func agree(localError: Error?, task: String = "prepare") throws {
        var flags = [Float](repeating: 0, count: worldSize)
        if localError != nil { flags[rank] = 1 }
        try flags.withUnsafeMutableBufferPointer { try sumOverRanks($0) }
        if let localError { throw localError }
        let failed = flags.indices.filter { flags[$0] != 0 }
        if !failed.isEmpty {
            throw LoRAError.invalidArgument(
                "rank\(failed.count > 1 ? "s" : "") \(failed.map(String.init).joined(separator: ", ")) failed to \(task) (see \(failed.count > 1 ? "their" : "its") message); every rank stops"
            )
        }
    }
}

/// A 64-bit digest (multiply–xor over 64-bit words), fast enough for the model's weights.
struct Digest64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ w: UInt64) {
        h = (h ^ w) &* 0x100_0000_01b3
        h ^= h >> 29
    }
    mutating func add(_ s: String) { for b in s.utf8 { add(UInt64(b)) }; add(0xff) }
    mutating func add(_ p: UnsafePointer<Float>, count: Int) {
        add(UInt64(count))
        UnsafeRawPointer(p).withMemoryRebound(to: UInt32.self, capacity: count) { q in
            var i = 0
            while i + 1 < count { add(UInt64(q[i]) | UInt64(q[i + 1]) << 32); i += 2 }
            if i < count { add(UInt64(q[i])) }
        }
    }
    mutating func add(_ d: Dataset) {
        add(UInt64(d.examples.count))
        for e in d.examples {
            add(UInt64(e.ids.count))
            for t in e.ids { add(UInt64(UInt32(bitPattern: Int32(truncatingIfNeeded: t)))) }
            for l in e.labels { add(UInt64(UInt32(bitPattern: l))) }
        }
    }
}

extension Trainer {
    /// The ranks of a distributed run: nil, or a reducer with world size > 1.
    var distributed: GradientReducer? {
        guard let r = gradientReducer, r.worldSize > 1 else { return nil }
        return r
    }

    /// The settings a checkpoint must share with the run that resumes it.
    /// Distributed runs record the global batch (per-rank batch × ranks), so a
    /// checkpoint resumes with any number of ranks that keeps the global batch
    /// (1 rank × 4 continues 2 ranks × 2 exactly, up to summation order).
    var checkpointConfig: TrainerParams {
        var c = config
        c.batchSize = config.batchSize * (gradientReducer?.worldSize ?? 1)
        return c
    }

    /// The data-parallel sharding rule (see `GradientReducer`): for a global
    /// micro-batch of `B·N` consecutive stream examples, the positions rank
    /// `r` computes.
    public static func shard(globalMicroBatch: Int, rank: Int, worldSize: Int) -> Range<Int> {
        let b = globalMicroBatch / worldSize
        return (rank * b)..<((rank + 1) * b)
    }

    /// Compares settings, parameters and data across ranks before training:
    /// one sum of 8-bit pieces and their squares per digest, so every rank
    /// reaches the same verdict from the reduced values alone
    /// (N·Σx² = (Σx)² exactly when all x agree).
    func checkRanksAgree(_ reducer: GradientReducer, data: Dataset, validation: Dataset?) throws {
        var names: [String] = []
        var digests: [UInt64] = []
        func add(_ name: String, _ f: (inout Digest64) -> Void) { var d = Digest64(); f(&d); names.append(name); digests.append(d.h) }
        add("training settings (learning rate, schedule, steps, batch, block, accumulation, clipping, seed, LoRA+ ratio, model dropout)") {
            $0.add(config.settings.map { "\($0.name)=\($0.value)" }.joined(separator: ";"))
        }
        add("model weights") { d in
            if adapter != nil {
                d.add(model.weights.block.base, count: model.weights.block.count)
            } else {
                d.add(params.base, count: params.count)
            }
        }
        add("adapter configuration or initial weights") { d in
            if let adapter { d.add(String(describing: adapter.config)); d.add(adapter.params.base, count: adapter.params.count) }
        }
        add("training data") { $0.add(data) }
        add("validation data") { d in if let validation { d.add(validation) } }
        add("resume point (step, epoch, offset)") { d in
            d.add(UInt64(step)); d.add(UInt64(epoch)); d.add(UInt64(offset)); d.add(rng.state)
        }
        let differ = try differingDigests(reducer, digests)
        guard differ.isEmpty else {
            throw LoRAError.invalidArgument(
                "the ranks were started with different \(differ.map { names[$0] }.joined(separator: "; ")); start every rank with the same model, adapter options, data files, seed and settings"
            )
        }
    }

    /// After training: every rank must hold the same parameters. MPI does not
    /// promise that an all-reduce gives every rank bit-identical sums; this
    /// catches a transport that does not.
    func checkRanksInSync(_ reducer: GradientReducer) throws {
        var d = Digest64()
        d.add(params.base, count: params.count)
        d.add(m.base, count: m.count)
        d.add(v.base, count: v.count)
        guard try differingDigests(reducer, [d.h]).isEmpty else {
            throw LoRAError.numerical("the ranks' parameters diverged: the gradient reducer did not give every rank the same sums")
        }
    }

    /// Indices of the digests that are not equal on every rank (the same answer on every rank).
    private func differingDigests(_ reducer: GradientReducer, _ digests: [UInt64]) throws -> [Int] {
        var buf = [Float](repeating: 0, count: 2 + digests.count * 16)
        buf[0] = 1; buf[1] = Float(reducer.rank)
        for (k, h) in digests.enumerated() {
            for j in 0..<8 {
                let x = Float((h >> (8 * UInt64(j))) & 0xff)
                buf[2 + k * 16 + 2 * j] = x
                buf[2 + k * 16 + 2 * j + 1] = x * x
            }
        }
        try buf.withUnsafeMutableBufferPointer { try reducer.sumOverRanks($0) }
        let n = Double(reducer.worldSize)
        guard Double(buf[0]) == n, Double(buf[1]) == n * (n - 1) / 2 else {
            // The reducer's output may be anything here (NaN, huge): describe it without converting to Int.
            throw LoRAError.invalidArgument(
                "the ranks disagree about the world size or their ranks (the reduction counted \(buf[0]) ranks, expected \(reducer.worldSize)): is the reducer a sum over every rank?"
            )
        }
        return digests.indices.filter { k in
            !(0..<8).allSatisfy { j in
                let s = Double(buf[2 + k * 16 + 2 * j])
                let q = Double(buf[2 + k * 16 + 2 * j + 1])
                return n * q == s * s
            }
        }
    }

    /// Sums the step's gradients and loss over the ranks in one call: the
    /// trained parameters' gradients, the step's mean loss split into two
    /// floats (hi + lo, so the sum keeps a Double's precision), and the count
    /// of ranks whose step failed. A rank that failed (`failed`) still takes
    /// part, so no rank waits for it; then every other rank throws too.
    /// Returns the global mean loss.
    func reduceStep(_ reducer: GradientReducer, meanLoss: Double, failed: Bool = false, step: Int) throws -> Double {
        let g = pass.gradients
        let n = g.count
        let buf: FloatBlock
        if let b = reductionBuffer, b.count == n + 3 {
            buf = b
        } else {
            buf = try FloatBlock(count: n + 3)
            reductionBuffer = buf
        }
        if failed {
            buf.base.update(repeating: 0, count: n + 2)
        } else {
            buf.base.update(from: g.base, count: n)
            let hi = Float(meanLoss)
            buf.base[n] = hi
            buf.base[n + 1] = Float(meanLoss - Double(hi))
        }
        buf.base[n + 2] = failed ? 1 : 0
        try reducer.sumOverRanks(buf.buffer)
        let failures = buf.base[n + 2]
        if !failed, failures != 0 {
            throw LoRAError.invalidArgument(
                "another rank failed at step \(step) (\(failures) rank(s); see their message); every rank stops")
        }
        g.base.update(from: buf.base, count: n)
        return Double(buf.base[n]) + Double(buf.base[n + 1])
    }

    /// After a step's own work (validation, checkpoint, the callback), every
    /// rank learns whether any rank failed or asked to stop, so they all end
    /// together instead of waiting for a rank that has left. A rank's own
    /// error is rethrown as is; a stop ends every rank with `aborted`.
    func agreeAfterStep(_ reducer: GradientReducer, localError: Error?, stop: Bool, step: Int) throws {
        var flags: [Float] = [localError == nil ? 0 : 1, stop ? 1 : 0]
        try flags.withUnsafeMutableBufferPointer { try reducer.sumOverRanks($0) }
        if let localError { throw localError }
        if flags[0] != 0 {
            throw LoRAError.invalidArgument(
                "another rank failed after step \(step) (\(flags[0]) rank(s); see their message); every rank stops")
        }
        if flags[1] != 0 { throw LoRAError.aborted }
    }

    /// Sums (loss, tokens) of an evaluation over the ranks.
    /// A rank that failed (`failed`) still takes part; then the others throw.
    func reduceEvaluation(_ reducer: GradientReducer, loss: Double, tokens: Int, failed: Bool = false) throws -> (Double, Int) {
        func split(_ x: Double) -> (Float, Float) { let h = Float(x); return (h, Float(x - Double(h))) }
        let (lh, ll) = split(failed ? 0 : loss)
        let (th, tl) = split(failed ? 0 : Double(tokens))
        var buf: [Float] = [lh, ll, th, tl, failed ? 1 : 0]
        try buf.withUnsafeMutableBufferPointer { try reducer.sumOverRanks($0) }
        if failed { return (0, 0) }
        if buf[4] != 0 {
            throw LoRAError.invalidArgument("another rank failed to evaluate (\(buf[4]) rank(s); see their message); every rank stops")
        }
        let t = (Double(buf[2]) + Double(buf[3])).rounded()
        let l = Double(buf[0]) + Double(buf[1])
        guard t.isFinite, t >= 0, t < Double(Int32.max), let total = Int(exactly: t), l.isFinite else {
            throw LoRAError.numerical(
                "the gradient reducer returned \(l) for the summed loss and \(t) for the token count: not a sum over the ranks")
        }
        return (l, total)
    }
}
