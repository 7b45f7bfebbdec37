/*
 * test_capi_lowp.c — lora_model_params.dtype: loading GPT-2 with its weight
 * matrices in bf16, f16 or q8_0, the dtype in lora_model_info, saving and
 * loading a converted model, and the refusals.
 */
#include "test_capi.h"

#include <stddef.h>

static lora_model *load_as(const char *name, int32_t dtype) {
    lora_model_params p;
    lora_model_default_params(&p);
    p.dtype = dtype;
    lora_model *m = NULL;
    lora_status s = lora_model_load(&m, path("%s/%s", fixtures, name), &p);
    CHECK(s == LORA_OK, "load %s as dtype %d: %s", name, dtype, lora_last_error());
    return m;
}

static int32_t dtype_of(const lora_model *m) {
    lora_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (lora_model_get_info(m, &info) != LORA_OK) return -100;
    return info.dtype;
}

/* Logits of ids against transformers' on the rounded weights (lowp/expected-<name>). */
static void check_logits(lora_model *m, const char *name) {
    st_file f;
    if (!st_open(&f, path("%s/lowp/expected-%s.safetensors", fixtures, name))) {
        CHECK(0, "cannot open lowp/expected-%s.safetensors", name);
        return;
    }
    size_t n = 0, nl = 0;
    int32_t *ids = st_ids(&f, "seq2.ids", &n);
    float *want = st_floats(&f, "seq2.logits", &nl);
    float *got = calloc(nl ? nl : 1, sizeof *got);
    if (ids && want && got && nl == n * A_VOCAB) {
        EXPECT(lora_logits(m, ids, n, got, nl), LORA_OK);
        float worst = 0;
        for (size_t i = 0; i < nl; i++) worst = fmaxf(worst, fabsf(got[i] - want[i]));
        CHECK(worst < TOL_REFERENCE, "%s logits: max |diff| %g", name, worst);
    } else {
        CHECK(0, "lowp/expected-%s.safetensors: seq2 missing", name);
    }
    free(ids);
    free(want);
    free(got);
    st_close(&f);
}

void test_model_dtype(void) {
    lora_model_params p;
    lora_model_default_params(&p);
    CHECK(p.dtype == LORA_DTYPE_SAVED, "default dtype %d", p.dtype);

    lora_model *f32 = load_as("gpt2-a", LORA_DTYPE_SAVED);
    if (f32) CHECK(dtype_of(f32) == LORA_DTYPE_F32, "gpt2-a loads as F32 by default (%d)", dtype_of(f32));
    lora_model_free(f32);

    /* An unknown dtype, and a struct from before the field (dtype not read). */
    p.dtype = 7;
    lora_model *m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, path("%s/gpt2-a", fixtures), &p), LORA_INVALID_ARGUMENT);
    CHECK(m == NULL, "*out not NULL after dtype 7");
    p.struct_size = (uint32_t)offsetof(lora_model_params, dtype);
    m = NULL;
    EXPECT(lora_model_load(&m, path("%s/gpt2-a", fixtures), &p), LORA_OK);
    if (m) CHECK(dtype_of(m) == LORA_DTYPE_F32, "an older struct loads F32 (%d)", dtype_of(m));
    lora_model_free(m);

    static const struct {
        int32_t dtype;
        const char *name;
    } kinds[] = {{LORA_DTYPE_BF16, "bf16"}, {LORA_DTYPE_F16, "f16"}, {LORA_DTYPE_Q8_0, "q8_0"}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        lora_model *low = load_as("gpt2-a", kinds[k].dtype);
        if (!low) continue;
        CHECK(dtype_of(low) == kinds[k].dtype, "%s: info dtype %d", kinds[k].name, dtype_of(low));
        check_logits(low, kinds[k].name);
        /* Saved in the dtype; loaded back in it without asking. */
        const char *dir = path("%s/lowp-%s", workdir, kinds[k].name);
        EXPECT(lora_model_save(low, dir), LORA_OK);
        lora_model *back = NULL;
        EXPECT(lora_model_load(&back, dir, NULL), LORA_OK);
        if (back) {
            CHECK(dtype_of(back) == kinds[k].dtype, "%s saved and loaded: dtype %d", kinds[k].name, dtype_of(back));
            check_logits(back, kinds[k].name);
        }
        lora_model_free(back);
        lora_model_free(low);
    }
}
