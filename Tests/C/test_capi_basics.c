/* test_capi_basics.c — versions, status names, default params, free(NULL). Part of test_capi (see test_capi.c). */
#include "test_capi.h"

/* ---- Versions and status names --------------------------------------- */

void test_versions(void) {
    CHECK(lora_version_number() == LORA_VERSION_NUMBER, "lora_version_number() %u != LORA_VERSION_NUMBER %d",
          lora_version_number(), LORA_VERSION_NUMBER);
    CHECK(LORA_VERSION_NUMBER == LORA_VERSION_MAJOR * 10000 + LORA_VERSION_MINOR * 100 + LORA_VERSION_PATCH,
          "LORA_VERSION_NUMBER formula");
    CHECK(lora_abi_version() == LORA_ABI_VERSION, "lora_abi_version() %u != %d", lora_abi_version(), LORA_ABI_VERSION);
    char expect[64];
    snprintf(expect, sizeof expect, "%d.%d.%d", LORA_VERSION_MAJOR, LORA_VERSION_MINOR, LORA_VERSION_PATCH);
    const char *v = lora_version_string();
    CHECK(v != NULL && strcmp(v, expect) == 0, "lora_version_string() \"%s\" != \"%s\"", v ? v : "(NULL)", expect);
}

void test_status_strings(void) {
    static const struct {
        lora_status code;
        const char *name;
    } names[] = {
        {LORA_OK, "LORA_OK"},
        {LORA_ERROR, "LORA_ERROR"},
        {LORA_INVALID_ARGUMENT, "LORA_INVALID_ARGUMENT"},
        {LORA_INVALID_FILE, "LORA_INVALID_FILE"},
        {LORA_IO_ERROR, "LORA_IO_ERROR"},
        {LORA_UNSUPPORTED, "LORA_UNSUPPORTED"},
        {LORA_BUFFER_TOO_SMALL, "LORA_BUFFER_TOO_SMALL"},
        {LORA_ABORTED, "LORA_ABORTED"},
        {LORA_NUMERICAL_ERROR, "LORA_NUMERICAL_ERROR"},
        {LORA_BACKEND_ERROR, "LORA_BACKEND_ERROR"},
        {LORA_WRONG_STATE, "LORA_WRONG_STATE"},
    };
    /* The pinned values. */
    CHECK(LORA_OK == 0 && LORA_ERROR == 1 && LORA_INVALID_ARGUMENT == 2 && LORA_INVALID_FILE == 3 &&
              LORA_IO_ERROR == 4 && LORA_UNSUPPORTED == 5 && LORA_BUFFER_TOO_SMALL == 6 && LORA_ABORTED == 7 &&
              LORA_NUMERICAL_ERROR == 8 && LORA_BACKEND_ERROR == 9 && LORA_WRONG_STATE == 10,
          "status values renumbered");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *s = lora_status_string(names[i].code);
        CHECK(s != NULL && strcmp(s, names[i].name) == 0, "lora_status_string(%d) = \"%s\", expected \"%s\"",
              names[i].code, s ? s : "(NULL)", names[i].name);
    }
    static const lora_status unknown[] = {-1, 11, 1000, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = lora_status_string(unknown[i]);
        CHECK(s != NULL && strcmp(s, "LORA_UNKNOWN_STATUS") == 0, "lora_status_string(%d) = \"%s\"", unknown[i],
              s ? s : "(NULL)");
    }
    CHECK(lora_last_error() != NULL, "lora_last_error() is never NULL");
}

/* ---- Defaults ------------------------------------------------------------ */

