/*
 * test_capi.c — the C ABI of liblora (include/lora.h) seen from a C99 host:
 * versions, defaults, misuse (status, message, *out == NULL), agreement with
 * transformers/PEFT reference outputs, training, checkpoints, threads.
 *
 * Usage: test_capi FIXTURES_DIR WORK_DIR
 *   FIXTURES_DIR  Tests/LoRATests/Fixtures
 *   WORK_DIR      an empty scratch directory (Tests/C/run.sh makes and removes it)
 * Set LORA_TEST_QUICK=1 for fewer repetitions (the valgrind run does).
 * The last line is "N passed, N failed"; the exit status is 1 on any failure.
 * LORA_TEST_ONLY=name[,name] runs only those tests.
 *
 * The checks live in one file per area: test_capi_basics.c, _model.c, _lowp.c,
 * _generation.c, _adapters.c, _training.c, _threads.c, _engine.c, _gguf.c; the harness in
 * test_capi_common.c and test_capi.h. Build: cc Tests/C/test_capi*.c.
 */
#include "test_capi.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FIXTURES_DIR WORK_DIR\n", argv[0]);
        return 2;
    }
    fixtures = argv[1];
    workdir = argv[2];
    quick = getenv("LORA_TEST_QUICK") && strcmp(getenv("LORA_TEST_QUICK"), "0") != 0;
    if (!is_dir(fixtures) || !is_dir(workdir)) {
        fprintf(stderr, "%s or %s is not a directory\n", fixtures, workdir);
        return 2;
    }
    static const struct {
        const char *name;
        void (*run)(void);
    } tests[] = {
        {"versions", test_versions},
        {"status_strings", test_status_strings},
        {"defaults", test_defaults},
        {"free_null", test_free_null},
        {"dead_handles", test_dead_handles},
        {"model_load_errors", test_model_load_errors},
        {"model_info", test_model_info},
        {"model_dtype", test_model_dtype},
        {"kv_cache_dtype", test_kv_cache_dtype},
        {"tokens", test_tokens},
        {"reference_gpt2_tok", test_reference_gpt2_tok},
        {"generation", test_generation},
        {"adapter_reference", test_adapter_reference},
        {"adapter_create", test_adapter_create},
        {"adapter_combine", test_adapter_combine},
        {"adapter_dora", test_adapter_dora},
        {"adapter_lora_bias", test_adapter_lora_bias},
        {"trainer_errors", test_trainer_errors},
        {"train_epochs", test_train_epochs},
        {"training_steps", test_training_steps},
        {"checkpoint_resume", test_checkpoint_resume},
        {"threads", test_threads},
        {"fork", test_fork},
        {"engine", test_engine},
        {"engine_threads", test_engine_threads},
        {"engine_step_report", test_engine_step_report},
        {"engine_undecodable_token", test_engine_undecodable_token},
        {"gguf_export", test_gguf_export},
    };
    const char *only = getenv("LORA_TEST_ONLY");
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (only && *only && strstr(only, tests[i].name) == NULL) continue;
        int before = n_failed;
        double start = now_seconds();
        tests[i].run();
        printf("%-20s %-6s %6.2f s\n", tests[i].name, n_failed == before ? "ok" : "FAILED", now_seconds() - start);
        fflush(stdout);
    }
    free_paths();
    if (n_xfail) printf("%d expected failures (known library bugs, see XFAIL lines)\n", n_xfail);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
