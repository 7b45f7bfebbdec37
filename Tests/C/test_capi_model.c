/* test_capi_model.c — model loading errors, model info, tokens, agreement with transformers. Part of test_capi (see
 * test_capi.c). */
#include "test_capi.h"

/* ---- Model loading --------------------------------------------------------- */

void test_model_load_errors(void) {
    const char *tok = path("%s/gpt2-tok", fixtures);
    lora_model *m = SENTINEL(lora_model);

    EXPECT(lora_model_load(NULL, tok, NULL), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_load(&m, NULL, NULL), LORA_INVALID_ARGUMENT);
    CHECK(m == NULL, "*out not NULL after NULL path");

    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, path("%s/does-not-exist", workdir), NULL), LORA_IO_ERROR);
    CHECK(m == NULL, "*out not NULL after a missing directory");

    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, path("%s/gpt2-tok/config.json", fixtures), NULL), LORA_IO_ERROR);
    CHECK(m == NULL, "*out not NULL after a file given as directory");

    /* A directory whose config.json is not JSON, then one that lacks fields. */
    const char *broken = path("%s/broken-model", workdir);
    mkdir(broken, 0755);
    size_t n = 0;
    unsigned char *weights = read_file(path("%s/gpt2-tok/model.safetensors", fixtures), &n);
    FILE *f = fopen(path("%s/model.safetensors", broken), "wb");
    if (f && weights) fwrite(weights, 1, n, f);
    if (f) fclose(f);
    free(weights);
    CHECK(write_file(path("%s/config.json", broken), "{ \"model_type\": \"gpt2\", \"n_embd\": "), "write config");
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, broken, NULL), LORA_INVALID_FILE);
    CHECK(m == NULL, "*out not NULL after a broken config");
    CHECK(write_file(path("%s/config.json", broken), "{\"model_type\": \"gpt2\"}"), "write config");
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, broken, NULL), LORA_INVALID_FILE);
    CHECK(m == NULL, "*out not NULL after a config without sizes");
    /* Truncated weights under a good config. */
    size_t cn = 0;
    unsigned char *config = read_file(path("%s/gpt2-tok/config.json", fixtures), &cn);
    f = fopen(path("%s/config.json", broken), "wb");
    if (f && config) fwrite(config, 1, cn, f);
    if (f) fclose(f);
    free(config);
    CHECK(write_file(path("%s/model.safetensors", broken), "\x10\0\0\0\0\0\0\0{}"), "write weights");
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, broken, NULL), LORA_INVALID_FILE);
    CHECK(m == NULL, "*out not NULL after broken weights");

    /* struct_size: 0, larger than this header's, and smaller (an older host). */
    lora_model_params p;
    lora_model_default_params(&p);
    p.struct_size = 0;
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, tok, &p), LORA_INVALID_ARGUMENT);
    CHECK(m == NULL, "*out not NULL after struct_size 0");
    p.struct_size = sizeof p + 8;
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, tok, &p), LORA_INVALID_ARGUMENT);
    CHECK(m == NULL, "*out not NULL after struct_size > sizeof");
    p.struct_size = sizeof(uint32_t); /* only struct_size: n_threads keeps its default */
    p.n_threads = -5;                 /* beyond struct_size: must not be read */
    m = NULL;
    EXPECT(lora_model_load(&m, tok, &p), LORA_OK);
    lora_model_free(m);
    lora_model_default_params(&p);
    p.n_threads = -1;
    m = SENTINEL(lora_model);
    EXPECT(lora_model_load(&m, tok, &p), LORA_INVALID_ARGUMENT);
    CHECK(m == NULL, "*out not NULL after n_threads -1");
}

