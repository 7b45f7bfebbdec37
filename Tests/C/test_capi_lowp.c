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

static int32_t collect_token(int32_t token, const char *piece, size_t piece_len, void *user_data) {
    (void)piece, (void)piece_len;
    int32_t *buf = user_data; /* buf[0]: count, then the tokens */
    if (buf[0] < 31) buf[1 + buf[0]++] = token;
    return 0;
}

/* lora_model_params.kv_cache_dtype: defaults, refusals, the info field, and
 * greedy text through generation and the engine against transformers with
 * keys and values rounded to bf16 (lowp/expected-kv-bf16). */
void test_kv_cache_dtype(void) {
    lora_model_params p;
    lora_model_default_params(&p);
    CHECK(p.kv_cache_dtype == LORA_DTYPE_F32, "default kv_cache_dtype %d", p.kv_cache_dtype);
    const int32_t refused[] = {LORA_DTYPE_F16, LORA_DTYPE_Q8_0, LORA_DTYPE_SAVED, 7};
    for (size_t k = 0; k < sizeof refused / sizeof refused[0]; k++) {
        p.kv_cache_dtype = refused[k];
        lora_model *m = SENTINEL(lora_model);
        EXPECT(lora_model_load(&m, path("%s/gpt2-a", fixtures), &p), LORA_INVALID_ARGUMENT);
        CHECK(m == NULL, "*out not NULL after kv_cache_dtype %d", refused[k]);
        CHECK(strstr(lora_last_error(), "kv_cache_dtype") != NULL, "error names the field: %s", lora_last_error());
    }
    /* A struct from before the field: the field is not read (F32). */
    p.struct_size = (uint32_t)offsetof(lora_model_params, kv_cache_dtype);
    lora_model_info info;
    lora_model *old = NULL;
    EXPECT(lora_model_load(&old, path("%s/gpt2-a", fixtures), &p), LORA_OK);
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (old) {
        EXPECT(lora_model_get_info(old, &info), LORA_OK);
        CHECK(info.kv_cache_dtype == LORA_DTYPE_F32, "an older struct: kv_cache_dtype %d", info.kv_cache_dtype);
    }
    lora_model_free(old);

    lora_model_default_params(&p);
    p.kv_cache_dtype = LORA_DTYPE_BF16;
    lora_model *m = NULL;
    EXPECT(lora_model_load(&m, path("%s/gpt2-a", fixtures), &p), LORA_OK);
    st_file f;
    if (!m || !st_open(&f, path("%s/lowp/expected-kv-bf16.safetensors", fixtures))) {
        CHECK(m == NULL, "cannot open lowp/expected-kv-bf16.safetensors");
        lora_model_free(m);
        return;
    }
    EXPECT(lora_model_get_info(m, &info), LORA_OK);
    CHECK(info.kv_cache_dtype == LORA_DTYPE_BF16, "info kv_cache_dtype %d", info.kv_cache_dtype);
    lora_engine *engine = NULL;
    EXPECT(lora_engine_create(&engine, m, NULL), LORA_OK);
    for (int k = 0; k < 2; k++) {
        size_t n_prompt = 0, n_want = 0;
        int32_t *prompt = st_ids(&f, k ? "greedy1.prompt" : "greedy0.prompt", &n_prompt);
        int32_t *want = st_ids(&f, k ? "greedy1.output" : "greedy0.output", &n_want);
        if (!prompt || !want || n_want <= n_prompt || n_want - n_prompt > 31) {
            CHECK(0, "greedy%d missing in lowp/expected-kv-bf16", k);
            free(prompt), free(want);
            continue;
        }
        lora_sampling_params sp;
        lora_sampling_default_params(&sp);
        sp.temperature = 0;
        sp.stop_at_eos = 0;
        sp.max_new_tokens = (int32_t)(n_want - n_prompt);
        int32_t got[32];
        size_t n_got = 0;
        EXPECT(lora_generate_tokens(m, prompt, n_prompt, &sp, NULL, NULL, got, 32, &n_got), LORA_OK);
        CHECK(n_got == n_want - n_prompt && memcmp(got, want + n_prompt, n_got * sizeof *got) == 0,
              "greedy%d with a bf16 KV cache differs from transformers", k);
        int32_t streamed[32] = {0};
        lora_request r;
        lora_request_default_params(&r);
        r.tokens = prompt;
        r.n_tokens = n_prompt;
        r.sampling = &sp;
        r.callback = collect_token;
        r.user_data = streamed;
        lora_request_id id;
        EXPECT(lora_engine_submit(engine, &r, &id), LORA_OK);
        EXPECT(lora_engine_run(engine), LORA_OK);
        CHECK((size_t)streamed[0] == n_want - n_prompt &&
                  memcmp(streamed + 1, want + n_prompt, (size_t)streamed[0] * sizeof *got) == 0,
              "engine greedy%d with a bf16 KV cache differs from transformers", k);
        free(prompt);
        free(want);
    }
    lora_engine_free(engine);
    st_close(&f);
    lora_model_free(m);
}
