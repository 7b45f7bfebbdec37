import Foundation

/// What a training run reports after each optimizer step.
public struct TrainingReport: Sendable {
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

public struct TrainingRunOptions: Sendable {
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
        guard !data.examples.isEmpty else { throw LoraError.invalidArgument("empty evaluation set") }
        var total = 0.0, tokens = 0
        var i = 0
        while i < data.examples.count {
            let batch = Array(data.examples[i..<min(i + config.batchSize, data.examples.count)])
            let r = try loss(ids: batch.map(\.ids), labels: batch.map(\.labels))
            total += r.loss
            tokens += r.tokens
            i += config.batchSize
        }
        guard tokens > 0 else { throw LoraError.invalidArgument("the evaluation set has no target token") }
        return EvaluationResult(loss: total / Double(tokens), tokens: tokens)
    }

    /// Trains until `config.maxSteps`, from where the trainer stands (a fresh
    /// run, earlier calls, or a restored checkpoint). The callback runs on the calling thread after
    /// each step; returning false stops the run after that step (throws
    /// `LoraError.aborted`, state consistent). A non-finite loss or gradient
    /// stops with an error naming the step; the parameters keep their last
    /// good values.
    @discardableResult
    public func train(_ data: Dataset, validation: Dataset? = nil, options: TrainingRunOptions = TrainingRunOptions(),
                      progress callback: ((TrainingReport) -> Bool)? = nil) throws -> TrainingProgress {
        guard !data.examples.isEmpty else { throw LoraError.invalidArgument("the training set is empty") }
        guard data.tokenCount > 0 else { throw LoraError.invalidArgument("the training set has no target token") }
        if options.saveSteps > 0, options.checkpointDirectory == nil {
            throw LoraError.invalidArgument("save_steps needs a checkpoint directory")
        }
        var p = progress
        defer { epoch = p.epoch; offset = p.offset }
        var order = data.order(epoch: p.epoch, seed: config.seed)
        func nextBatch() -> [TrainingExample] {
            var batch: [TrainingExample] = []
            while batch.count < config.batchSize {
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
            var lossSum = 0.0, tokens = 0
            do {
                guard normalizer > 0 else { throw LoraError.invalidArgument("step \(step + 1): the batch has no target token") }
                for batch in micro {
                    let r = try accumulate(ids: batch.map(\.ids), labels: batch.map(\.labels), normalizer: normalizer)
                    lossSum += r.loss
                    tokens += batch.reduce(0) { $0 + $1.ids.count }
                }
                guard lossSum.isFinite else {
                    throw LoraError.numerical("loss is not finite at step \(step + 1); parameters kept from step \(step)")
                }
            } catch {
                pass.gradients.zero()
                p = saved
                rng.state = p.rngState
                if case LoraError.numerical(let m) = error, !m.contains("step") {
                    throw LoraError.numerical("\(m) at step \(step + 1); parameters kept from step \(step)")
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
            var report = TrainingReport(step: step, maxSteps: config.maxSteps, loss: lossSum / Double(normalizer),
                                        learningRate: lr, gradNorm: norm,
                                        tokensPerSecond: Double(tokens) / (Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9))
            if let validation, !validation.examples.isEmpty,
               (options.evalSteps > 0 && step % options.evalSteps == 0) || step == config.maxSteps {
                report.validationLoss = try evaluate(validation).loss
            }
            if options.saveSteps > 0, let dir = options.checkpointDirectory,
               step % options.saveSteps == 0 || step == config.maxSteps {
                epoch = p.epoch; offset = p.offset
                report.checkpoint = try Checkpoint.save(self, root: dir)
                Checkpoint.prune(root: dir, keep: options.saveTotalLimit)
            }
            // The trainer's progress is current while the callback runs (it may save a checkpoint).
            epoch = p.epoch; offset = p.offset
            if let callback, !callback(report) { throw LoraError.aborted }
        }
        return p
    }
}
