// The slice of the CBLAS and LAPACKE ABIs liblora calls, declared here so
// that nothing links OpenBLAS at build time: the libraries are dlopen-ed at
// run time (blas.c), after the kernel set is chosen. scripts/check_blas_abi.c
// checks these declarations against the system's cblas.h and lapacke.h.
#ifndef LORA_BLAS_ABI_H
#define LORA_BLAS_ABI_H

// CBLAS_ORDER / CBLAS_TRANSPOSE values (enums, int-sized) and LAPACK_ROW_MAJOR.
enum { LB_ROW_MAJOR = 101, LB_NO_TRANS = 111, LB_TRANS = 112 };

// blasint and lapack_int are 32-bit in the LP64 builds Debian ships.
typedef void sgemm_fn(int order, int transA, int transB, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, float beta, float *c, int ldc);
typedef void sgemv_fn(int order, int trans, int m, int n, float alpha, const float *a, int lda, const float *x,
                      int incx, float beta, float *y, int incy);
typedef char *corename_fn(void);
typedef char *config_fn(void);
typedef int get_threads_fn(void);
typedef void set_threads_fn(int);
typedef int sgesdd_fn(int layout, char jobz, int m, int n, float *a, int lda, float *s, float *u, int ldu, float *vt,
                      int ldvt);
typedef int sgeqrf_fn(int layout, int m, int n, float *a, int lda, float *tau);
typedef int sorgqr_fn(int layout, int m, int n, int k, float *a, int lda, const float *tau);

#endif
