/* test_capi_adapters.c — adapters: PEFT reference outputs, creation and its errors. Part of test_capi (see
 * test_capi.c). */
#include "test_capi.h"

/* ---- Adapters -------------------------------------------------------- */

void test_adapter_reference(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    lora_adapter *ad = NULL;
    int32_t *ids = NULL;
    float *want = NULL, *got = NULL, *base = NULL;
    const char *peft = path("%s/lora/all", fixtures);
    if (!st_open(&ref, path("%s/lora/expected.safetensors", fixtures))) {
        CHECK(0, "cannot read lora/expected.safetensors");
        goto done;
    }
    size_t n_ids = 0, n_logits = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    want = st_floats(&ref, "logits.all", &n_logits);
    CHECK(ids && want && n_logits == n_ids * A_VOCAB, "reference tensors ids/logits.all");
    if (!ids || !want) goto done;
    m = load_model("gpt2-a");
    if (!m) goto done;
    got = malloc(n_logits * sizeof *got);
    base = malloc(n_logits * sizeof *base);
    REQUIRE_OK(lora_logits(m, ids, n_ids, base, n_logits));

    lora_adapter *bad = SENTINEL(lora_adapter);
    EXPECT(lora_adapter_load(NULL, m, peft), LORA_INVALID_ARGUMENT);
    EXPECT(lora_adapter_load(&bad, NULL, peft), LORA_INVALID_ARGUMENT);
    CHECK(bad == NULL, "*out not NULL after NULL model");
    bad = SENTINEL(lora_adapter);
    EXPECT(lora_adapter_load(&bad, m, NULL), LORA_INVALID_ARGUMENT);
    CHECK(bad == NULL, "*out not NULL after NULL path");
    bad = SENTINEL(lora_adapter);
    EXPECT(lora_adapter_load(&bad, m, path("%s/no-adapter-here", workdir)), LORA_IO_ERROR);
    CHECK(bad == NULL, "*out not NULL after a missing directory");

    REQUIRE_OK(lora_adapter_load(&ad, m, peft));
    CHECK(lora_adapter_n_params(ad) == 6144, "PEFT adapter n_params %lld", (long long)lora_adapter_n_params(ad));
    EXPECT(lora_model_detach(m, ad), LORA_WRONG_STATE);
    EXPECT(lora_model_set_adapter_scale(m, ad, 0.5f), LORA_WRONG_STATE);
    EXPECT(lora_model_unmerge(m, ad), LORA_WRONG_STATE);
    EXPECT(lora_model_attach(m, ad, NAN), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_attach(m, ad, INFINITY), LORA_INVALID_ARGUMENT);
    REQUIRE_OK(lora_model_attach(m, ad, 1.0f));
    EXPECT(lora_model_attach(m, ad, 1.0f), LORA_WRONG_STATE);
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    float d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_REFERENCE, "logits with the PEFT adapter differ from PEFT's by %g", d);

    /* Scale 0 disables it; scale 1 again restores. */
    EXPECT(lora_model_set_adapter_scale(m, ad, 0.0f), LORA_OK);
    EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
    CHECK(max_abs_diff(got, base, n_logits) == 0.0f, "scale 0 is not the base model");
    EXPECT(lora_model_set_adapter_scale(m, ad, NAN), LORA_INVALID_ARGUMENT);
    EXPECT(lora_model_set_adapter_scale(m, ad, 1.0f), LORA_OK);

    /* Merge, save the merged model, unmerge. */
    EXPECT(lora_model_merge(m, ad), LORA_OK);
    EXPECT(lora_model_merge(m, ad), LORA_WRONG_STATE);
    EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
    d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_MERGE + TOL_REFERENCE, "merged logits differ by %g", d);
    {
        const char *saved = path("%s/merged-model", workdir);
        EXPECT(lora_model_save(m, saved), LORA_OK);
        lora_model *m2 = NULL;
        EXPECT(lora_model_load(&m2, saved, NULL), LORA_OK);
        if (m2) {
            float *again = malloc(n_logits * sizeof *again);
            EXPECT(lora_logits(m2, ids, n_ids, again, n_logits), LORA_OK);
            d = max_abs_diff(got, again, n_logits);
            CHECK(d <= TOL_SAVED, "saved merged model differs by %g", d);
            free(again);
            lora_model_free(m2);
        }
        EXPECT(lora_model_save(m, NULL), LORA_INVALID_ARGUMENT);
        EXPECT(lora_model_save(NULL, saved), LORA_INVALID_ARGUMENT);
    }
    EXPECT(lora_model_unmerge(m, ad), LORA_OK);
    EXPECT(lora_model_unmerge(m, ad), LORA_WRONG_STATE);
    EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
    d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_MERGE + TOL_REFERENCE, "unmerged logits differ by %g", d);

    /* Save: the adapter file is byte-identical to PEFT's. */
    {
        const char *out = path("%s/saved-adapter", workdir);
        EXPECT(lora_adapter_save(ad, out), LORA_OK);
        size_t n1 = 0, n2 = 0;
        unsigned char *mine = read_file(path("%s/adapter_model.safetensors", out), &n1);
        unsigned char *theirs = read_file(path("%s/adapter_model.safetensors", peft), &n2);
        CHECK(mine && theirs && n1 == n2 && memcmp(mine, theirs, n1) == 0,
              "saved adapter_model.safetensors (%zu bytes) is not byte-identical to PEFT's (%zu bytes)", n1, n2);
        free(mine);
        free(theirs);
        CHECK(access_ok(path("%s/adapter_config.json", out)), "adapter_config.json written");
        /* ... and loads back to the same logits. */
        lora_adapter *back = NULL;
        EXPECT(lora_adapter_load(&back, m, out), LORA_OK);
        EXPECT(lora_model_detach(m, ad), LORA_OK);
        if (back) {
            EXPECT(lora_model_attach(m, back, 1.0f), LORA_OK);
            EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
            d = max_abs_diff(got, want, n_logits);
            CHECK(d <= TOL_REFERENCE, "reloaded adapter differs by %g", d);
            lora_adapter_free(back); /* freeing an attached adapter detaches it */
            EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
            d = max_abs_diff(got, base, n_logits);
            CHECK(d <= TOL_MERGE, "freeing an attached adapter did not detach it (logits differ from the base by %g)",
                  d);
        }
        EXPECT(lora_adapter_save(NULL, out), LORA_INVALID_ARGUMENT);
        EXPECT(lora_adapter_save(ad, NULL), LORA_INVALID_ARGUMENT);
        /* A path under a regular file cannot be created. */
        EXPECT(lora_adapter_save(ad, path("%s/adapter_config.json/sub", out)), LORA_IO_ERROR);
    }
    /* Broken adapter directories. */
    {
        const char *dir = path("%s/broken-adapter", workdir);
        mkdir(dir, 0755);
        size_t n = 0;
        unsigned char *w = read_file(path("%s/adapter_model.safetensors", peft), &n);
        FILE *f = fopen(path("%s/adapter_model.safetensors", dir), "wb");
        if (f && w) fwrite(w, 1, n, f);
        if (f) fclose(f);
        free(w);
        CHECK(write_file(path("%s/adapter_config.json", dir), "{\"r\": 4, \"lora_alpha\": "), "write config");
        bad = SENTINEL(lora_adapter);
        EXPECT(lora_adapter_load(&bad, m, dir), LORA_INVALID_FILE);
        CHECK(bad == NULL, "*out not NULL after a broken adapter config");
        /* The PEFT adapter onto a model of another shape. */
        lora_model *tok = load_model("gpt2-tok");
        if (tok) {
            bad = SENTINEL(lora_adapter);
            EXPECT(lora_adapter_load(&bad, tok, peft), LORA_INVALID_FILE);
            CHECK(bad == NULL, "*out not NULL after a shape mismatch");
            /* An adapter of one model handle cannot be attached to another. */
            EXPECT(lora_model_attach(tok, ad, 1.0f), LORA_INVALID_ARGUMENT);
            lora_model_free(tok);
        }
    }