void test_model_info(void) {
    lora_model *m = load_model("gpt2-tok");
    if (!m) return;
    lora_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    REQUIRE_OK(lora_model_get_info(m, &info));
    CHECK(info.struct_size == sizeof info, "info struct_size %u", info.struct_size);
    CHECK(info.n_vocab == TOK_VOCAB && info.n_positions == TOK_POSITIONS && info.n_embd == TOK_EMBD, "sizes %d %d %d",
          info.n_vocab, info.n_positions, info.n_embd);
    CHECK(info.n_layer == 2 && info.n_head == 2 && info.n_inner == 4 * TOK_EMBD, "layers %d heads %d inner %d",
          info.n_layer, info.n_head, info.n_inner);
    {
        /* wte (tied with lm_head) + wpe + 2 blocks + ln_f */
        int64_t E = TOK_EMBD, I = 4 * TOK_EMBD;
        int64_t block = 4 * E + (E * 3 * E + 3 * E) + (E * E + E) + (E * I + I) + (I * E + E);
        int64_t expect = TOK_VOCAB * E + TOK_POSITIONS * E + 2 * block + 2 * E;
        CHECK(info.n_params == expect, "n_params %lld, expected %lld", (long long)info.n_params, (long long)expect);
    }
    CHECK(info.has_tokenizer == 1 && info.eos_token == TOK_EOS, "has_tokenizer %d eos %d", info.has_tokenizer,
          info.eos_token);
    CHECK(memchr(info.blas_core, 0, sizeof info.blas_core) != NULL && info.blas_core[0] != 0, "blas_core \"%.32s\"",
          info.blas_core);

    /* An older, smaller struct: only the covered fields are written. */
    lora_model_info small;
    memset(&small, 0x5A, sizeof small);
    small.struct_size = (uint32_t)offsetof(lora_model_info, n_positions);
    REQUIRE_OK(lora_model_get_info(m, &small));
    CHECK(small.n_vocab == TOK_VOCAB, "small info n_vocab %d", small.n_vocab);
    {
        lora_model_info untouched;
        memset(&untouched, 0x5A, sizeof untouched);
        CHECK(memcmp((char *)&small + offsetof(lora_model_info, n_positions),
                     (char *)&untouched + offsetof(lora_model_info, n_positions),
                     sizeof small - offsetof(lora_model_info, n_positions)) == 0,
              "lora_model_get_info wrote past struct_size");
    }

    info.struct_size = 0;
    EXPECT(lora_model_get_info(m, &info), LORA_INVALID_ARGUMENT);
    info.struct_size = sizeof info + 4;
    EXPECT(lora_model_get_info(m, &info), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_get_info(m, NULL), LORA_INVALID_ARGUMENT);
    info.struct_size = sizeof info;
    EXPECT(lora_model_get_info(NULL, &info), LORA_INVALID_ARGUMENT);

    /* A model without tokenizer. */
    lora_model *a = load_model("gpt2-a");
    if (a) {
        info.struct_size = sizeof info;
        EXPECT(lora_model_get_info(a, &info), LORA_OK);
        CHECK(info.has_tokenizer == 0 && info.n_vocab == A_VOCAB && info.n_positions == A_POSITIONS,
              "gpt2-a info: tokenizer %d vocab %d positions %d", info.has_tokenizer, info.n_vocab, info.n_positions);
        lora_model_free(a);
    }
done:
    lora_model_free(m);
}

/* ---- Tokens ---------------------------------------------------------------- */

