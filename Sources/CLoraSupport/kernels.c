// Element-wise kernels over float buffers, compiled three times from
// kernels_body.h (AVX-512 with 16 lanes, AVX2+FMA with 8, baseline x86-64
// with 4) and picked at the first call for the CPU. The Swift core is built
// for the baseline target, where its SIMD16 code runs on 128-bit registers;
// these loops are the ones that sit between the matrix products (GELU,
// softmax, LayerNorm, cross-entropy) and would otherwise cost a noticeable
// share of a forward or training step.
//
// They are the only implementation of these functions: the Swift core
// calls them for every activation, softmax, LayerNorm and cross-entropy.
// exp is a Cephes-style range reduction and polynomial, within 2 ulp of expf.
#include "lora_support.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__)
#define VW      16
#define KT      __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define K(name) name##_avx512
#include "kernels_body.h"
#undef VW
#undef KT
#undef K

#define VW      8
#define KT      __attribute__((target("avx2,fma")))
#define K(name) name##_avx2
#include "kernels_body.h"
#undef VW
#undef KT
#undef K
#endif

#define VW 4
#define KT
#define K(name) name##_base
#include "kernels_body.h"
#undef VW
#undef KT
#undef K

#define KERNEL_SET(sfx)                                                                                                \
    {                                                                                                                  \
        lb_gelu_tanh_forward_##sfx, lb_gelu_tanh_backward_##sfx, lb_softmax_lse_##sfx, lb_exp_shift_##sfx,             \
            lb_softmax_backward_##sfx, lb_cross_entropy_row_##sfx, lb_layernorm_forward_##sfx,                         \
            lb_layernorm_backward_input_##sfx, lb_add_##sfx, lb_activation_forward_##sfx,                              \
            lb_activation_backward_##sfx, lb_dropout_##sfx,                                                            \
    }
static const lb_kernel_set set_base = KERNEL_SET(base);
#if defined(__x86_64__)
static const lb_kernel_set set_avx2 = KERNEL_SET(avx2);
static const lb_kernel_set set_avx512 = KERNEL_SET(avx512);
#endif

const lb_kernel_set *lb_kernels_for(int level) {
    switch (level) {
    case LB_KERNELS_BASELINE:
        return &set_base;
#if defined(__x86_64__)
    case LB_KERNELS_AVX2:
        return lb_cpu_has_avx2_fma() ? &set_avx2 : NULL;
    case LB_KERNELS_AVX512:
        return lb_cpu_has_avx512() ? &set_avx512 : NULL;
#endif
    default:
        return NULL;
    }
}

// The CPU's best set, chosen at the first call (a relaxed atomic afterwards).
static _Atomic(const lb_kernel_set *) current_set = NULL;

static const lb_kernel_set *kernels(void) {
    const lb_kernel_set *k = atomic_load_explicit(&current_set, memory_order_relaxed);
    if (k == NULL) {
        k = lb_kernels_for(lb_kernels_level());
        atomic_store_explicit(&current_set, k, memory_order_relaxed);
    }
    return k;
}

int lb_kernels_level(void) {
#if defined(__x86_64__)
    if (lb_cpu_has_avx512()) return LB_KERNELS_AVX512;
    if (lb_cpu_has_avx2_fma()) return LB_KERNELS_AVX2;
#endif
    return LB_KERNELS_BASELINE;
}

void lb_gelu_tanh_forward(float *out, const float *inp, size_t n) {
    kernels()->gelu_tanh_forward(out, inp, n);
}
void lb_gelu_tanh_backward(float *d, const float *pre, size_t n) {
    kernels()->gelu_tanh_backward(d, pre, n);
}
float lb_softmax_lse(float *row, int n) {
    return kernels()->softmax_lse(row, n);
}
void lb_exp_shift(float *row, int n, float c) {
    kernels()->exp_shift(row, n, c);
}
void lb_softmax_backward(float *dp, const float *p, int n, float scale) {
    kernels()->softmax_backward(dp, p, n, scale);
}
double lb_cross_entropy_row(float *row, int V, int target, float grad_scale) {
    return kernels()->cross_entropy_row(row, V, target, grad_scale);
}
void lb_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                          const float *bias, size_t rows, int C, float eps) {
    kernels()->layernorm_forward(out, mean, rstd, inp, weight, bias, rows, C, eps);
}
void lb_layernorm_backward_input(float *dinp, const float *dout, const float *inp, const float *weight,
                                 const float *mean, const float *rstd, size_t rows, int C) {
    kernels()->layernorm_backward_input(dinp, dout, inp, weight, mean, rstd, rows, C);
}
void lb_add(float *out, const float *a, const float *b, size_t n) {
    kernels()->add(out, a, b, n);
}
void lb_activation_forward(int act, float *out, const float *inp, size_t n) {
    kernels()->activation_forward(act, out, inp, n);
}
void lb_activation_backward(int act, float *d, const float *pre, size_t n) {
    kernels()->activation_backward(act, d, pre, n);
}
void lb_dropout(float *out, const float *x, size_t n, uint64_t key, uint64_t first, uint64_t threshold, float keep) {
    kernels()->dropout(out, x, n, key, first, threshold, keep);
}
