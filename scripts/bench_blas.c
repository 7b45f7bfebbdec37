// The F32 products of GPT-2 124M on each BLAS this machine has, side by side:
// OpenBLAS (what liblora uses), BLIS and oneDNN, the Debian packages the
// speed issue names as alternatives. Built and run by scripts/bench_blas.sh.
//
// Each library is dlopen-ed (a missing one is reported and skipped) and runs
// the model's products in two ways:
// - "split": THREADS pthreads, each calling the library single-threaded on its
//   own slice of the output columns — how liblora runs OpenBLAS (never a
//   split along the sum, so results do not depend on the thread count);
// - "own": one call with the library's own THREADS threads.
// Shapes (row-major C[M,N] = A[M,K]·op(B)): forward x·W for the four Conv1D
// weights and the tied LM head x·wteᵀ at M rows; the backward data
// gradients dY·Wᵀ at the same M. Every library's result is checked against
// OpenBLAS's (relative difference ≤ 1e-4) before it is timed.
//
//   bench_blas [M=512] [THREADS=2] [split|own]   one JSON line per library, mode, shape
// (OpenMP-threaded libraries take OMP_NUM_THREADS: 1 for split, THREADS for own.)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void cblas_sgemm_fn(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                            int);
typedef int dnnl_sgemm_fn(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *, int64_t,
                          float, float *, int64_t);

typedef struct {
    const char *name;
    cblas_sgemm_fn *cblas;
    dnnl_sgemm_fn *dnnl;
    void (*set_threads)(int);
    void (*blis_set_threads)(int64_t);
    char *(*openblas_core)(void);
    const char *(*blis_arch)(int);
    int (*blis_arch_id)(void);
} lib_t;

static void gemm(const lib_t *l, int transb, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                 float *c, int ldc) {
    if (l->cblas)
        l->cblas(ROW_MAJOR, NO_TRANS, transb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
    else
        l->dnnl('N', transb == TRANS ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

static void set_lib_threads(const lib_t *l, int t) {
    if (l->set_threads) l->set_threads(t);
    if (l->blis_set_threads) l->blis_set_threads(t);
}

typedef struct {
    const lib_t *l;
    int transb, m, n, k, j0, j1;
    const float *a, *b;
    float *c;
    int lda, ldb, ldc;
} job_t;

static void run_job(const job_t *j) {
    const float *b = j->transb == TRANS ? j->b + (size_t)j->j0 * j->ldb : j->b + j->j0;
    gemm(j->l, j->transb, j->m, j->j1 - j->j0, j->k, j->a, j->lda, b, j->ldb, j->c + j->j0, j->ldc);
}

static void *thread_main(void *p) {
    run_job(p);
    return NULL;
}

// One product: split across `threads` pthreads by output columns (multiples of
// 16), or a single call with the library's own threads.
static void product(const lib_t *l, int split, int threads, int transb, int m, int n, int k, const float *a,
                    const float *b, float *c) {
    int ldb = transb == TRANS ? k : n;
    if (!split || threads == 1) {
        gemm(l, transb, m, n, k, a, k, b, ldb, c, n);
        return;
    }
    job_t jobs[64] = {0};
    pthread_t tids[64];
    int per = ((n + threads - 1) / threads + 15) / 16 * 16;
    for (int t = 0; t < threads; t++) {
        int j0 = t * per < n ? t * per : n, j1 = (t + 1) * per < n ? (t + 1) * per : n;
        jobs[t] = (job_t){l, transb, m, n, k, j0, j1, a, b, c, k, ldb, n};
    }
    for (int t = 1; t < threads; t++) pthread_create(&tids[t], NULL, thread_main, &jobs[t]);
    run_job(&jobs[0]);
    for (int t = 1; t < threads; t++) pthread_join(tids[t], NULL);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static float *random_floats(size_t n, unsigned seed) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_blas: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = ((float)((seed >> 9) % 2001) / 1000.0f - 1.0f) * 0.05f;
    }
    return p;
}

static int name_in(const char *s, const char *const *list) {
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

// The same rule as liblora's lb_preferred_core (CLoraSupport/blas.c).
static const char *preferred_core(const char *reported) {
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    if (reported == NULL) return NULL;
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f"),
        avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx512 && !name_in(reported, avx512_cores)) return "SkylakeX";
    if (!avx512 && avx2 && !name_in(reported, avx2_cores)) return "Haswell";
    return NULL;
}

static int load(lib_t *l, const char *name) {
    memset(l, 0, sizeof *l);
    l->name = name;
    void *h;
    if (strcmp(name, "openblas") == 0) {
        if (!(h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL))) return 0;
        l->openblas_core = (char *(*)(void))dlsym(h, "openblas_get_corename");
        // The kernels liblora runs: where OPENBLAS_CORETYPE is unset and
        // OpenBLAS misdetects the CPU, liblora reloads it with the core
        // lb_preferred_core picks (blas.c); so does this benchmark.
        const char *want = preferred_core(l->openblas_core ? l->openblas_core() : NULL);
        if (want && !getenv("OPENBLAS_CORETYPE")) {
            dlclose(h);
            setenv("OPENBLAS_CORETYPE", want, 1);
            h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
            unsetenv("OPENBLAS_CORETYPE");
            if (!h) return 0;
            l->openblas_core = (char *(*)(void))dlsym(h, "openblas_get_corename");
        }
        l->cblas = (cblas_sgemm_fn *)dlsym(h, "cblas_sgemm");
        l->set_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
    } else if (strcmp(name, "blis") == 0) {
        if (!(h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL))) return 0;
        l->cblas = (cblas_sgemm_fn *)dlsym(h, "cblas_sgemm");
        l->blis_set_threads = (void (*)(int64_t))dlsym(h, "bli_thread_set_num_threads");
        l->blis_arch = (const char *(*)(int))dlsym(h, "bli_arch_string");
        l->blis_arch_id = (int (*)(void))dlsym(h, "bli_arch_query_id");
    } else {
        if (!(h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL))) return 0;
        l->dnnl = (dnnl_sgemm_fn *)dlsym(h, "dnnl_sgemm");
    }
    return l->cblas || l->dnnl;
}

