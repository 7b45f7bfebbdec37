import CLoraSupport

// Splitting kernels across worker threads. OpenBLAS runs single-threaded
// (see CLoraSupport/blas.c); products, element-wise kernels and attention
// heads are split here instead, and run on liblora's own worker pool
// (CLoraSupport/pool.c: spinning workers, so a job starts within a
// microsecond; decode runs ~90 jobs a token).
// Work is split along independent outputs (rows, columns, heads), or along
// a reduction only where its parts are fixed by the shape and added in a
// fixed order (splitColumnsGemv): results do not depend on the thread count.

/// Runs `body(worker, range)` over `0..<count` cut into at most
/// `maxWorkers` (and the process's thread count) contiguous ranges of at
/// least `minChunk` items, whose bounds are multiples of `align` (except the
/// end). `worker` is in `0..<chunks`: an index for per-worker scratch.
/// Inside `body`, kernels run single-threaded (no nested splitting).
@inline(__always)
package func parallelChunks(
    _ count: Int, minChunk: Int = 1, align: Int = 1, maxWorkers: Int = .max,
    _ body: (_ worker: Int, _ range: Range<Int>) -> Void
) {
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
    // before lb_parallel_run does: the context outlives every call.
    withoutActuallyEscaping(body) { body in
        var job = ChunkJob(body: body, count: count, per: per)
        withUnsafeMutablePointer(to: &job) { p in
            lb_parallel_run(
                Int32(chunks),
                { ctx, c in
                    let job = ctx!.assumingMemoryBound(to: ChunkJob.self)
                    let i = Int(c)
                    let per = job.pointee.per
                    job.pointee.body(i, i * per..<min(job.pointee.count, (i + 1) * per))
                }, p)
        }
    }
}

private struct ChunkJob {
    let body: (_ worker: Int, _ range: Range<Int>) -> Void
    let count: Int
    let per: Int
}

/// The worker count `parallelChunks` may use now.
var computeThreads: Int { Int(lb_compute_threads()) }
