// Run-time loading of OpenBLAS and LAPACKE.
//
// Debian's OpenBLAS 0.3.21 does not know some recent CPUs and silently falls
// back to SSE3 ("Prescott") kernels, ~5x slower than its AVX-512 ones. The
// kernel set is chosen by OpenBLAS's library constructor from
// OPENBLAS_CORETYPE, so it must be decided before the library is loaded: we
// load it, ask which core it picked, and when that core is older than what
// the CPU supports (and the user did not set OPENBLAS_CORETYPE), unload it
// and load it again with the variable set.
#define _GNU_SOURCE
#include "lora_support.h"

#include "blas_abi.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int load_status = 1;
static char load_error[512] = "OpenBLAS not loaded yet";
static char core_initial[64] = "";
static char core_now[64] = "";
static int core_chosen = 0;
// Worker threads of liblora's own kernels (OpenBLAS itself runs single-threaded).
static _Atomic int compute_threads = 1;
static _Thread_local int in_parallel_region = 0;

static sgemm_fn *p_sgemm;
static sgemv_fn *p_sgemv;
static corename_fn *p_corename;
static config_fn *p_config;
static get_threads_fn *p_get_threads;
static set_threads_fn *p_set_threads;
static sgesdd_fn *p_sgesdd;
static sgeqrf_fn *p_sgeqrf;
static sorgqr_fn *p_sorgqr;

// oneDNN's sgemm instead of OpenBLAS's where libdnnl.so.2 is installed
// (Debian's libdnnl2) and gives the right product; LORA_SGEMM=openblas in
// the environment keeps OpenBLAS. Each call holds oneDNN's OpenMP to one
// thread, as OpenBLAS is held, and each worker splits the product by
// columns as before: single-threaded
// dnnl_sgemm gives the same bits whatever the split (checked for x·W and
// x·Wᵀ at M = 7–1024 on the model's shapes), so results stay independent of
// the thread count.
// Measured faster on Intel Emerald Rapids and on AMD EPYC (Zen 4), not yet
// on the AMX kind: see the README (Speed).
typedef int dnnl_sgemm_fn(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *, int64_t,
                          float, float *, int64_t);
static dnnl_sgemm_fn *p_dnnl_sgemm;
static void (*p_omp_set_num_threads)(int);
static int (*p_omp_get_max_threads)(void);

// dnnl_sgemm on one thread; the calling thread's OpenMP setting (the host's,
// when it is the host's thread) is put back afterwards. 0 on success.
static int dnnl_sgemm_1(char ta, char tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                        int ldb, float beta, float *c, int ldc) {
    int was = p_omp_get_max_threads();
    if (was != 1) p_omp_set_num_threads(1);
    int status = p_dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (was != 1) p_omp_set_num_threads(was);
    return status;
}

static const char *const openblas_names[] = {"libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0", NULL};
static const char *const lapacke_names[] = {"liblapacke.so.3", "liblapacke.so", NULL};

int lb_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

