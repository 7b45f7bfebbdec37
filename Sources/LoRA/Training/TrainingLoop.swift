import Foundation

/// What a training run reports after each optimizer step.
public struct TrainProgress: Sendable {
    public var step: Int
    public var maxSteps: Int
    /// Mean loss over the step's target tokens.
    public var loss: Double
    public var learningRate: Double
    public var gradNorm: Double
    public var tokensPerSecond: Double
    /// Validation loss when this step ran an evaluation.
    public var validationLoss: Double?
    /// The checkpoint written at this step, if any.
    public var checkpoint: String?
}

public struct EvaluationResult: Sendable, Equatable {
    /// Mean next-token loss (nats) over the target tokens.
    public var loss: Double
    public var perplexity: Double { Foundation.exp(loss) }
    public var tokens: Int
}

public struct TrainParams: Sendable {
    /// Evaluate on the validation set every N steps (0: only at the end).
    public var evalSteps = 0
    /// Write a checkpoint every N steps (0: never) into `checkpointDirectory`.
    public var saveSteps = 0
    public var checkpointDirectory: String? = nil
    /// Checkpoints kept (older ones are deleted).
    public var saveTotalLimit = 2
    public init() {}
}

extension Trainer {
    /// Mean loss and perplexity over a dataset (batches of the trainer's size).
    public func evaluate(_ data: Dataset) throws -> EvaluationResult {
        guard !data.examples.isEmpty else { throw LoRAError.invalidArgument("empty evaluation set") }
        var total = 0.0
        var tokens = 0
        var i = 0
        var k = 0
        // Distributed: batch k is evaluated by rank k mod N, and the sums reduced.
        let ranks = distributed
        var localError: Error?
        do {
            while i < data.examples.count {
                defer { i += config.batchSize; k += 1 }
                if let ranks, k % ranks.worldSize != ranks.rank { continue }
                let batch = Array(data.examples[i..<min(i + config.batchSize, data.examples.count)])
                let r = try loss(ids: batch.map(\.ids), labels: batch.map(\.labels))
                total += r.loss
                tokens += r.tokens
            }
        } catch {
            guard ranks != nil else { throw error }
            localError = error
        }
        // A rank that failed still joins the reduction (flagged): all stop together.
        if let ranks {
            (total, tokens) = try reduceEvaluation(ranks, loss: total, tokens: tokens, failed: localError != nil)
        }
        if let localError { throw localError }
        guard tokens > 0 else { throw LoRAError.invalidArgument("the evaluation set has no target token") }
        return EvaluationResult(loss: total / Double(tokens), tokens: tokens)
    }

