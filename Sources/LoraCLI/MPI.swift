import ArgumentParser
import CMPI
import Foundation
import LoRA

/// `lora train --distributed`: auto (MPI when started by mpirun), mpi (required), none (one process).
enum DistributedMode: String, ExpressibleByArgument, CaseIterable {
    case auto, mpi, none
}

/// Data-parallel `lora train` over Open MPI (`mpirun -np N lora train ...`).
/// The core only sees a `GradientReducer`; this file is the one place that
/// calls MPI (the `lora` command links libmpi, liblora.so does not).
///
/// Detected from `OMPI_COMM_WORLD_SIZE` (set by mpirun) or asked for with
/// `--distributed mpi`; `--distributed none` runs one process even under mpirun.
/// Rank 0 alone prints progress and writes metrics, loss.svg, checkpoints and
/// the output; the other ranks print only errors, prefixed with their rank.
final class MPIReducer: GradientReducer, @unchecked Sendable {
    let rank: Int
    let worldSize: Int
    /// Time spent in MPI_Allreduce and the bytes reduced (for the scaling figures).
    private(set) var seconds = 0.0
    private(set) var bytes = 0
    private(set) var calls = 0
    /// (floats, seconds) of every call.
    private(set) var timings: [(Int, Double)] = []
    private var finalized = false

    init() throws {
        var provided: Int32 = 0
        let rc = MPI_Init_thread(nil, nil, cmpi_thread_funneled(), &provided)
        guard rc == cmpi_success() else { throw LoRAError.backend("MPI_Init_thread failed (\(MPIReducer.describe(rc)))") }
        _ = cmpi_errors_return()
        var r: Int32 = 0
        var s: Int32 = 0
        MPI_Comm_rank(cmpi_comm_world(), &r)
        MPI_Comm_size(cmpi_comm_world(), &s)
        rank = Int(r)
        worldSize = Int(s)
    }

    static func describe(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var len: Int32 = 0
        _ = cmpi_error_string(code, &buf, &len)
        let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    func sumOverRanks(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        guard let n = Int32(exactly: buffer.count) else {
            throw LoRAError.invalidArgument("a reduction of \(buffer.count) floats exceeds MPI's int count")
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let rc = cmpi_allreduce_sum_float(base, n)
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        seconds += dt
        bytes += buffer.count * 4
        calls += 1
        timings.append((buffer.count, dt))
        guard rc == cmpi_success() else {
            throw LoRAError.backend("MPI_Allreduce failed on rank \(rank) (\(MPIReducer.describe(rc))): another rank has probably stopped")
        }
    }

    func finalize() {
        guard !finalized else { return }
        finalized = true
        MPI_Finalize()
    }
}

/// The `lora train` side of a distributed run.
enum DistributedRun {
    /// The MPI reducer of this run, or nil for one process.
    nonisolated(unsafe) static var current: MPIReducer?

    static var isRoot: Bool { (current?.rank ?? 0) == 0 }

    /// Starts MPI when asked (`--distributed mpi`) or when run by mpirun.
    static func start(option: DistributedMode) throws -> MPIReducer? {
        let env = ProcessInfo.processInfo.environment
        let underMPIRun = env["OMPI_COMM_WORLD_SIZE"] != nil
        switch option {
        case .auto: if !underMPIRun { return nil }
        case .none: return nil
        case .mpi:
            guard underMPIRun else {
                throw LoRAError.invalidArgument(
                    "--distributed mpi: this process was not started by mpirun (OMPI_COMM_WORLD_SIZE is not set); run `mpirun -np N lora train ...`"
                )
            }
        }
        let r = try MPIReducer()
        current = r
        installTerminationMessage(rank: r.rank)
        if r.rank != 0 {
            // Progress and results are rank 0's; the others keep stderr for errors.
            let null = open("/dev/null", O_WRONLY)
            if null >= 0 { dup2(null, STDOUT_FILENO); close(null) }
        }
        return r
    }

    /// Runs `lora train`'s body, distributed when asked or under mpirun.
    static func run(option: DistributedMode, _ body: () throws -> Void) throws {
        guard try start(option: option) != nil else { return try body() }
        do { try body() } catch let code as ExitCode {
            // Ctrl-C under mpirun (130, after rank 0 saved its checkpoint): not an error; end every rank with it.
            _ = cmpi_abort(code.rawValue)
            exit(code.rawValue)
        } catch { fail(String(describing: error)) }
        finish()
    }

    /// Every rank calls this after loading its data: if one failed, all stop with a message.
    static func agree(task: String = "read its data", _ body: () throws -> Void) throws {
        guard let r = current else { return try body() }
        var failure: Error?
        do { try body() } catch { failure = error }
        try r.agree(localError: failure, task: task)
    }

    static func announce(_ tc: TrainerParams) {
        guard let r = current else { return }
        say(
            "data-parallel over MPI: \(r.worldSize) ranks × batch \(tc.batchSize) × accumulation \(tc.gradientAccumulationSteps) = global batch \(r.worldSize * tc.batchSize * tc.gradientAccumulationSteps)"
        )
    }

    /// The step reductions (the largest buffers): bytes, median and minimum
    /// time. A call's time includes waiting for the slowest rank; the minimum
    /// comes closest to the transfer alone.
    static func summary(steps: Int) {
        guard let r = current, r.rank == 0 else { return }
        guard let largest = r.timings.map(\.0).max() else { return }
        let times = r.timings.filter { $0.0 == largest }.map(\.1).sorted()
        guard !times.isEmpty else { return }
        say(
            String(
                format:
                    "distributed: %d ranks; allreduce of %.3f MB a step: median %.2f ms, min %.2f ms over %d steps (%d calls, %.2f s in all)",
                r.worldSize, Double(largest * 4) / 1e6, 1000 * times[times.count / 2], 1000 * times[0], times.count,
                r.calls, r.seconds))
    }

    /// After success: every rank finalizes.
    static func finish() { current?.finalize() }

    /// After an error on this rank: print it with the rank, then finalize if
    /// every rank stopped too (a collective error), or abort the whole job
    /// after a few seconds (a rank the others still wait for).
    static func fail(_ message: String) -> Never {
        guard let r = current else {
            FileHandle.standardError.write(Data("lora: error: \(message)\n".utf8))
            exit(1)
        }
        FileHandle.standardError.write(Data("lora: error: rank \(r.rank) of \(r.worldSize): \(message)\n".utf8))
        let rank = r.rank
        let t = Thread {
            Thread.sleep(forTimeInterval: 5)
            FileHandle.standardError.write(Data("lora: rank \(rank): the other ranks did not stop; aborting the job\n".utf8))
            _ = cmpi_abort(1)
            _exit(1)
        }
        t.start()
        r.finalize()
        exit(1)
    }

    /// mpirun ends the surviving ranks with SIGTERM when one dies: say so.
    static func installTerminationMessage(rank: Int) {
        let text =
            "lora: rank \(rank): stopped by the MPI launcher (another rank exited or was killed, or the job was interrupted); resume from the last checkpoint with --resume\n"
        terminationMessage = strdup(text)
        terminationLength = text.utf8.count
        signal(SIGTERM) { _ in
            if let m = terminationMessage { _ = write(STDERR_FILENO, m, terminationLength) }
            _exit(143)
        }
    }
}

nonisolated(unsafe) private var terminationMessage: UnsafeMutablePointer<CChar>?
nonisolated(unsafe) private var terminationLength = 0
