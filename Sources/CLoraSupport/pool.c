// liblora's worker threads: a small pool that runs the chunks of one job at
// a time (products split by rows or columns, attention heads, element-wise
// rows). It replaces DispatchQueue.concurrentPerform, whose wake-up of idle
// threads costs tens of microseconds per job: decode runs ~90 jobs a token
// of 50–400 µs each, and lost ~25% of its speed to those wake-ups on the
// Intel machine (37–45 tok/s against a 59 tok/s sweep of the same weights).
//
// Workers spin (with `pause`) for a short while after each job, so the next
// job of a decode or training step starts within a microsecond, then sleep
// on a futex. The caller runs chunks too and returns when all are done.
// Chunks are taken from a shared counter, so a worker that the OS delays
// takes fewer of them; which thread runs a chunk never changes its result
// (the chunk boundaries are the caller's).
//
// One job at a time: a second thread that submits while a job runs does its
// chunks itself, on its own thread (no waiting, same results).
#define _GNU_SOURCE
#include "lora_support.h"

#include <errno.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct lb_job {
    lb_chunk_fn fn;
    void *ctx;
    int chunks;
    _Atomic int next; // the next chunk to take
    _Atomic int done; // chunks finished
} lb_job;

static pthread_mutex_t submit_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t grow_lock = PTHREAD_MUTEX_INITIALIZER;
// The job being run (NULL between jobs) and a counter bumped for every job,
// which sleeping workers wait on.
static _Atomic(lb_job *) current = NULL;
static _Atomic uint32_t generation = 0;
// Workers between taking `current` and releasing it; the submitter waits
// for 0 before its job (on its stack) goes away.
static _Atomic int active = 0;
static _Atomic int sleepers = 0;
static _Atomic int n_workers = 0;

// How long an idle worker spins before it sleeps.
#define SPIN_NS 300000L

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

static void run_chunks(lb_job *j) {
    int c;
    while ((c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->chunks) {
        j->fn(j->ctx, c);
        atomic_fetch_add_explicit(&j->done, 1, memory_order_release);
    }
}

static void *worker_main(void *arg) {
    // Worker k is needed while the thread setting is above k + 1 (the caller
    // is the first thread); beyond it, it sleeps instead of spinning.
    int index = (int)(intptr_t)arg;
    lb_enter_parallel(); // kernels inside a chunk run single-threaded
    uint32_t seen = atomic_load(&generation);
    for (;;) {
        // Wait for a new job: spin first, then sleep.
        uint32_t g;
        long start = 0;
        int spins = 0;
        while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
            cpu_relax();
            if ((++spins & 63) == 0) {
                long t = now_ns();
                if (start == 0) start = t;
                if (t - start > SPIN_NS || index + 1 >= lb_thread_setting()) {
                    atomic_fetch_add(&sleepers, 1);
                    if (atomic_load(&generation) == seen)
                        syscall(SYS_futex, &generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                    atomic_fetch_sub(&sleepers, 1);
                    start = 0;
                }
            }
        }
        seen = g;
        atomic_fetch_add(&active, 1);
        lb_job *j = atomic_load(&current);
        if (j) run_chunks(j);
        atomic_fetch_sub(&active, 1);
    }
    return NULL;
}

// fork(): the child has none of the parent's workers and may have copied a
// job in flight (active > 0, locks held). It starts with an empty pool.
static void after_fork_in_child(void) {
    pthread_mutex_init(&submit_lock, NULL);
    pthread_mutex_init(&grow_lock, NULL);
    atomic_store(&current, NULL);
    atomic_store(&active, 0);
    atomic_store(&sleepers, 0);
    atomic_store(&n_workers, 0);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void install_atfork(void) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

// Starts workers until there are `want` (best effort: a failed
// pthread_create leaves fewer, and the callers run the rest).
static void grow(int want) {
    if (atomic_load_explicit(&n_workers, memory_order_acquire) >= want) return;
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&grow_lock);
    while (atomic_load(&n_workers) < want) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)atomic_load(&n_workers));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        atomic_fetch_add(&n_workers, 1);
    }
    pthread_mutex_unlock(&grow_lock);
}

void lb_parallel_run(int chunks, lb_chunk_fn fn, void *ctx) {
    if (chunks <= 0) return;
    int was = lb_enter_parallel();
    if (chunks == 1 || was || pthread_mutex_trylock(&submit_lock) != 0) {
        for (int c = 0; c < chunks; c++) fn(ctx, c);
        lb_leave_parallel(was);
        return;
    }
    grow(chunks - 1 < LB_MAX_THREADS ? chunks - 1 : LB_MAX_THREADS);
    lb_job job = {.fn = fn, .ctx = ctx, .chunks = chunks};
    atomic_init(&job.next, 0);
    atomic_init(&job.done, 0);
    atomic_store(&current, &job);
    atomic_fetch_add(&generation, 1); // seq_cst: pairs with the sleepers' increment before they sleep
    // Wake at most the workers this job can use (sleeping ones beyond them stay asleep).
    if (atomic_load(&sleepers) > 0) syscall(SYS_futex, &generation, FUTEX_WAKE_PRIVATE, chunks - 1, NULL, NULL, 0);
    run_chunks(&job);
    // Wait for the chunks other threads took; yield now and then so that a
    // worker the OS put on this CPU can finish.
    int spins = 0;
    while (atomic_load_explicit(&job.done, memory_order_acquire) < chunks) {
        cpu_relax();
        if ((++spins & 1023) == 0) sched_yield();
    }
    atomic_store(&current, NULL);
    spins = 0;
    while (atomic_load(&active) > 0) {
        cpu_relax();
        if ((++spins & 1023) == 0) sched_yield(); // a worker the OS preempted between its chunk and here
    }
    pthread_mutex_unlock(&submit_lock);
    lb_leave_parallel(was);
}

// The lock of the C ABI's table of live handles (Sources/LoraCAPI). A child
// of fork() starts with it unlocked: a thread of the parent may have held it.
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t handles_once = PTHREAD_ONCE_INIT;
static void handles_after_fork_in_child(void) {
    pthread_mutex_init(&handles_lock, NULL);
}
static void handles_install_atfork(void) {
    pthread_atfork(NULL, NULL, handles_after_fork_in_child);
}

void lb_handles_lock(void) {
    pthread_once(&handles_once, handles_install_atfork);
    pthread_mutex_lock(&handles_lock);
}

void lb_handles_unlock(void) {
    pthread_mutex_unlock(&handles_lock);
}