    /// Trains until `config.maxSteps`, from where the trainer stands (a fresh
    /// run, earlier calls, or a restored checkpoint). The callback runs on the calling thread after
    /// each step; returning `.stop` stops the run after that step (throws
    /// `LoRAError.aborted`, state consistent). A non-finite loss or gradient
    /// stops with an error naming the step; the parameters keep their last
    /// good values.
    @discardableResult
    public func train(
        _ data: Dataset, validation: Dataset? = nil, options: TrainParams = TrainParams(),
        progress callback: ((TrainProgress) -> CallbackAction)? = nil
    ) throws -> TrainerState {
        guard !data.examples.isEmpty else { throw LoRAError.invalidArgument("the training set is empty") }
        guard data.tokenCount > 0 else { throw LoRAError.invalidArgument("the training set has no target token") }
        // A rank's dropout row offset holds for this run only: a later step() draws as one process.
        defer { pass.dropoutRowOffset = 0 }
        if options.saveSteps > 0, options.checkpointDirectory == nil {
            throw LoRAError.invalidArgument("save_steps needs a checkpoint directory")
        }
        let ranks = distributed
        if let ranks { try checkRanksAgree(ranks, data: data, validation: validation) }
        var p = state
        defer { epoch = p.epoch; offset = p.offset }
        var order = data.order(epoch: p.epoch, seed: config.seed)
        // Distributed: each micro-step takes B·N examples of the stream (the global micro-batch).
        let globalMicro = config.batchSize * (ranks?.worldSize ?? 1)
        func nextBatch() -> [TrainingExample] {
            var batch: [TrainingExample] = []
            while batch.count < globalMicro {
                if p.offset >= order.count {
                    p.epoch += 1
                    p.offset = 0
                    order = data.order(epoch: p.epoch, seed: config.seed)
                }
                batch.append(data.examples[order[p.offset]])
                p.offset += 1
            }
            return batch
        }
        while step < config.maxSteps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let saved = p
            let micro = (0..<config.gradientAccumulationSteps).map { _ in nextBatch() }
            let normalizer = micro.reduce(0) { $0 + Trainer.targetCount(ids: $1.map(\.ids), labels: $1.map(\.labels)) }
            var lossSum = 0.0
            var tokens = 0
            do {
                guard normalizer > 0 else { throw LoRAError.invalidArgument("step \(step + 1): the batch has no target token") }
                // A rank whose own work fails still joins the step's reduction
                // (flagged), so the others stop with it instead of waiting.
                var localError: Error?
                do {
                    for batch in micro {
                        tokens += batch.reduce(0) { $0 + $1.ids.count }
                        var mine = batch
                        pass.dropoutRowOffset = 0
                        if let ranks {
                            let rows = Trainer.shard(globalMicroBatch: batch.count, rank: ranks.rank, worldSize: ranks.worldSize)
                            mine = Array(batch[rows])
                            pass.dropoutRowOffset = rows.lowerBound
                        }
                        let r = try accumulate(ids: mine.map(\.ids), labels: mine.map(\.labels), normalizer: normalizer)
                        lossSum += r.loss
                    }
                } catch {
                    guard ranks != nil else { throw error }
                    localError = error
                }
                // The hook: gradients complete on this rank, summed over ranks before clipping and AdamW.
                if let ranks {
                    lossSum =
                        try reduceStep(ranks, meanLoss: lossSum / Double(normalizer), failed: localError != nil, step: step + 1)
                        * Double(normalizer)
                }
                if let localError { throw localError }
                guard lossSum.isFinite else {
                    throw LoRAError.numerical("loss is not finite at step \(step + 1); parameters kept from step \(step)")
                }
            } catch {
                pass.gradients.zero()
                p = saved
                rng.state = p.rngState
                if case LoRAError.numerical(let m) = error, !m.contains("step") {
                    throw LoRAError.numerical("\(m) at step \(step + 1); parameters kept from step \(step)")
                }
                throw error
            }
            let lr = learningRate(at: step)
            let norm: Double
            do { norm = try optimizerStep() } catch {
                p = saved
                rng.state = p.rngState
                throw error
            }
            p.step = step
            p.rngState = rng.state
            var report = TrainProgress(
                step: step, maxSteps: config.maxSteps, loss: lossSum / Double(normalizer),
                learningRate: lr, gradNorm: norm,
                tokensPerSecond: Double(tokens) / (Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9))
            if let validation, !validation.examples.isEmpty,
                (options.evalSteps > 0 && step % options.evalSteps == 0) || step == config.maxSteps
            {
                report.validationLoss = try evaluate(validation).loss
            }
            // Rank 0's checkpoint and every rank's callback are local: with
            // several ranks, a failure or a stop is agreed on before the next
            // step (one small reduction), so no rank is left waiting.
            var localError: Error?
            if options.saveSteps > 0, let dir = options.checkpointDirectory, (ranks?.rank ?? 0) == 0,
                step % options.saveSteps == 0 || step == config.maxSteps
            {
                epoch = p.epoch; offset = p.offset
                do {
                    report.checkpoint = try Checkpoint.save(self, root: dir)
                    Checkpoint.prune(root: dir, keep: options.saveTotalLimit)
                } catch {
                    guard ranks != nil else { throw error }
                    localError = error
                }
            }
            // The trainer's progress is current while the callback runs (it may save a checkpoint).
            epoch = p.epoch; offset = p.offset
            let stop = localError == nil && callback?(report) == .stop
            if let ranks {
                try agreeAfterStep(ranks, localError: localError, stop: stop, step: step)
            } else if stop {
                throw LoRAError.aborted
            }
        }
        if let ranks { try checkRanksInSync(ranks) }
        return p
    }
}
