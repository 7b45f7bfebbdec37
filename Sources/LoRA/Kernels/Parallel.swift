import CLoraSupport
import Dispatch

// Splitting kernels across worker threads. OpenBLAS runs single-threaded
// (see CLoraSupport/blas.c); products, element-wise kernels and attention
// heads are split here instead, so no thread spins while another works.
// Work is only ever split along independent outputs (rows, columns, heads),
// never along a reduction: results do not depend on the thread count.

/// Runs `body(worker, range)` over `0..<count` cut into at most
/// `maxWorkers` (and the process's thread count) contiguous ranges of at
/// least `minChunk` items, whose bounds are multiples of `align` (except the
/// end). `worker` is in `0..<chunks`: an index for per-worker scratch.
/// Inside `body`, kernels run single-threaded (no nested splitting).
@inline(__always)
func parallelChunks(_ count: Int, minChunk: Int = 1, align: Int = 1, maxWorkers: Int = .max,
                    _ body: (_ worker: Int, _ range: Range<Int>) -> Void) {
    if count <= 0 { return }
    let threads = min(Int(lb_compute_threads()), maxWorkers)
    let workers = min(threads, count / max(1, minChunk))
    if workers <= 1 {
        body(0, 0..<count)
        return
    }
    let per = ((count + workers - 1) / workers + align - 1) / align * align
    let chunks = (count + per - 1) / per
    // The body writes disjoint parts of caller-owned buffers and returns
    // before concurrentPerform does: sending it to the workers is safe.
    withoutActuallyEscaping(body) { body in
        let work = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: chunks) { i in
            let was = lb_enter_parallel()
            work.value(i, i * per ..< min(count, (i + 1) * per))
            lb_leave_parallel(was)
        }
    }
}

private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The worker count `parallelChunks` may use now.
var computeThreads: Int { Int(lb_compute_threads()) }