done:
    lora_adapter_free(ad);
    lora_model_free(m);
    st_close(&ref);
    free(ids);
    free(want);
    free(got);
    free(base);
}

void test_adapter_create(void) {
    lora_model *m = load_model("gpt2-tok");
    lora_adapter *ad = NULL;
    float *base = NULL, *got = NULL;
    if (!m) return;
    int32_t ids[6] = {10, 20, 30, 40, 50, 60};
    const size_t n = 6 * TOK_VOCAB;
    base = malloc(n * sizeof *base);
    got = malloc(n * sizeof *got);
    REQUIRE_OK(lora_logits(m, ids, 6, base, n));

    lora_adapter_params p;
    lora_adapter_default_params(&p);
    lora_adapter *a = SENTINEL(lora_adapter);

    /* NULL params: r 8 on c_attn. */
    REQUIRE_OK(lora_adapter_create(&ad, m, NULL));
    CHECK(lora_adapter_n_params(ad) == 2 * 8 * (TOK_EMBD + 3 * TOK_EMBD), "default adapter n_params %lld",
          (long long)lora_adapter_n_params(ad));
    /* B starts at zero: attaching changes nothing. */
    EXPECT(lora_model_attach(m, ad, 1.0f), LORA_OK);
    EXPECT(lora_logits(m, ids, 6, got, n), LORA_OK);
    CHECK(max_abs_diff(got, base, n) == 0.0f, "a fresh adapter changes the logits");
    EXPECT(lora_model_detach(m, ad), LORA_OK);
    EXPECT(lora_model_detach(m, ad), LORA_WRONG_STATE);
    lora_adapter_free(ad);
    ad = NULL;

    p.target_modules = "c_attn,attn.c_proj,mlp.c_fc";
    REQUIRE_OK(lora_adapter_create(&ad, m, &p));
    CHECK(lora_adapter_n_params(ad) == 2 * 8 * ((TOK_EMBD + 3 * TOK_EMBD) + 2 * TOK_EMBD + 5 * TOK_EMBD),
          "3-target adapter n_params %lld", (long long)lora_adapter_n_params(ad));
    lora_adapter_free(ad);
    ad = NULL;

    p.target_modules = ".*\\.attn\\.c_attn";
    p.target_modules_regex = 1;
    REQUIRE_OK(lora_adapter_create(&ad, m, &p));
    CHECK(lora_adapter_n_params(ad) == 2 * 8 * 4 * TOK_EMBD, "regex adapter n_params %lld",
          (long long)lora_adapter_n_params(ad));
    lora_adapter_free(ad);
    ad = NULL;

    {
        int32_t layers[1] = {1};
        lora_adapter_default_params(&p);
        p.layers_to_transform = layers;
        p.n_layers_to_transform = 1;
        p.init = LORA_INIT_RANDOM;
        REQUIRE_OK(lora_adapter_create(&ad, m, &p));
        CHECK(lora_adapter_n_params(ad) == 8 * 4 * TOK_EMBD, "one-layer adapter n_params %lld",
              (long long)lora_adapter_n_params(ad));
        EXPECT(lora_model_attach(m, ad, 1.0f), LORA_OK);
        EXPECT(lora_logits(m, ids, 6, got, n), LORA_OK);
        CHECK(max_abs_diff(got, base, n) > 0.0f, "a random adapter does not change the logits");
        /* merge of an attached adapter, then merge again */
        EXPECT(lora_model_merge(m, ad), LORA_OK);
        EXPECT(lora_model_merge(m, ad), LORA_WRONG_STATE);
        EXPECT(lora_model_unmerge(m, ad), LORA_OK);
        EXPECT(lora_model_detach(m, ad), LORA_OK);
        EXPECT(lora_logits(m, ids, 6, got, n), LORA_OK);
        float d = max_abs_diff(got, base, n);
        CHECK(d <= TOL_MERGE, "merge + unmerge + detach leaves %g", d);
        lora_adapter_free(ad);
        ad = NULL;
        /* An adapter not attached yet is attached merged. */
        REQUIRE_OK(lora_adapter_create(&ad, m, &p));
        EXPECT(lora_model_merge(m, ad), LORA_OK);
        EXPECT(lora_model_attach(m, ad, 1.0f), LORA_WRONG_STATE);
        EXPECT(lora_model_unmerge(m, ad), LORA_OK);
        EXPECT(lora_model_detach(m, ad), LORA_OK);
        lora_adapter_free(ad);
        ad = NULL;
        /* layers out of range, and n > 0 with NULL */
        layers[0] = 2;
        a = SENTINEL(lora_adapter);
        EXPECT(lora_adapter_create(&a, m, &p), LORA_INVALID_ARGUMENT);
        CHECK(a == NULL, "*out not NULL after a layer out of range");
        layers[0] = -1;
        EXPECT(lora_adapter_create(&a, m, &p), LORA_INVALID_ARGUMENT);
        p.layers_to_transform = NULL;
        EXPECT(lora_adapter_create(&a, m, &p), LORA_INVALID_ARGUMENT);
    }

    /* A merge that would overflow fails and changes nothing. */
    lora_adapter_default_params(&p);
    p.init = LORA_INIT_RANDOM;
    p.r = 1;
    p.lora_alpha = 3e38f;
    REQUIRE_OK(lora_adapter_create(&ad, m, &p));
    EXPECT(lora_model_attach(m, ad, 3e38f), LORA_OK);
    EXPECT(lora_model_merge(m, ad), LORA_NUMERICAL_ERROR);
    EXPECT(lora_model_unmerge(m, ad), LORA_WRONG_STATE);
    EXPECT(lora_model_detach(m, ad), LORA_OK);
    EXPECT(lora_logits(m, ids, 6, got, n), LORA_OK);
    CHECK(max_abs_diff(got, base, n) <= TOL_MERGE, "a failed merge changed the weights");
    lora_adapter_free(ad);
    ad = NULL;

    /* Misuse. */
    lora_adapter_default_params(&p);
    EXPECT(lora_adapter_create(NULL, m, &p), LORA_INVALID_ARGUMENT);
    a = SENTINEL(lora_adapter);
    EXPECT(lora_adapter_create(&a, NULL, &p), LORA_INVALID_ARGUMENT);
    CHECK(a == NULL, "*out not NULL after NULL model");
#define BAD_ADAPTER(field, value, want)                                                                                \
    do {                                                                                                               \
        lora_adapter_default_params(&p);                                                                               \
        p.field = value;                                                                                               \
        a = SENTINEL(lora_adapter);                                                                                    \
        EXPECT(lora_adapter_create(&a, m, &p), want);                                                                  \
        CHECK(a == NULL, "*out not NULL after " #field " = " #value);                                                  \
        lora_adapter_free(a == SENTINEL(lora_adapter) ? NULL : a);                                                     \
    } while (0)
    BAD_ADAPTER(struct_size, 0, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(struct_size, sizeof p + 8, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(r, 0, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(r, -4, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(lora_alpha, NAN, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(lora_alpha, INFINITY, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(lora_dropout, 1.0f, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(lora_dropout, -0.5f, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(lora_dropout, NAN, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(init, 5, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(init, -1, LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(target_modules, "no_such_module", LORA_INVALID_ARGUMENT);
    BAD_ADAPTER(target_modules, "lm_head", LORA_UNSUPPORTED);
    BAD_ADAPTER(target_modules, "wpe", LORA_UNSUPPORTED);
    BAD_ADAPTER(target_modules, "\xff", LORA_INVALID_ARGUMENT);
    {
        lora_adapter_default_params(&p);
        p.target_modules = "([unclosed";
        p.target_modules_regex = 1;
        a = SENTINEL(lora_adapter);
        EXPECT(lora_adapter_create(&a, m, &p), LORA_INVALID_ARGUMENT);
        CHECK(a == NULL, "*out not NULL after a bad regex");
    }
    /* An older, smaller struct (up to lora_alpha): the rest are defaults. */
    lora_adapter_default_params(&p);
    p.struct_size = (uint32_t)offsetof(lora_adapter_params, lora_dropout);
    p.r = 2;
    p.lora_dropout = 7.0f; /* beyond struct_size: must not be read */
    p.init = 99;
    REQUIRE_OK(lora_adapter_create(&ad, m, &p));
    CHECK(lora_adapter_n_params(ad) == 2 * 2 * 4 * TOK_EMBD, "small-struct adapter n_params %lld",
          (long long)lora_adapter_n_params(ad));
done:
    lora_adapter_free(ad);
    lora_model_free(m);
    free(base);
    free(got);
}

/* ---- Combination (PEFT's add_weighted_adapter) ------------------------- */

void test_adapter_combine(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    lora_adapter *all = NULL, *all2 = NULL, *pattern = NULL, *ties = NULL, *other = NULL;
    int32_t *ids = NULL;
    float *want = NULL, *got = NULL;
    if (!st_open(&ref, path("%s/task_merge/expected.safetensors", fixtures))) {
        CHECK(0, "cannot read task_merge/expected.safetensors");
        goto done;
    }
    size_t n_ids = 0, n_logits = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    want = st_floats(&ref, "logits.ties", &n_logits);
    CHECK(ids && want && n_logits == n_ids * A_VOCAB, "reference tensors ids/logits.ties");
    if (!ids || !want) goto done;
    m = load_model("gpt2-a");
    if (!m) goto done;
    got = malloc(n_logits * sizeof *got);
    REQUIRE_OK(lora_adapter_load(&all, m, path("%s/lora/all", fixtures)));
    REQUIRE_OK(lora_adapter_load(&all2, m, path("%s/combine/all2", fixtures)));
    REQUIRE_OK(lora_adapter_load(&pattern, m, path("%s/lora/pattern", fixtures)));
    const lora_adapter *pair[2] = {all, all2};
    const float w[2] = {0.6f, 0.5f};

    lora_combine_params p;
    memset(&p, 0xAB, sizeof p);
    lora_combine_default_params(&p);
    CHECK(p.struct_size == sizeof p && p.method == LORA_COMBINE_SVD && p.svd_rank == 0 && p.svd_clamp == 0.0f &&
              p.density == 1.0f && p.majority_sign_method == LORA_MAJORITY_SIGN_TOTAL && p.seed == 0,
          "lora_combine_default_params");

    /* TIES through the C ABI: PEFT's logits. */
    p.method = LORA_COMBINE_TIES;
    p.density = 0.5f;
    REQUIRE_OK(lora_adapter_combine_v2(&ties, pair, w, 2, &p));
    REQUIRE_OK(lora_model_attach(m, ties, 1.0f));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    float d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_REFERENCE, "ties logits differ from PEFT's by %g", d);
    REQUIRE_OK(lora_model_detach(m, ties));

    /* Misuse: every failure leaves *out NULL. */
    other = SENTINEL(lora_adapter);
    p.density = 0.0f;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    CHECK(other == NULL, "*out not NULL after density 0");
    p.density = 1.5f;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    p.density = NAN;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    p.density = 0.5f;
    p.majority_sign_method = 7;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    p.majority_sign_method = LORA_MAJORITY_SIGN_FREQUENCY;
    p.method = 99;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    p.method = LORA_COMBINE_DARE_TIES;
    const lora_adapter *uneven[2] = {all, pattern};
    EXPECT(lora_adapter_combine_v2(&other, uneven, w, 2, &p), LORA_INVALID_ARGUMENT); /* unequal ranks */
    p.struct_size = sizeof p + 8;
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    p.struct_size = sizeof p;
    EXPECT(lora_adapter_combine_v2(NULL, pair, w, 2, &p), LORA_INVALID_ARGUMENT);
    EXPECT(lora_adapter_combine_v2(&other, NULL, w, 2, &p), LORA_INVALID_ARGUMENT);
    EXPECT(lora_adapter_combine_v2(&other, pair, w, 0, &p), LORA_INVALID_ARGUMENT);
    /* The task merges are not reachable through the first function. */
    EXPECT(lora_adapter_combine(&other, pair, w, 2, LORA_COMBINE_TIES, 0, 0.0f), LORA_INVALID_ARGUMENT);
    CHECK(other == NULL, "*out not NULL after a refused combination");

    /* DARE-TIES then an SVD, and NULL params (svd): they run. */
    p.method = LORA_COMBINE_DARE_TIES_SVD;
    p.svd_rank = 2;
    p.seed = 5;
    REQUIRE_OK(lora_adapter_combine_v2(&other, uneven, w, 2, &p));
    lora_adapter_free(other);
    other = NULL;
    REQUIRE_OK(lora_adapter_combine_v2(&other, uneven, w, 2, NULL));

done:
    lora_adapter_free(other);
    lora_adapter_free(ties);
    lora_adapter_free(pattern);
    lora_adapter_free(all2);
    lora_adapter_free(all);
    lora_model_free(m);
    free(got);
    free(ids);
    free(want);
    st_close(&ref);
}

/* lora_bias: PEFT's adapter gives PEFT's logits, merged too; a fresh one is the base model; refused with DoRA. */
void test_adapter_lora_bias(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    lora_adapter *peft = NULL, *fresh = NULL;
    int32_t *ids = NULL;
    float *want = NULL, *merged = NULL, *got = NULL, *base = NULL;
    if (!st_open(&ref, path("%s/lora_bias/expected.safetensors", fixtures))) {
        CHECK(0, "cannot read lora_bias/expected.safetensors");
        goto done;
    }
    size_t n_ids = 0, n_logits = 0, n_merged = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    want = st_floats(&ref, "logits.all", &n_logits);
    merged = st_floats(&ref, "logits.merged", &n_merged);
    CHECK(ids && want && merged && n_logits == n_ids * A_VOCAB && n_merged == n_logits, "reference tensors");
    if (!ids || !want || !merged) goto done;
    m = load_model("gpt2-a");
    if (!m) goto done;
    got = malloc(n_logits * sizeof *got);
    base = malloc(n_logits * sizeof *base);
    REQUIRE_OK(lora_logits(m, ids, n_ids, base, n_logits));
    REQUIRE_OK(lora_adapter_load(&peft, m, path("%s/lora_bias/all", fixtures)));
    /* 2 layers x (A, B, b) of c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj at r 4, n_embd 48. */
    long long n = (long long)lora_adapter_n_params(peft);
    long long expect_n =
        2LL * (4 * 48 + 144 * 4 + 144 + 4 * 48 + 48 * 4 + 48 + 4 * 48 + 192 * 4 + 192 + 4 * 192 + 48 * 4 + 48);
    CHECK(n == expect_n, "lora_bias adapter n_params %lld, expected %lld", n, expect_n);
    REQUIRE_OK(lora_model_attach(m, peft, 1.0f));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    float d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_REFERENCE, "logits with PEFT's lora_bias adapter differ from PEFT's by %g", d);
    REQUIRE_OK(lora_model_merge(m, peft));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    d = max_abs_diff(got, merged, n_logits);
    CHECK(d <= TOL_MERGE + TOL_REFERENCE, "merged lora_bias logits differ from PEFT's merge_and_unload by %g", d);
    REQUIRE_OK(lora_model_unmerge(m, peft));
    REQUIRE_OK(lora_model_detach(m, peft));

    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.lora_bias = 1;
    ap.seed = 7;
    REQUIRE_OK(lora_adapter_create(&fresh, m, &ap));
    REQUIRE_OK(lora_model_attach(m, fresh, 1.0f));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    d = max_abs_diff(got, base, n_logits);
    /* 1e-5: the merge and unmerge above moved the base weights by float rounding. */
    CHECK(d <= 1e-5f, "a fresh lora_bias adapter changes the logits by %g", d);
    REQUIRE_OK(lora_model_detach(m, fresh));
    {
        lora_adapter *bad = SENTINEL(lora_adapter);
        ap.use_dora = 1;
        EXPECT(lora_adapter_create(&bad, m, &ap), LORA_UNSUPPORTED);
        CHECK(bad == NULL, "*out not NULL after lora_bias with use_dora");
        ap.use_dora = 0;
        ap.init = LORA_INIT_GAUSSIAN;
        EXPECT(lora_adapter_create(&bad, m, &ap), LORA_INVALID_ARGUMENT);
        CHECK(bad == NULL, "*out not NULL after lora_bias with gaussian init");
    }
done:
    lora_adapter_free(peft);
    lora_adapter_free(fresh);
    lora_model_free(m);
    free(ids);
    free(want);
    free(merged);
    free(got);
    free(base);
    st_close(&ref);
}

/* DoRA (use_dora): PEFT's adapter gives PEFT's logits; a fresh one starts as the base model. */
void test_adapter_dora(void) {
    st_file ref;
    memset(&ref, 0, sizeof ref);
    lora_model *m = NULL;
    lora_adapter *peft = NULL, *fresh = NULL;
    int32_t *ids = NULL;
    float *want = NULL, *got = NULL, *base = NULL;
    if (!st_open(&ref, path("%s/dora/expected.safetensors", fixtures))) {
        CHECK(0, "cannot read dora/expected.safetensors");
        goto done;
    }
    size_t n_ids = 0, n_logits = 0, n_merged = 0;
    ids = st_ids(&ref, "ids", &n_ids);
    want = st_floats(&ref, "logits.all", &n_logits);
    float *merged = st_floats(&ref, "logits.merged", &n_merged);
    CHECK(ids && want && merged && n_logits == n_ids * A_VOCAB, "reference tensors ids/logits.all");
    free(merged);
    if (!ids || !want) goto done;
    m = load_model("gpt2-a");
    if (!m) goto done;
    got = malloc(n_logits * sizeof *got);
    base = malloc(n_logits * sizeof *base);
    REQUIRE_OK(lora_logits(m, ids, n_ids, base, n_logits));

    REQUIRE_OK(lora_adapter_load(&peft, m, path("%s/dora/all", fixtures)));
    /* 2 layers x (A, B, m) of c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj at r 4, n_embd 48. */
    long long n = (long long)lora_adapter_n_params(peft);
    long long expect_n =
        2LL * (4 * 48 + 144 * 4 + 144 + 4 * 48 + 48 * 4 + 48 + 4 * 48 + 192 * 4 + 192 + 4 * 192 + 48 * 4 + 48);
    CHECK(n == expect_n, "DoRA adapter n_params %lld, expected %lld", n, expect_n);
    REQUIRE_OK(lora_model_attach(m, peft, 1.0f));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    float d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_REFERENCE, "logits with PEFT's DoRA adapter differ from PEFT's by %g", d);
    REQUIRE_OK(lora_model_merge(m, peft));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    d = max_abs_diff(got, want, n_logits);
    CHECK(d <= TOL_MERGE + TOL_REFERENCE, "merged DoRA logits differ by %g", d);
    REQUIRE_OK(lora_model_unmerge(m, peft));
    REQUIRE_OK(lora_model_detach(m, peft));

    lora_adapter_params ap;
    lora_adapter_default_params(&ap);
    ap.use_dora = 1;
    ap.target_modules = "c_attn,c_proj";
    ap.seed = 7;
    REQUIRE_OK(lora_adapter_create(&fresh, m, &ap));
    REQUIRE_OK(lora_model_attach(m, fresh, 1.0f));
    REQUIRE_OK(lora_logits(m, ids, n_ids, got, n_logits));
    d = max_abs_diff(got, base, n_logits);
    CHECK(d <= 1e-5f, "a fresh DoRA adapter changes the logits by %g", d);
    {
        lora_adapter *bad = SENTINEL(lora_adapter);
        ap.init = LORA_INIT_OLORA;
        EXPECT(lora_adapter_create(&bad, m, &ap), LORA_UNSUPPORTED);
        CHECK(bad == NULL, "*out not NULL after use_dora with OLoRA");
    }
    REQUIRE_OK(lora_model_detach(m, fresh));
    {
        /* modules_to_save: LayerNorm copies, trained with the adapter; they start as the model's. */
        lora_adapter *saved = NULL, *bad = SENTINEL(lora_adapter);
        lora_adapter_params sp;
        lora_adapter_default_params(&sp);
        CHECK(sp.modules_to_save == NULL, "modules_to_save default not NULL");
        sp.modules_to_save = "ln_f, h.1.ln_1";
        REQUIRE_OK(lora_adapter_create(&saved, m, &sp));
        n = (long long)lora_adapter_n_params(saved);
        CHECK(n == 2LL * 8 * (48 + 144) + 4 * 48, "n_params with modules_to_save %lld", n);
        EXPECT(lora_model_attach(m, saved, 1.0f), LORA_OK);
        EXPECT(lora_logits(m, ids, n_ids, got, n_logits), LORA_OK);
        d = max_abs_diff(got, base, n_logits);
        /* 1e-5: the DoRA merge and unmerge above left the weights within float rounding of `base`'s. */
        CHECK(d <= 1e-5f, "fresh modules_to_save copies change the logits by %g", d);
        lora_adapter_free(saved);
        sp.modules_to_save = "wte";
        EXPECT(lora_adapter_create(&bad, m, &sp), LORA_UNSUPPORTED);
        CHECK(bad == NULL, "*out not NULL after modules_to_save wte");
        bad = SENTINEL(lora_adapter);
        sp.modules_to_save = "no_such_module";
        EXPECT(lora_adapter_create(&bad, m, &sp), LORA_INVALID_ARGUMENT);
        CHECK(bad == NULL, "*out not NULL after modules_to_save matching nothing");
    }
done:
    lora_adapter_free(fresh);
    lora_adapter_free(peft);
    lora_model_free(m);
    free(ids);
    free(want);
    free(got);
    free(base);
    st_close(&ref);
}
