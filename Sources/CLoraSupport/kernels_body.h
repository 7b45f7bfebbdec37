// One instantiation of the element-wise kernels (included by kernels.c with
// VW = lanes per vector, KT = target attribute, K(name) = suffixed name).

typedef float K(vf) __attribute__((vector_size(VW * 4)));
typedef int K(vi) __attribute__((vector_size(VW * 4)));

static inline __attribute__((always_inline)) KT K(vf) K(vsplat)(float x) {
    K(vf) z = {0};
    return z + x;
}
static inline __attribute__((always_inline)) KT K(vf) K(vld)(const float *p) {
    K(vf) v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline __attribute__((always_inline)) KT void K(vst)(float *p, K(vf) v) {
    memcpy(p, &v, sizeof v);
}
// Loads n < VW floats, the rest of the lanes set to `fill`.
static inline __attribute__((always_inline)) KT K(vf) K(vld_part)(const float *p, int n, float fill) {
    float t[VW];
    for (int i = 0; i < VW; i++) t[i] = i < n ? p[i] : fill;
    return K(vld)(t);
}
static inline __attribute__((always_inline)) KT void K(vst_part)(float *p, K(vf) v, int n) {
    float t[VW];
    K(vst)(t, v);
    for (int i = 0; i < n; i++) p[i] = t[i];
}
static inline __attribute__((always_inline)) KT K(vf) K(vsel)(K(vi) m, K(vf) a, K(vf) b) {
    return (K(vf))(((K(vi))a & m) | ((K(vi))b & ~m));
}
static inline __attribute__((always_inline)) KT K(vf) K(vmaxf)(K(vf) a, K(vf) b) {
    return K(vsel)(a > b, a, b);
} // NaN in a: b
static inline __attribute__((always_inline)) KT K(vf) K(vminf)(K(vf) a, K(vf) b) {
    return K(vsel)(a < b, a, b);
}
static inline __attribute__((always_inline)) KT float K(hsum)(K(vf) v) {
    float s = 0;
    for (int i = 0; i < VW; i++) s += v[i];
    return s;
}
static inline __attribute__((always_inline)) KT float K(hmax)(K(vf) v) {
    float m = -INFINITY;
    for (int i = 0; i < VW; i++)
        if (v[i] > m) m = v[i];
    return m;
}

static inline __attribute__((always_inline)) KT K(vf) K(vexp)(K(vf) xin) {
    K(vf) x = K(vmaxf)(K(vminf)(xin, K(vsplat)(88.72283f)), K(vsplat)(-87.33654f));
    const K(vf) magic = K(vsplat)(12582912.0f);
    K(vf) t = x * K(vsplat)(1.44269504088896341f) + magic;
    K(vf) n = t - magic;
    K(vf) r = x - n * K(vsplat)(0.693359375f);
    r = r - n * K(vsplat)(-2.12194440e-4f);
    K(vf) p = K(vsplat)(1.9875691500e-4f);
    p = p * r + K(vsplat)(1.3981999507e-3f);
    p = p * r + K(vsplat)(8.3334519073e-3f);
    p = p * r + K(vsplat)(4.1665795894e-2f);
    p = p * r + K(vsplat)(1.6666665459e-1f);
    p = p * r + K(vsplat)(5.0000001201e-1f);
    p = p * (r * r) + r + K(vsplat)(1.0f);
    K(vi) ni = (K(vi))t - (K(vi))magic;
    K(vi) n1 = ni >> 1;
    K(vi) n2 = ni - n1;
    K(vf) s1 = (K(vf))((n1 + 127) << 23);
    K(vf) s2 = (K(vf))((n2 + 127) << 23);
    K(vf) y = p * s1 * s2;
    K(vi) keep = xin >= K(vsplat)(-87.33654f);
    return (K(vf))((K(vi))y & keep);
}

// x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³): GELU's tanh form.
static inline __attribute__((always_inline)) KT K(vf) K(vgelu)(K(vf) x) {
    K(vf) u2 = K(vsplat)(2 * 0.7978845608028654f) * (x + K(vsplat)(0.044715f) * x * x * x);
    return x / (K(vsplat)(1.0f) + K(vexp)(-u2));
}

KT static void K(lb_gelu_tanh_forward)(float *out, const float *inp, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) K(vst)(out + i, K(vgelu)(K(vld)(inp + i)));
    if (i < n) K(vst_part)(out + i, K(vgelu)(K(vld_part)(inp + i, (int)(n - i), 0)), (int)(n - i));
}