// With F16C, which liblora's AVX2 kernels also use (BF16/F16/Q8_0 weights):
// every CPU with AVX2 and FMA has it.
int lb_cpu_has_avx2_fma(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

static int name_in(const char *name, const char *const *list) {
    for (; *list; list++)
        if (strcasecmp(name, *list) == 0) return 1;
    return 0;
}

const char *lb_preferred_core(const char *reported, int has_avx512, int has_avx2_fma) {
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    if (reported == NULL) return NULL;
    if (has_avx512 && !name_in(reported, avx512_cores)) return "SkylakeX";
    if (!has_avx512 && has_avx2_fma && !name_in(reported, avx2_cores)) return "Haswell";
    return NULL;
}

static void *open_first(const char *const *names, int flags) {
    for (; *names; names++) {
        void *h = dlopen(*names, flags);
        if (h) return h;
    }
    return NULL;
}

static int resolve_openblas(void *h) {
    p_sgemm = (sgemm_fn *)dlsym(h, "cblas_sgemm");
    p_sgemv = (sgemv_fn *)dlsym(h, "cblas_sgemv");
    p_corename = (corename_fn *)dlsym(h, "openblas_get_corename");
    p_config = (config_fn *)dlsym(h, "openblas_get_config");
    p_get_threads = (get_threads_fn *)dlsym(h, "openblas_get_num_threads");
    p_set_threads = (set_threads_fn *)dlsym(h, "openblas_set_num_threads");
    return p_sgemm && p_sgemv;
}

static void copy_core(char *dst) {
    const char *c = p_corename ? p_corename() : "unknown";
    snprintf(dst, 64, "%s", c ? c : "unknown");
}

// One small product against a naive one: the kernel set must compute right.
static int sgemm_agrees(int dnnl) {
    enum { M = 19, N = 23, K = 37 };
    float a[M * K], b[K * N], c[M * N];
    unsigned s = 12345u;
    for (int i = 0; i < M * K; i++) {
        s = s * 1103515245u + 12345u;
        a[i] = (float)((s >> 9) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < K * N; i++) {
        s = s * 1103515245u + 12345u;
        b[i] = (float)((s >> 9) % 2001) / 1000.0f - 1.0f;
    }
    if (dnnl) {
        if (dnnl_sgemm_1('N', 'N', M, N, K, 1.0f, a, K, b, N, 0.0f, c, N) != 0) return 0;
    } else
        p_sgemm(LB_ROW_MAJOR, LB_NO_TRANS, LB_NO_TRANS, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = 0;
            for (int k = 0; k < K; k++) ref += (double)a[i * K + k] * b[k * N + j];
            if (fabs(ref - c[i * N + j]) > 1e-4 * (1 + fabs(ref))) return 0;
        }
    return 1;
}

// oneDNN is opened on the first product that may use it, not at load: a
// process that never multiplies many rows at once (decode, short prompts:
// the few-row kernels) does not map it, which kept `lora generate`'s peak
// RSS 9 MiB lower (bf16 2 + 4 tokens: 290 → 281 MiB, AMD EPYC).
static int dnnl_wanted;
static pthread_once_t dnnl_once = PTHREAD_ONCE_INIT;

static void load_dnnl(void) {
    if (!dnnl_wanted) return;
    void *dn = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!dn) return;
    p_dnnl_sgemm = (dnnl_sgemm_fn *)dlsym(dn, "dnnl_sgemm");
    p_omp_set_num_threads = (void (*)(int))dlsym(dn, "omp_set_num_threads");
    p_omp_get_max_threads = (int (*)(void))dlsym(dn, "omp_get_max_threads");
    if (!p_dnnl_sgemm || !p_omp_set_num_threads || !p_omp_get_max_threads || !sgemm_agrees(1)) p_dnnl_sgemm = NULL;
}

// Whether oneDNN runs the products (opening it the first time).
static int dnnl_ready(void) {
    pthread_once(&dnnl_once, load_dnnl);
    return p_dnnl_sgemm != NULL;
}

static void do_load(void) {
    const int flags = RTLD_NOW | RTLD_LOCAL;
    void *h = open_first(openblas_names, flags);
    if (!h) {
        snprintf(load_error, sizeof load_error,
                 "cannot load OpenBLAS (libopenblas.so.0): %s; install libopenblas0 "
                 "(scripts/bootstrap.sh does)",
                 dlerror());
        return;
    }
    if (!resolve_openblas(h)) {
        snprintf(load_error, sizeof load_error, "OpenBLAS lacks cblas_sgemm/cblas_sgemv");
        return;
    }
    copy_core(core_initial);
    const char *user = getenv("OPENBLAS_CORETYPE");
    const char *want = NULL;
    if (user == NULL || user[0] == 0)
        want = lb_preferred_core(core_initial, lb_cpu_has_avx512(), lb_cpu_has_avx2_fma());
    if (want) {
        dlclose(h);
        void *still = open_first(openblas_names, RTLD_NOW | RTLD_NOLOAD);
        if (still) {
            // Someone else (the host) holds OpenBLAS: its kernels are fixed.
            h = still;
        } else {
            setenv("OPENBLAS_CORETYPE", want, 1);
            h = open_first(openblas_names, flags);
            unsetenv("OPENBLAS_CORETYPE");
            if (!h || !resolve_openblas(h)) {
                snprintf(load_error, sizeof load_error, "cannot reload OpenBLAS with core %s", want);
                return;
            }
            core_chosen = 1;
            if (!sgemm_agrees(0)) {
                // The forced kernels compute wrong results: go back to OpenBLAS's choice.
                dlclose(h);
                h = open_first(openblas_names, flags);
                core_chosen = 0;
                if (!h || !resolve_openblas(h)) {
                    snprintf(load_error, sizeof load_error, "cannot reload OpenBLAS");
                    return;
                }
            }
        }
        resolve_openblas(h);
    }
    copy_core(core_now);
    if (!sgemm_agrees(0)) {
        snprintf(load_error, sizeof load_error, "OpenBLAS (core %s) computes a wrong matrix product", core_now);
        return;
    }
    const char *sg = getenv("LORA_SGEMM");
    dnnl_wanted = !sg || strcmp(sg, "openblas") != 0;
    void *l = open_first(lapacke_names, flags);
    if (l) {
        p_sgesdd = (sgesdd_fn *)dlsym(l, "LAPACKE_sgesdd");
        p_sgeqrf = (sgeqrf_fn *)dlsym(l, "LAPACKE_sgeqrf");
        p_sorgqr = (sorgqr_fn *)dlsym(l, "LAPACKE_sorgqr");
    }
    // liblora splits every product across its own workers (concurrent
    // single-threaded calls): OpenBLAS's threads would only spin while the
    // element-wise kernels and attention run in parallel.
    int t = p_get_threads ? p_get_threads() : 1;
    atomic_store(&compute_threads, t < 1 ? 1 : (t > LB_MAX_THREADS ? LB_MAX_THREADS : t));
    if (p_set_threads) p_set_threads(1);
    load_status = 0;
    load_error[0] = 0;
}

int lb_load(void) {
    pthread_once(&once, do_load);
    return load_status;
}

const char *lb_load_error(void) {
    return load_error;
}
const char *lb_corename(void) {
    lb_load();
    return core_now;
}
const char *lb_corename_initial(void) {
    lb_load();
    return core_initial;
}
int lb_sgemm_is_onednn(void) {
    lb_load(); // sets dnnl_wanted, which dnnl_ready's one-time open reads
    return dnnl_ready();
}
const char *lb_sgemm_library(void) {
    return lb_sgemm_is_onednn() ? "oneDNN" : "OpenBLAS";
}
int lb_core_was_chosen(void) {
    lb_load();
    return core_chosen;
}
const char *lb_openblas_config(void) {
    if (lb_load() || !p_config) return "";
    const char *c = p_config();
    return c ? c : "";
}
int lb_get_num_threads(void) {
    lb_load();
    return atomic_load_explicit(&compute_threads, memory_order_relaxed);
}
void lb_set_num_threads(int n) {
    lb_load();
    if (n > 0) atomic_store(&compute_threads, n > LB_MAX_THREADS ? LB_MAX_THREADS : n);
}
int lb_thread_setting(void) {
    return atomic_load_explicit(&compute_threads, memory_order_relaxed);
}
int lb_compute_threads(void) {
    return in_parallel_region ? 1 : atomic_load_explicit(&compute_threads, memory_order_relaxed);
}
int lb_enter_parallel(void) {
    int was = in_parallel_region;
    in_parallel_region = 1;
    return was;
}
void lb_leave_parallel(int was) {
    in_parallel_region = was;
}

void lb_sgemm(int transA, int transB, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
              int ldb, float beta, float *c, int ldc) {
    if (dnnl_ready() &&
        dnnl_sgemm_1(transA ? 'T' : 'N', transB ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0)
        return; // otherwise (an argument it refuses) OpenBLAS computes it
    p_sgemm(LB_ROW_MAJOR, transA ? LB_TRANS : LB_NO_TRANS, transB ? LB_TRANS : LB_NO_TRANS, m, n, k, alpha, a, lda, b,
            ldb, beta, c, ldc);
}

void lb_sgemv(int transA, int m, int n, float alpha, const float *a, int lda, const float *x, float beta, float *y) {
    p_sgemv(LB_ROW_MAJOR, transA ? LB_TRANS : LB_NO_TRANS, m, n, alpha, a, lda, x, 1, beta, y, 1);
}

int lb_sgesdd(char jobz, int m, int n, float *a, int lda, float *s, float *u, int ldu, float *vt, int ldvt) {
    if (lb_load() || !p_sgesdd) return -1000;
    return p_sgesdd(LB_ROW_MAJOR, jobz, m, n, a, lda, s, u, ldu, vt, ldvt);
}

int lb_sgeqrf(int m, int n, float *a, int lda, float *tau) {
    if (lb_load() || !p_sgeqrf) return -1000;
    return p_sgeqrf(LB_ROW_MAJOR, m, n, a, lda, tau);
}

int lb_sorgqr(int m, int n, int k, float *a, int lda, const float *tau) {
    if (lb_load() || !p_sorgqr) return -1000;
    return p_sorgqr(LB_ROW_MAJOR, m, n, k, a, lda, tau);
}