void test_defaults(void) {
    lora_model_params mp;
    memset(&mp, 0xAB, sizeof mp);
    lora_model_default_params(&mp);
    CHECK(mp.struct_size == sizeof mp, "model params struct_size %u", mp.struct_size);
    CHECK(mp.n_threads == 0, "model params n_threads %d", mp.n_threads);

    lora_sampling_params sp;
    memset(&sp, 0xAB, sizeof sp);
    lora_sampling_default_params(&sp);
    CHECK(sp.struct_size == sizeof sp, "sampling struct_size %u", sp.struct_size);
    CHECK(sp.max_new_tokens == 64, "max_new_tokens %d", sp.max_new_tokens);
    CHECK(sp.temperature == 1.0f, "temperature %g", sp.temperature);
    CHECK(sp.top_k >= 0, "top_k %d", sp.top_k);
    CHECK(sp.top_p > 0.0f && sp.top_p <= 1.0f, "top_p %g", sp.top_p);
    CHECK(sp.repetition_penalty == 1.0f, "repetition_penalty %g", sp.repetition_penalty);
    CHECK(sp.stop_at_eos == 1, "stop_at_eos %d", sp.stop_at_eos);
    CHECK(sp.stop_strings == NULL && sp.n_stop_strings == 0, "stop strings");

    lora_adapter_params ap;
    memset(&ap, 0xAB, sizeof ap);
    lora_adapter_default_params(&ap);
    CHECK(ap.struct_size == sizeof ap, "adapter struct_size %u", ap.struct_size);
    CHECK(ap.r == 8, "r %d", ap.r);
    CHECK(ap.lora_alpha == 8.0f, "lora_alpha %g", ap.lora_alpha);
    CHECK(ap.lora_dropout == 0.0f, "lora_dropout %g", ap.lora_dropout);
    CHECK(ap.target_modules == NULL && ap.target_modules_regex == 0, "target_modules");
    CHECK(ap.use_rslora == 0 && ap.init == LORA_INIT_DEFAULT, "use_rslora %d init %d", ap.use_rslora, ap.init);
    CHECK(ap.use_dora == 0, "use_dora %d", ap.use_dora);
    CHECK(ap.lora_bias == 0, "lora_bias %d", ap.lora_bias);
    CHECK(ap.layers_to_transform == NULL && ap.n_layers_to_transform == 0, "layers_to_transform");

    lora_trainer_params tp;
    memset(&tp, 0xAB, sizeof tp);
    lora_trainer_default_params(&tp);
    CHECK(tp.struct_size == sizeof tp, "trainer struct_size %u", tp.struct_size);
    CHECK(fabsf(tp.learning_rate - 2e-4f) < 1e-9f, "learning_rate %g", tp.learning_rate);
    CHECK(tp.weight_decay == 0.0f, "weight_decay %g", tp.weight_decay);
    CHECK(tp.adam_beta1 == 0.9f && tp.adam_beta2 == 0.999f && tp.adam_epsilon == 1e-8f, "adam %g %g %g", tp.adam_beta1,
          tp.adam_beta2, tp.adam_epsilon);
    CHECK(tp.lr_scheduler == LORA_SCHEDULER_LINEAR, "lr_scheduler %d", tp.lr_scheduler);
    CHECK(tp.loraplus_lr_ratio == 1.0f, "loraplus_lr_ratio %g", tp.loraplus_lr_ratio);
    CHECK(tp.warmup_steps >= 0, "warmup_steps %d", tp.warmup_steps);
    CHECK(tp.max_steps == 100 && tp.gradient_accumulation_steps == 1, "max_steps %d accumulation %d", tp.max_steps,
          tp.gradient_accumulation_steps);
    CHECK(tp.max_grad_norm == 1.0f, "max_grad_norm %g", tp.max_grad_norm);
    CHECK(tp.batch_size == 4 && tp.block_size == 0, "batch %d block %d (0: min(256, n_positions))", tp.batch_size,
          tp.block_size);
    CHECK(tp.gradient_checkpointing == 0, "gradient_checkpointing %d", tp.gradient_checkpointing);
    CHECK(tp.model_dropout == 0, "model_dropout %d", tp.model_dropout);

    lora_train_params rp;
    memset(&rp, 0xAB, sizeof rp);
    lora_train_default_params(&rp);
    CHECK(rp.struct_size == sizeof rp, "train struct_size %u", rp.struct_size);
    CHECK(rp.validation_fraction == 0.0f && rp.eval_steps == 0 && rp.save_steps == 0, "train params");
    CHECK(rp.checkpoint_dir == NULL && rp.skip_bad_records == 0, "checkpoint_dir / skip_bad_records");
    CHECK(rp.num_train_epochs == 0.0f, "num_train_epochs %g", rp.num_train_epochs);

    /* default_params(NULL) is a no-op, not a crash (the plain functions and _v2). */
    (lora_model_default_params)(NULL);
    (lora_sampling_default_params)(NULL);
    (lora_adapter_default_params)(NULL);
    (lora_trainer_default_params)(NULL);
    (lora_train_default_params)(NULL);
    lora_model_default_params_v2(NULL, sizeof(lora_model_params));
    lora_trainer_default_params_v2(NULL, sizeof(lora_trainer_params));
    CHECK(1, "");

    /* A program built against 0.1.0 calls the plain functions with 0.1.0's
     * structs: nothing may be written past them (lora_model_params was 8
     * bytes there, lora_adapter_params 72). */
#define OLD_STRUCT(type, fn, old_size)                                                                                 \
    do {                                                                                                               \
        union {                                                                                                        \
            type p;                                                                                                    \
            unsigned char b[sizeof(type) + 32];                                                                        \
        } u;                                                                                                           \
        memset(&u, 0xAB, sizeof u);                                                                                    \
        (fn)(&u.p);                                                                                                    \
        CHECK(u.p.struct_size == (old_size), #fn " wrote struct_size %u", u.p.struct_size);                            \
        size_t past = 0;                                                                                               \
        for (size_t i = (old_size); i < sizeof u.b; i++) past += u.b[i] != 0xAB;                                       \
        CHECK(past == 0, #fn " wrote %zu bytes past the %d-byte struct", past, (int)(old_size));                       \
    } while (0)
    OLD_STRUCT(lora_model_params, lora_model_default_params, 8);
    OLD_STRUCT(lora_sampling_params, lora_sampling_default_params, 56);
    OLD_STRUCT(lora_adapter_params, lora_adapter_default_params, 72);
    OLD_STRUCT(lora_trainer_params, lora_trainer_default_params, 72);
    OLD_STRUCT(lora_train_params, lora_train_default_params, 32);
    OLD_STRUCT(lora_combine_params, lora_combine_default_params, 32);
    OLD_STRUCT(lora_engine_params, lora_engine_default_params, 16);
    OLD_STRUCT(lora_request, lora_request_default_params, 72);
#undef OLD_STRUCT
    {
        /* _v2 writes what it is asked for, and at most the library's struct. */
        union {
            lora_model_params p;
            unsigned char b[sizeof(lora_model_params) + 32];
        } u;
        memset(&u, 0xAB, sizeof u);
        lora_model_default_params_v2(&u.p, 6);
        CHECK(u.p.struct_size == 6 && u.b[6] == 0xAB, "v2 with size 6: struct_size %u", u.p.struct_size);
        memset(&u, 0xAB, sizeof u);
        lora_model_default_params_v2(&u.p, (size_t)-1);
        CHECK(u.p.struct_size == sizeof(lora_model_params) && u.b[sizeof(lora_model_params)] == 0xAB,
              "v2 with SIZE_MAX: struct_size %u", u.p.struct_size);
        memset(&u, 0xAB, sizeof u);
        lora_model_default_params_v2(&u.p, 2);
        CHECK(u.b[0] == 0xAB && u.b[1] == 0xAB, "v2 with a size below struct_size wrote");
        /* The 0.1.0-sized struct loads a model, the appended dtype at its default. */
        memset(&u, 0xAB, sizeof u);
        (lora_model_default_params)(&u.p);
        lora_model *m = NULL;
        EXPECT(lora_model_load(&m, path("%s/gpt2-a", fixtures), &u.p), LORA_OK);
        lora_model_free(m);
    }
}

/* ---- Handles and NULL -------------------------------------------------- */

void test_free_null(void) {
    lora_model_free(NULL);
    lora_adapter_free(NULL);
    lora_trainer_free(NULL);
    CHECK(lora_adapter_n_params(NULL) == -1, "lora_adapter_n_params(NULL)");
    CHECK(lora_trainer_get_step(NULL) == -1, "lora_trainer_get_step(NULL)");
}

/* A freed handle, a pointer liblora never returned and a handle of another
 * kind are LORA_INVALID_ARGUMENT, and freeing twice does nothing: liblora
 * looks every handle up in its table of live ones before touching it.
 * (Passing a freed pointer's value is what a buggy host does; these calls
 * never dereference it, which valgrind checks.) */
void test_dead_handles(void) {
    lora_model *m = NULL, *other = NULL;
    REQUIRE_OK(lora_model_load(&m, path("%s/gpt2-a", fixtures), NULL));
    REQUIRE_OK(lora_model_load(&other, path("%s/gpt2-a", fixtures), NULL));
    lora_adapter *a = NULL, *foreign = NULL, *gone = NULL;
    REQUIRE_OK(lora_adapter_load(&a, m, path("%s/lora/all", fixtures)));
    REQUIRE_OK(lora_adapter_load(&foreign, other, path("%s/lora/all", fixtures)));
    REQUIRE_OK(lora_adapter_load(&gone, m, path("%s/lora/all", fixtures)));
    long long n = lora_adapter_n_params(gone);
    CHECK(n > 0, "n_params %lld", n);
    lora_adapter_free(gone);
    lora_adapter_free(gone); /* twice: nothing happens */
    CHECK(lora_adapter_n_params(gone) == -1, "n_params of a freed adapter");
    EXPECT(lora_model_attach(m, gone, 1.0f), LORA_INVALID_ARGUMENT);
    CHECK(strstr(lora_last_error(), "not a live lora_adapter") != NULL, "message: %s", lora_last_error());
    EXPECT(lora_adapter_save(gone, path("%s/dead", workdir)), LORA_INVALID_ARGUMENT);
    /* Another kind, and memory liblora never handed out. */
    EXPECT(lora_model_attach(m, (lora_adapter *)other, 1.0f), LORA_INVALID_ARGUMENT);
    CHECK(strstr(lora_last_error(), "lora_model handle, not a lora_adapter") != NULL, "message: %s", lora_last_error());
    char junk[256] = {0};
    EXPECT(lora_model_attach((lora_model *)junk, a, 1.0f), LORA_INVALID_ARGUMENT);
    lora_model_free((lora_model *)junk); /* not a handle: ignored */
    CHECK(lora_trainer_get_step((lora_trainer *)a) == -1, "get_step of an adapter handle");

    /* The engine: a freed adapter, another model's adapter, a freed engine. */
    lora_engine *e = NULL;
    REQUIRE_OK(lora_engine_create(&e, m, NULL));
    int32_t ids[3] = {5, 17, 2};
    lora_request rq;
    lora_request_default_params(&rq);
    rq.tokens = ids;
    rq.n_tokens = 3;
    lora_adapter_use use = {gone, 1.0f};
    rq.adapters = &use;
    rq.n_adapters = 1;
    lora_request_id id = -1;
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    use.adapter = foreign;
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    CHECK(strstr(lora_last_error(), "another model handle") != NULL, "message: %s", lora_last_error());
    use.adapter = a;
    REQUIRE_OK(lora_engine_submit(e, &rq, &id));
    lora_engine_free(e);
    EXPECT(lora_engine_submit(e, &rq, &id), LORA_INVALID_ARGUMENT);
    EXPECT(lora_engine_run(e), LORA_INVALID_ARGUMENT);
    lora_engine_free(e); /* twice */

    lora_adapter_free(foreign);
    lora_adapter_free(a);
    lora_model_free(other);
    lora_model_free(m);
    EXPECT(lora_model_attach(m, a, 1.0f), LORA_INVALID_ARGUMENT);
    return;
done:
    lora_adapter_free(foreign);
    lora_adapter_free(a);
    lora_model_free(other);
    lora_model_free(m);
}