static inline __attribute__((always_inline)) KT K(vf) K(vgelu_grad)(K(vf) x) {
    const K(vf) k = K(vsplat)(0.7978845608028654f), c = K(vsplat)(0.044715f), one = K(vsplat)(1.0f),
                half = K(vsplat)(0.5f);
    // tanh(z) = 1 − 2/(exp(2z)+1)
    K(vf) z = k * (x + c * x * x * x);
    K(vf) t = one - K(vsplat)(2.0f) / (K(vexp)(z + z) + one);
    K(vf) dz = k * (one + K(vsplat)(3.0f) * c * x * x);
    return half * (one + t) + half * x * (one - t * t) * dz;
}

KT static void K(lb_gelu_tanh_backward)(float *d, const float *pre, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) K(vst)(d + i, K(vld)(d + i) * K(vgelu_grad)(K(vld)(pre + i)));
    if (i < n) {
        int m = (int)(n - i);
        K(vst_part)(d + i, K(vld_part)(d + i, m, 0) * K(vgelu_grad)(K(vld_part)(pre + i, m, 0)), m);
    }
}

// 1 / (1 + exp(−x)) and tanh(x) = 1 − 2/(exp(2x) + 1) (absolute error ≈ 1e-7).
static inline __attribute__((always_inline)) KT K(vf) K(vsigmoid)(K(vf) x) {
    return K(vsplat)(1.0f) / (K(vsplat)(1.0f) + K(vexp)(-x));
}
static inline __attribute__((always_inline)) KT K(vf) K(vtanh)(K(vf) x) {
    return K(vsplat)(1.0f) - K(vsplat)(2.0f) / (K(vexp)(x + x) + K(vsplat)(1.0f));
}

// The other activations (LB_ACT_*), forward: f(x), and backward: f′(x).
static inline __attribute__((always_inline)) KT K(vf) K(vact)(int act, K(vf) x) {
    switch (act) {
    case LB_ACT_QUICK_GELU:
        return x * K(vsigmoid)(K(vsplat)(1.702f) * x);
    case LB_ACT_RELU:
        return K(vsel)(x > K(vsplat)(0), x, K(vsplat)(0));
    case LB_ACT_SILU:
        return x * K(vsigmoid)(x);
    case LB_ACT_TANH:
        return K(vtanh)(x);
    case LB_ACT_SIGMOID:
        return K(vsigmoid)(x);
    default:
        return x;
    }
}
static inline __attribute__((always_inline)) KT K(vf) K(vact_grad)(int act, K(vf) x) {
    const K(vf) one = K(vsplat)(1.0f);
    switch (act) {
    case LB_ACT_QUICK_GELU: {
        K(vf) s = K(vsigmoid)(K(vsplat)(1.702f) * x);
        return s + K(vsplat)(1.702f) * x * s * (one - s);
    }
    case LB_ACT_RELU:
        return K(vsel)(x > K(vsplat)(0), one, K(vsplat)(0));
    case LB_ACT_SILU: {
        K(vf) s = K(vsigmoid)(x);
        return s * (one + x * (one - s));
    }
    case LB_ACT_TANH: {
        K(vf) t = K(vtanh)(x);
        return one - t * t;
    }
    case LB_ACT_SIGMOID: {
        K(vf) s = K(vsigmoid)(x);
        return s * (one - s);
    }
    default:
        return one;
    }
}

KT static void K(lb_activation_forward)(int act, float *out, const float *inp, size_t n) {
    switch (act) {
    case LB_ACT_GELU_TANH:
        K(lb_gelu_tanh_forward)(out, inp, n);
        return;
    case LB_ACT_GELU_ERF:
        // 0.5·x·(1 + erf(x/√2)): no vector erf; the scalar libm one.
        for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * 0.7071067811865476f));
        return;
    case LB_ACT_LINEAR:
        if (out != inp) memmove(out, inp, n * sizeof(float));
        return;
    default:
        break;
    }
    size_t i = 0;
    for (; i + VW <= n; i += VW) K(vst)(out + i, K(vact)(act, K(vld)(inp + i)));
    if (i < n) K(vst_part)(out + i, K(vact)(act, K(vld_part)(inp + i, (int)(n - i), 0)), (int)(n - i));
}