void test_tokens(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_model *a = load_model("gpt2-a");
    if (!m || !a) goto done;
    int32_t ids[128];
    size_t n = 0;
    const char *text = "Hello, world!";

    REQUIRE_OK(lora_tokenize(m, text, strlen(text), ids, 128, &n));
    CHECK(n > 0 && n < 128, "n_tokens %zu", n);
    {
        /* Too small: the needed count; NULL/0 asks for the size. */
        size_t need = 0;
        int32_t few[2];
        EXPECT(lora_tokenize(m, text, strlen(text), few, 1, &need), LORA_BUFFER_TOO_SMALL);
        CHECK(need == n, "BUFFER_TOO_SMALL *n_tokens %zu, expected %zu", need, n);
        need = 0;
        EXPECT(lora_tokenize(m, text, strlen(text), NULL, 0, &need), LORA_BUFFER_TOO_SMALL);
        CHECK(need == n, "size query *n_tokens %zu, expected %zu", need, n);
        size_t exact = 0;
        int32_t *buf = malloc(n * sizeof *buf);
        EXPECT(lora_tokenize(m, text, strlen(text), buf, n, &exact), LORA_OK);
        CHECK(exact == n && memcmp(buf, ids, n * sizeof *buf) == 0, "exact capacity");
        free(buf);
    }
    {
        /* text_len is honoured: no NUL needed, bytes after it ignored. */
        int32_t part[16];
        size_t np = 0;
        EXPECT(lora_tokenize(m, "HelloXXXX", 5, part, 16, &np), LORA_OK);
        int32_t whole[16];
        size_t nw = 0;
        EXPECT(lora_tokenize(m, "Hello", 5, whole, 16, &nw), LORA_OK);
        CHECK(np == nw && memcmp(part, whole, np * sizeof *part) == 0, "text_len not honoured");
        size_t n0 = 99;
        EXPECT(lora_tokenize(m, "", 0, part, 16, &n0), LORA_OK);
        CHECK(n0 == 0, "empty text gives %zu tokens", n0);
        /* The special token is matched in the text. */
        EXPECT(lora_tokenize(m, "<|endoftext|>", 13, part, 16, &np), LORA_OK);
        CHECK(np == 1 && part[0] == TOK_EOS, "<|endoftext|> gives %zu tokens, first %d", np, np ? part[0] : -1);
    }
    {
        static const char bad1[] = "abc\xff\xfe";
        static const char bad2[] = "\xc3";         /* truncated 2-byte sequence */
        static const char bad3[] = "\xed\xa0\x80"; /* a UTF-16 surrogate */
        size_t nb = 0;
        EXPECT(lora_tokenize(m, bad1, sizeof bad1 - 1, ids, 128, &nb), LORA_INVALID_ARGUMENT);
        EXPECT(lora_tokenize(m, bad2, sizeof bad2 - 1, ids, 128, &nb), LORA_INVALID_ARGUMENT);
        EXPECT(lora_tokenize(m, bad3, sizeof bad3 - 1, ids, 128, &nb), LORA_INVALID_ARGUMENT);
        /* "H\xc3\xa9" cut in the middle of é by text_len */
        EXPECT(lora_tokenize(m, "H\xc3\xa9", 2, ids, 128, &nb), LORA_INVALID_ARGUMENT);
    }
    EXPECT(lora_tokenize(NULL, text, strlen(text), ids, 128, &n), LORA_INVALID_ARGUMENT);
    EXPECT(lora_tokenize(m, NULL, 4, ids, 128, &n), LORA_INVALID_ARGUMENT);
    EXPECT(lora_tokenize(a, text, strlen(text), ids, 128, &n), LORA_WRONG_STATE);

    /* Detokenize. */
    REQUIRE_OK(lora_tokenize(m, text, strlen(text), ids, 128, &n));
    {
        char buf[256];
        size_t needed = 0;
        EXPECT(lora_detokenize(m, ids, n, buf, sizeof buf, &needed), LORA_OK);
        CHECK(strcmp(buf, text) == 0 && needed == strlen(text), "round trip \"%s\" (needed %zu)", buf, needed);
        char small[4];
        needed = 0;
        EXPECT(lora_detokenize(m, ids, n, small, sizeof small, &needed), LORA_BUFFER_TOO_SMALL);
        CHECK(needed == strlen(text), "BUFFER_TOO_SMALL *needed %zu, expected %zu", needed, strlen(text));
        /* capacity == needed leaves no room for the NUL */
        EXPECT(lora_detokenize(m, ids, n, buf, strlen(text), &needed), LORA_BUFFER_TOO_SMALL);
        EXPECT(lora_detokenize(m, ids, n, buf, strlen(text) + 1, &needed), LORA_OK);
        needed = 0;
        EXPECT(lora_detokenize(m, ids, n, NULL, 0, &needed), LORA_BUFFER_TOO_SMALL);
        CHECK(needed == strlen(text), "size query *needed %zu", needed);
        EXPECT(lora_detokenize(m, ids, 0, buf, sizeof buf, &needed), LORA_OK);
        CHECK(buf[0] == 0 && needed == 0, "empty detokenize");

        /* A lone piece of a multi-byte character decodes to U+FFFD. */
        int32_t emoji[8];
        size_t ne = 0;
        EXPECT(lora_tokenize(m, "\xF0\x9F\x98\x80", 4, emoji, 8, &ne), LORA_OK);
        if (ne >= 2) {
            EXPECT(lora_detokenize(m, emoji, 1, buf, sizeof buf, &needed), LORA_OK);
            CHECK(strstr(buf, "\xEF\xBF\xBD") != NULL, "a partial character does not decode to U+FFFD");
            EXPECT(lora_detokenize(m, emoji, ne, buf, sizeof buf, &needed), LORA_OK);
            CHECK(strcmp(buf, "\xF0\x9F\x98\x80") == 0 && needed == 4, "emoji round trip");
        }
        int32_t bad[3] = {ids[0], TOK_VOCAB, ids[0]};
        EXPECT(lora_detokenize(m, bad, 3, buf, sizeof buf, &needed), LORA_INVALID_ARGUMENT);
        bad[1] = -1;
        EXPECT(lora_detokenize(m, bad, 3, buf, sizeof buf, &needed), LORA_INVALID_ARGUMENT);
        bad[1] = INT32_MIN;
        EXPECT(lora_detokenize(m, bad, 3, buf, sizeof buf, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_detokenize(NULL, ids, n, buf, sizeof buf, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_detokenize(m, NULL, 3, buf, sizeof buf, &needed), LORA_INVALID_ARGUMENT);
        EXPECT(lora_detokenize(a, ids, 1, buf, sizeof buf, &needed), LORA_WRONG_STATE);
    }
done:
    lora_model_free(a);
    lora_model_free(m);
}

/* ---- Agreement with transformers -------------------------------------- */

void test_reference_gpt2_tok(void) {
    st_file ref;
    lora_model *m = NULL;
    int32_t *want_ids = NULL, *ids = NULL;
    float *want_logits = NULL, *logits = NULL;
    char text[512];
    if (!st_open(&ref, path("%s/expected/gpt2-tok.safetensors", fixtures))) {
        CHECK(0, "cannot read expected/gpt2-tok.safetensors");
        goto done;
    }
    size_t n_ids = 0, n_logits = 0;
    want_ids = st_ids(&ref, "ids", &n_ids);
    want_logits = st_floats(&ref, "logits", &n_logits);
    CHECK(want_ids && want_logits && n_logits == n_ids * TOK_VOCAB, "reference tensors ids/logits");
    CHECK(st_metadata(&ref, "text", text, sizeof text), "reference text in the metadata");
    if (!want_ids || !want_logits) goto done;
    CHECK(strcmp(text, "Hello, world! The quick brown fox jumps over the lazy dog.") == 0, "reference text \"%s\"",
          text);
    m = load_model("gpt2-tok");
    if (!m) goto done;

    ids = malloc(256 * sizeof *ids);
    size_t n = 0;
    REQUIRE_OK(lora_tokenize(m, text, strlen(text), ids, 256, &n));
    CHECK(n == n_ids && memcmp(ids, want_ids, n * sizeof *ids) == 0, "token ids differ from transformers' (%zu vs %zu)",
          n, n_ids);

    logits = malloc(n_logits * sizeof *logits);
    REQUIRE_OK(lora_logits(m, want_ids, n_ids, logits, n_logits));
    float d = max_abs_diff(logits, want_logits, n_logits);
    CHECK(d <= TOL_REFERENCE, "logits differ from transformers' by %g", d);

    /* Buffers: one float short, NULL, and the misuses of the ids. */
    EXPECT(lora_logits(m, want_ids, n_ids, logits, n_logits - 1), LORA_BUFFER_TOO_SMALL);
    EXPECT(lora_logits(m, want_ids, n_ids, NULL, 0), LORA_BUFFER_TOO_SMALL);
    EXPECT(lora_logits(m, want_ids, n_ids, NULL, n_logits), LORA_INVALID_ARGUMENT);
    EXPECT(lora_logits(NULL, want_ids, n_ids, logits, n_logits), LORA_INVALID_ARGUMENT);
    EXPECT(lora_logits(m, NULL, n_ids, logits, n_logits), LORA_INVALID_ARGUMENT);
    EXPECT(lora_logits(m, want_ids, 0, logits, n_logits), LORA_INVALID_ARGUMENT);
    {
        int32_t bad[4] = {1, 2, TOK_VOCAB, 3};
        EXPECT(lora_logits(m, bad, 4, logits, n_logits), LORA_INVALID_ARGUMENT);
        bad[2] = -1;
        EXPECT(lora_logits(m, bad, 4, logits, n_logits), LORA_INVALID_ARGUMENT);
        bad[2] = INT32_MAX;
        EXPECT(lora_logits(m, bad, 4, logits, n_logits), LORA_INVALID_ARGUMENT);
    }
    {
        int32_t longer[TOK_POSITIONS + 1];
        for (int i = 0; i <= TOK_POSITIONS; i++) longer[i] = want_ids[i % n_ids];
        float *big = malloc((size_t)(TOK_POSITIONS + 1) * TOK_VOCAB * sizeof *big);
        EXPECT(lora_logits(m, longer, TOK_POSITIONS + 1, big, (size_t)(TOK_POSITIONS + 1) * TOK_VOCAB),
               LORA_INVALID_ARGUMENT);
        EXPECT(lora_logits(m, longer, TOK_POSITIONS, big, (size_t)(TOK_POSITIONS + 1) * TOK_VOCAB), LORA_OK);
        /* absurd counts must fail cleanly, not overflow */
        EXPECT(lora_logits(m, longer, SIZE_MAX / 2, big, 16), LORA_INVALID_ARGUMENT);
        free(big);
    }

    /* Batch: a prefix and the whole text, left and right padding. */
    {
        const size_t np = 10;
        float *prefix = malloc(np * TOK_VOCAB * sizeof *prefix);
        float *batch = malloc(2 * n_ids * TOK_VOCAB * sizeof *batch);
        const int32_t *seqs[2] = {want_ids, want_ids};
        size_t lens[2] = {np, n_ids};
        EXPECT(lora_logits(m, want_ids, np, prefix, np * TOK_VOCAB), LORA_OK);
        EXPECT(lora_logits_batch(m, seqs, lens, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_OK);
        float d0 = max_abs_diff(batch, prefix, np * TOK_VOCAB);
        float d1 = max_abs_diff(batch + n_ids * TOK_VOCAB, logits, n_ids * TOK_VOCAB);
        CHECK(d0 <= TOL_REFERENCE && d1 <= TOL_REFERENCE, "right-padded batch differs by %g / %g", d0, d1);
        int zeros = 1;
        for (size_t i = np * TOK_VOCAB; i < n_ids * TOK_VOCAB; i++) zeros &= batch[i] == 0.0f;
        CHECK(zeros, "right padding positions are not zeros");
        EXPECT(lora_logits_batch(m, seqs, lens, 2, 1, batch, 2 * n_ids * TOK_VOCAB), LORA_OK);
        d0 = max_abs_diff(batch + (n_ids - np) * TOK_VOCAB, prefix, np * TOK_VOCAB);
        d1 = max_abs_diff(batch + n_ids * TOK_VOCAB, logits, n_ids * TOK_VOCAB);
        CHECK(d0 <= TOL_REFERENCE && d1 <= TOL_REFERENCE, "left-padded batch differs by %g / %g", d0, d1);
        zeros = 1;
        for (size_t i = 0; i < (n_ids - np) * TOK_VOCAB; i++) zeros &= batch[i] == 0.0f;
        CHECK(zeros, "left padding positions are not zeros");
        EXPECT(lora_logits_batch(m, seqs, lens, 2, 0, batch, 2 * n_ids * TOK_VOCAB - 1), LORA_BUFFER_TOO_SMALL);
        EXPECT(lora_logits_batch(m, seqs, lens, 0, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        EXPECT(lora_logits_batch(m, NULL, lens, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        EXPECT(lora_logits_batch(m, seqs, NULL, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        size_t lens0[2] = {0, n_ids};
        EXPECT(lora_logits_batch(m, seqs, lens0, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        int32_t bad[3] = {5, -7, 5};
        const int32_t *bseqs[2] = {want_ids, bad};
        size_t blens[2] = {n_ids, 3};
        EXPECT(lora_logits_batch(m, bseqs, blens, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        size_t huge[2] = {n_ids, SIZE_MAX};
        EXPECT(lora_logits_batch(m, seqs, huge, 2, 0, batch, 2 * n_ids * TOK_VOCAB), LORA_INVALID_ARGUMENT);
        free(prefix);
        free(batch);
    }
done:
    free(ids);
    free(logits);
    free(want_ids);
    free(want_logits);
    st_close(&ref);
    lora_model_free(m);
}
