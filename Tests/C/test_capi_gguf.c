/* test_capi_gguf.c — GGUF export for llama.cpp: the files' layout as a C
 * host sees it, and the errors. Tests/gguf reads the same files with gguf-py
 * and runs them in llama.cpp. Part of test_capi (see test_capi.c). */
#include "test_capi.h"

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) {
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* A GGUF v3 file with `tensors` tensors, its data padded to 32 bytes; returns its size (0 when not). */
static size_t check_gguf(const char *p, uint64_t tensors) {
    size_t size = 0;
    unsigned char *b = read_file(p, &size);
    int ok = b && size >= 24 && memcmp(b, "GGUF", 4) == 0 && le32(b + 4) == 3 && le64(b + 8) == tensors;
    CHECK(ok, "%s: GGUF v3 with %llu tensors", p, (unsigned long long)tensors);
    CHECK(size % 32 == 0, "%s: size %zu is not a multiple of the 32-byte alignment", p, size);
    free(b);
    return ok ? size : 0;
}

void test_gguf_export(void) {
    lora_model *tok = NULL, *a = NULL, *b = NULL;
    lora_adapter *ad = NULL;
    tok = load_model("gpt2-tok");
    a = load_model("gpt2-a");
    b = load_model("gpt2-b");
    if (!tok || !a || !b) goto done;

    /* gpt2-tok: 2 embeddings + 2 layers x 12 + output_norm weight and bias (tied head). */
    const char *f32 = path("%s/tok-f32.gguf", workdir);
    const char *f16 = path("%s/tok-f16.gguf", workdir);
    REQUIRE_OK(lora_model_export_gguf(tok, f32, LORA_GGUF_F32));
    REQUIRE_OK(lora_model_export_gguf(tok, f16, LORA_GGUF_F16));
    size_t s32 = check_gguf(f32, 28), s16 = check_gguf(f16, 28);
    CHECK(s16 < s32 && s16 > s32 / 3, "F16 file (%zu bytes) not about half the F32 one (%zu)", s16, s32);

    /* lora/all: c_attn, c_proj (attention and MLP) and c_fc in 2 layers, a pair each. */
    REQUIRE_OK(lora_adapter_load(&ad, a, path("%s/lora/all", fixtures)));
    const char *lora = path("%s/adapter.gguf", workdir);
    REQUIRE_OK(lora_adapter_export_gguf(ad, lora, LORA_GGUF_F32));
    check_gguf(lora, 16);

    const char *x = path("%s/x.gguf", workdir);
    EXPECT(lora_model_export_gguf(NULL, x, LORA_GGUF_F32), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_export_gguf(tok, NULL, LORA_GGUF_F32), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_export_gguf(tok, x, 2), LORA_INVALID_ARGUMENT);
    CHECK(strstr(lora_last_error(), "LORA_GGUF_F32") != NULL, "message names the types: %s", lora_last_error());
    EXPECT(lora_adapter_export_gguf(NULL, x, LORA_GGUF_F32), LORA_INVALID_ARGUMENT);
    EXPECT(lora_adapter_export_gguf(ad, x, -1), LORA_INVALID_ARGUMENT);
    /* gpt2-b's erf GELU is not what llama.cpp's gpt2 graph computes. */
    EXPECT(lora_model_export_gguf(b, x, LORA_GGUF_F32), LORA_UNSUPPORTED);
    CHECK(!access_ok(x), "a failed export left %s", x);
    EXPECT(lora_model_export_gguf(tok, path("%s/no-such-dir/m.gguf", workdir), LORA_GGUF_F32), LORA_IO_ERROR);

done:
    lora_adapter_free(ad);
    lora_model_free(tok);
    lora_model_free(a);
    lora_model_free(b);
}