int main(int argc, char **argv) {
    int m = argc > 1 ? atoi(argv[1]) : 512, threads = argc > 2 ? atoi(argv[2]) : 2;
    int split = argc > 3 ? strcmp(argv[3], "own") != 0 : 1;
    if (m < 1 || m > 8192 || threads < 1 || threads > 64 || (argc > 3 && split && strcmp(argv[3], "split"))) {
        fprintf(stderr, "usage: bench_blas [M 1..8192] [THREADS 1..64] [split|own]\n");
        return 2;
    }
    const int n_embd = 768, n_vocab = 50257;
    struct {
        const char *name;
        int transb, n, k;
    } shapes[] = {
        {"c_attn", NO_TRANS, 3 * n_embd, n_embd},     {"attn.c_proj", NO_TRANS, n_embd, n_embd},
        {"mlp.c_fc", NO_TRANS, 4 * n_embd, n_embd},   {"mlp.c_proj", NO_TRANS, n_embd, 4 * n_embd},
        {"lm_head", TRANS, n_vocab, n_embd},          {"c_attn.dx", TRANS, n_embd, 3 * n_embd},
        {"attn.c_proj.dx", TRANS, n_embd, n_embd},    {"mlp.c_fc.dx", TRANS, n_embd, 4 * n_embd},
        {"mlp.c_proj.dx", TRANS, 4 * n_embd, n_embd},
    };
    const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    float *a = random_floats((size_t)m * 4 * n_embd, 1u);
    float *b = random_floats((size_t)n_vocab * n_embd, 2u);
    float *c = random_floats((size_t)m * n_vocab, 3u);
    float *ref = random_floats((size_t)m * n_vocab, 4u);
    lib_t libs[3];
    const char *names[] = {"openblas", "blis", "onednn"};
    int loaded[3];
    for (int i = 0; i < 3; i++) {
        loaded[i] = load(&libs[i], names[i]);
        if (!loaded[i]) printf("{\"library\":\"%s\",\"error\":\"not loadable: %s\"}\n", names[i], dlerror());
    }
    if (!loaded[0]) return 1;
    for (int i = 0; i < 3; i++) {
        if (!loaded[i]) continue;
        const lib_t *l = &libs[i];
        char info[96] = "";
        if (l->openblas_core) snprintf(info, sizeof info, ",\"core\":\"%s\"", l->openblas_core());
        if (l->blis_arch && l->blis_arch_id)
            snprintf(info, sizeof info, ",\"arch\":\"%s\"", l->blis_arch(l->blis_arch_id()));
        {
            set_lib_threads(l, split ? 1 : threads);
            double total_flop = 0, total_s = 0;
            for (int s = 0; s < n_shapes; s++) {
                int n = shapes[s].n, k = shapes[s].k, tb = shapes[s].transb;
                set_lib_threads(&libs[0], 1);
                product(&libs[0], 1, threads, tb, m, n, k, a, b, ref);
                set_lib_threads(l, split ? 1 : threads);
                product(l, split, threads, tb, m, n, k, a, b, c);
                double worst = 0;
                for (size_t x = 0; x < (size_t)m * n; x++) {
                    double d = fabs((double)c[x] - ref[x]) / (1e-3 + fabs((double)ref[x]));
                    if (d > worst) worst = d;
                }
                if (worst > 1e-4) {
                    printf("{\"library\":\"%s\",\"shape\":\"%s\",\"error\":\"differs from OpenBLAS by %.3g\"}\n",
                           l->name, shapes[s].name, worst);
                    continue;
                }
                double flop = 2.0 * m * n * k, times[64];
                int reps = 0;
                double start = now();
                while (reps < 64 && (reps < 5 || now() - start < 0.6)) {
                    double t0 = now();
                    product(l, split, threads, tb, m, n, k, a, b, c);
                    times[reps++] = now() - t0;
                }
                qsort(times, reps, sizeof times[0], cmp_double);
                double med = times[reps / 2];
                total_flop += flop;
                total_s += med;
                printf("{\"library\":\"%s\"%s,\"mode\":\"%s\",\"threads\":%d,\"M\":%d,\"shape\":\"%s\","
                       "\"gflop_per_s\":%.1f}\n",
                       l->name, info, split ? "split" : "own", threads, m, shapes[s].name, flop / med * 1e-9);
            }
            printf("{\"library\":\"%s\"%s,\"mode\":\"%s\",\"threads\":%d,\"M\":%d,\"shape\":\"all\","
                   "\"gflop_per_s\":%.1f}\n",
                   l->name, info, split ? "split" : "own", threads, m, total_flop / total_s * 1e-9);
            fflush(stdout);
        }
    }
    free(a);
    free(b);
    free(c);
    free(ref);
    return 0;
}