KT static void K(lb_activation_backward)(int act, float *d, const float *pre, size_t n) {
    switch (act) {
    case LB_ACT_GELU_TANH:
        K(lb_gelu_tanh_backward)(d, pre, n);
        return;
    case LB_ACT_GELU_ERF:
        for (size_t i = 0; i < n; i++) {
            float x = pre[i];
            float cdf = 0.5f * (1.0f + erff(x * 0.7071067811865476f));
            float pdf = expf(-0.5f * x * x) * 0.3989422804014327f;
            d[i] *= cdf + x * pdf;
        }
        return;
    case LB_ACT_LINEAR:
        return;
    default:
        break;
    }
    size_t i = 0;
    for (; i + VW <= n; i += VW) K(vst)(d + i, K(vld)(d + i) * K(vact_grad)(act, K(vld)(pre + i)));
    if (i < n) {
        int m = (int)(n - i);
        K(vst_part)(d + i, K(vld_part)(d + i, m, 0) * K(vact_grad)(act, K(vld_part)(pre + i, m, 0)), m);
    }
}

static inline __attribute__((always_inline)) KT float K(row_max)(const float *x, int n) {
    K(vf) acc = K(vsplat)(-INFINITY);
    int i = 0;
    for (; i + VW <= n; i += VW) acc = K(vmaxf)(K(vld)(x + i), acc);
    float m = K(hmax)(acc);
    for (; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

// row[i] = exp(row[i] − m); returns the sum, in float lanes over blocks of
// 256 entries, the blocks added in double.
static inline __attribute__((always_inline)) KT double K(exp_shift_sum)(float *row, int n, float m) {
    const K(vf) mv = K(vsplat)(m);
    double sum = 0;
    int i = 0;
    while (i < n) {
        int end = n - i > 256 ? i + 256 : n;
        K(vf) acc = K(vsplat)(0);
        for (; i + VW <= end; i += VW) {
            K(vf) e = K(vexp)(K(vld)(row + i) - mv);
            K(vst)(row + i, e);
            acc += e;
        }
        if (i < end) {
            int k = end - i;
            K(vf) e = K(vexp)(K(vld_part)(row + i, k, -INFINITY) - mv);
            K(vst_part)(row + i, e, k);
            acc += e;
            i = end;
        }
        sum += K(hsum)(acc);
    }
    return sum;
}

static inline __attribute__((always_inline)) KT void K(scale_row)(float *row, int n, float s) {
    const K(vf) sv = K(vsplat)(s);
    int i = 0;
    for (; i + VW <= n; i += VW) K(vst)(row + i, K(vld)(row + i) * sv);
    for (; i < n; i++) row[i] *= s;
}

KT static float K(lb_softmax_lse)(float *row, int n) {
    float m = K(row_max)(row, n);
    if (m == -INFINITY) {
        memset(row, 0, (size_t)n * sizeof(float));
        return -INFINITY;
    }
    double sum = K(exp_shift_sum)(row, n, m);
    K(scale_row)(row, n, (float)(1.0 / sum));
    return (float)((double)m + log(sum));
}

KT static void K(lb_softmax_backward)(float *dp, const float *p, int n, float scale) {
    K(vf) acc = K(vsplat)(0);
    int i = 0;
    for (; i + VW <= n; i += VW) acc += K(vld)(p + i) * K(vld)(dp + i);
    float dot = K(hsum)(acc);
    for (; i < n; i++) dot += p[i] * dp[i];
    const K(vf) dv = K(vsplat)(dot), sv = K(vsplat)(scale);
    for (i = 0; i + VW <= n; i += VW) K(vst)(dp + i, K(vld)(p + i) * (K(vld)(dp + i) - dv) * sv);
    for (; i < n; i++) dp[i] = p[i] * (dp[i] - dot) * scale;
}

KT static void K(lb_exp_shift)(float *row, int n, float c) {
    const K(vf) cv = K(vsplat)(c);
    int i = 0;
    for (; i + VW <= n; i += VW) K(vst)(row + i, K(vexp)(K(vld)(row + i) - cv));
    if (i < n) K(vst_part)(row + i, K(vexp)(K(vld_part)(row + i, n - i, 0) - cv), n - i);
}

KT static double K(lb_cross_entropy_row)(float *row, int V, int target, float grad_scale) {
    float m = K(row_max)(row, V);
    float t = row[target];
    double sum = K(exp_shift_sum)(row, V, m);
    K(scale_row)(row, V, (float)((double)grad_scale / sum));
    row[target] -= grad_scale;
    return (double)m + log(sum) - (double)t;
}

KT static void K(lb_layernorm_forward)(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                       const float *bias, size_t rows, int C, float eps) {
    for (size_t r = 0; r < rows; r++) {
        const float *x = inp + r * (size_t)C;
        float *y = out + r * (size_t)C;
        K(vf) acc = K(vsplat)(0);
        int i = 0;
        for (; i + VW <= C; i += VW) acc += K(vld)(x + i);
        float sum = K(hsum)(acc);
        for (; i < C; i++) sum += x[i];
        float m = sum / (float)C;
        const K(vf) mv = K(vsplat)(m);
        acc = K(vsplat)(0);
        for (i = 0; i + VW <= C; i += VW) {
            K(vf) d = K(vld)(x + i) - mv;
            acc += d * d;
        }
        float var = K(hsum)(acc);
        for (; i < C; i++) {
            float d = x[i] - m;
            var += d * d;
        }
        float s = 1.0f / sqrtf(var / (float)C + eps);
        const K(vf) sv = K(vsplat)(s);
        for (i = 0; i + VW <= C; i += VW)
            K(vst)(y + i, (K(vld)(x + i) - mv) * sv * K(vld)(weight + i) + K(vld)(bias + i));
        for (; i < C; i++) y[i] = (x[i] - m) * s * weight[i] + bias[i];
        if (mean) mean[r] = m;
        if (rstd) rstd[r] = s;
    }
}

KT static void K(lb_layernorm_backward_input)(float *dinp, const float *dout, const float *inp, const float *weight,
                                              const float *mean, const float *rstd, size_t rows, int C) {
    for (size_t r = 0; r < rows; r++) {
        const float *dy = dout + r * (size_t)C, *x = inp + r * (size_t)C;
        float *dx = dinp + r * (size_t)C;
        const float m = mean[r], s = rstd[r];
        const K(vf) mv = K(vsplat)(m), sv = K(vsplat)(s);
        K(vf) a1 = K(vsplat)(0), a2 = K(vsplat)(0);
        int i = 0;
        for (; i + VW <= C; i += VW) {
            K(vf) norm = (K(vld)(x + i) - mv) * sv;
            K(vf) dnorm = K(vld)(weight + i) * K(vld)(dy + i);
            a1 += dnorm;
            a2 += dnorm * norm;
        }
        float dmean = K(hsum)(a1), dnormmean = K(hsum)(a2);
        for (; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * dy[i];
            dmean += dnorm;
            dnormmean += dnorm * norm;
        }
        dmean /= (float)C;
        dnormmean /= (float)C;
        const K(vf) d1 = K(vsplat)(dmean), d2 = K(vsplat)(dnormmean);
        for (i = 0; i + VW <= C; i += VW) {
            K(vf) norm = (K(vld)(x + i) - mv) * sv;
            K(vf) dnorm = K(vld)(weight + i) * K(vld)(dy + i);
            K(vst)(dx + i, K(vld)(dx + i) + sv * (dnorm - d1 - norm * d2));
        }
        for (; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * dy[i];
            dx[i] += s * (dnorm - dmean - norm * dnormmean);
        }
    }
}

// Integer hashing the compiler vectorizes (64-bit lane multiplies with AVX-512DQ).
KT static void K(lb_dropout)(float *out, const float *x, size_t n, uint64_t key, uint64_t first, uint64_t threshold,
                             float keep) {
    const uint64_t phi = 0x9E3779B97F4A7C15ull;
    uint64_t c = key + first * phi;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = c + (uint64_t)i * phi;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        out[i] = (z >> 40) < threshold ? 0.0f : x[i] * keep;
    }
}

KT static void K(lb_add)(float *out, const float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) K(vst)(out + i, K(vld)(a + i) + K(vld)(b + i));
    for (; i < n; i++) out[i] = a[i] + b[i];
}
