// Internal C support for the Swift core: run-time loading of OpenBLAS and
// LAPACKE, CPU feature checks. Nothing here is public API (hidden symbols).
#ifndef LORA_SUPPORT_H
#define LORA_SUPPORT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LB_HIDDEN __attribute__((visibility("hidden")))

// Loads OpenBLAS and LAPACKE once per process (thread-safe). Returns 0 on
// success; otherwise 1 and lb_load_error() says why. Before loading, when
// OPENBLAS_CORETYPE is unset and the OpenBLAS build reports a kernel set
// older than the CPU supports, the library is reloaded with the matching
// OPENBLAS_CORETYPE (the variable is removed again afterwards). A value the
// user set is never overridden.
LB_HIDDEN int lb_load(void);
LB_HIDDEN const char *lb_load_error(void);
// The kernel set OpenBLAS runs ("SkylakeX", "Haswell", ...).
LB_HIDDEN const char *lb_corename(void);
// The kernel set OpenBLAS picked on its own before liblora intervened.
LB_HIDDEN const char *lb_corename_initial(void);
// 1 when liblora chose the core (set OPENBLAS_CORETYPE), 0 otherwise.
LB_HIDDEN int lb_core_was_chosen(void);
LB_HIDDEN const char *lb_openblas_config(void);
LB_HIDDEN int lb_get_num_threads(void);
LB_HIDDEN void lb_set_num_threads(int n);

// Pure decision function (testable): the OPENBLAS_CORETYPE liblora would
// set for a CPU with these features when OpenBLAS reports `reported`, or
// NULL to keep what OpenBLAS chose.
LB_HIDDEN const char *lb_preferred_core(const char *reported, int has_avx512, int has_avx2_fma);
LB_HIDDEN int lb_cpu_has_avx512(void);
LB_HIDDEN int lb_cpu_has_avx2_fma(void);

// cblas (row-major only: order is fixed by the wrappers).
// C[m,n] = alpha * op(A) * op(B) + beta * C, lda/ldb/ldc row strides.
LB_HIDDEN void lb_sgemm(int transA, int transB, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb,
                        float beta, float *c, int ldc);
// y[m or n] = alpha * op(A) * x + beta * y, A is [m, n] row-major.
LB_HIDDEN void lb_sgemv(int transA, int m, int n, float alpha, const float *a, int lda,
                        const float *x, float beta, float *y);

// LAPACKE (row-major). Return LAPACK's info.
LB_HIDDEN int lb_sgesdd(char jobz, int m, int n, float *a, int lda, float *s,
                        float *u, int ldu, float *vt, int ldvt);
LB_HIDDEN int lb_sgeqrf(int m, int n, float *a, int lda, float *tau);
LB_HIDDEN int lb_sorgqr(int m, int n, int k, float *a, int lda, const float *tau);

#ifdef __cplusplus
}
#endif
#endif

// Thread-local last error message of the C ABI (copied, truncated to 4 KiB).
#ifdef __cplusplus
extern "C" {
#endif
LB_HIDDEN void lb_set_error(const char *message);
LB_HIDDEN const char *lb_get_error(void);
#ifdef __cplusplus
}
#endif
