// Checks liblora's own declarations of the CBLAS/LAPACKE ABI
// (Sources/CLoraSupport/blas_abi.h) against the system headers.
// Build: cc -fsyntax-only $(pkg-config --cflags openblas lapacke) -ISources/CLoraSupport scripts/check_blas_abi.c
#include <cblas.h>
#include <lapacke.h>
#include "blas_abi.h"

_Static_assert((int)CblasRowMajor == (int)LB_ROW_MAJOR, "CblasRowMajor");
_Static_assert((int)CblasNoTrans == (int)LB_NO_TRANS, "CblasNoTrans");
_Static_assert((int)CblasTrans == (int)LB_TRANS, "CblasTrans");
_Static_assert((int)LAPACK_ROW_MAJOR == (int)LB_ROW_MAJOR, "LAPACK_ROW_MAJOR");
_Static_assert(sizeof(enum CBLAS_ORDER) == sizeof(int), "enum size");
_Static_assert(sizeof(blasint) == sizeof(int), "blasint is 32-bit");
_Static_assert(sizeof(lapack_int) == sizeof(int), "lapack_int is 32-bit");
// Same return and argument types (enums as ints) as the real prototypes:
static void check(void) {
    float *f = 0;
    const float *cf = 0;
    int i = 0;
    cblas_sgemm(LB_ROW_MAJOR, LB_NO_TRANS, LB_TRANS, i, i, i, 1.0f, cf, i, cf, i, 0.0f, f, i);
    cblas_sgemv(LB_ROW_MAJOR, LB_NO_TRANS, i, i, 1.0f, cf, i, cf, 1, 0.0f, f, 1);
    int r = LAPACKE_sgesdd(LB_ROW_MAJOR, 'S', i, i, f, i, f, f, i, f, i);
    r += LAPACKE_sgeqrf(LB_ROW_MAJOR, i, i, f, i, f);
    r += LAPACKE_sorgqr(LB_ROW_MAJOR, i, i, i, f, i, cf);
    char *c = openblas_get_corename();
    (void)c;
    (void)r;
}
