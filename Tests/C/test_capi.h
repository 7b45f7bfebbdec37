/*
 * test_capi.h — what the parts of test_capi share: the harness (CHECK,
 * EXPECT, REQUIRE_OK), scratch paths, a minimal safetensors reader for the
 * reference outputs, the fixtures' facts, and the test functions of each
 * area (test_capi_<area>.c). main() is in test_capi.c.
 */
#ifndef TEST_CAPI_H
#define TEST_CAPI_H
#define _POSIX_C_SOURCE 200809L

#include "lora.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

/* Tolerances (absolute, on logits and losses). */
/* liblora vs transformers/PEFT float32 reference outputs: different summation order. */
#define TOL_REFERENCE 1e-4f
/* A merged adapter vs the same adapter applied on the fly: one extra rounding per weight. */
#define TOL_MERGE 1e-4f
/* A model written by lora_model_save and loaded again: the same float32 weights. */
#define TOL_SAVED 1e-6f

/* ---- The harness (test_capi_common.c) ------------------------------------ */

extern int n_passed, n_failed, n_xfail;
extern const char *fixtures; /* Tests/LoRATests/Fixtures */
extern const char *workdir;  /* scratch directory */
extern int quick;            /* fewer repetitions (valgrind) */

void check(const char *file, int line, int ok, const char *fmt, ...);
#define CHECK(...) check(__FILE__, __LINE__, __VA_ARGS__)
/* A call returns `want`; a failure also leaves a message in lora_last_error(). */
void expect_status(const char *file, int line, lora_status got, lora_status want, const char *call);
#define EXPECT(call, want) expect_status(__FILE__, __LINE__, (call), (want), #call)
/* A check that fails today because of a known library bug (name it in
 * `bug`): not counted as a failure, printed as XFAIL, and as XPASS once the
 * bug is fixed. */
void expect_known_bug(const char *file, int line, lora_status got, lora_status want, const char *call, const char *bug);
#define EXPECT_KNOWN_BUG(call, want, bug) expect_known_bug(__FILE__, __LINE__, (call), (want), #call, bug)
/* Stops the current test function when a call needed by the rest fails. */
#define REQUIRE_OK(call)                                                                                               \
    do {                                                                                                               \
        lora_status s_ = (call);                                                                                       \
        expect_status(__FILE__, __LINE__, s_, LORA_OK, #call);                                                         \
        if (s_ != LORA_OK) goto done;                                                                                  \
    } while (0)

/* A non-NULL value for out-parameters, to see that failures reset them to NULL. */
extern char sentinel_storage;
#define SENTINEL(type) ((type *)(void *)&sentinel_storage)

/* Paths: each call returns a new string, kept until free_paths() at exit. */
const char *path(const char *fmt, ...);
void free_paths(void);
unsigned char *read_file(const char *p, size_t *size);
int write_file(const char *p, const char *text);
int is_dir(const char *p);
int access_ok(const char *p);
double now_seconds(void);
float max_abs_diff(const float *a, const float *b, size_t n);

/* ---- safetensors: just enough to read the reference tensors ------------ */

typedef struct st_file {
    unsigned char *bytes;
    size_t size;
    char *header; /* NUL-terminated copy of the JSON header */
    size_t data_start;
} st_file;

int st_open(st_file *f, const char *p);
void st_close(st_file *f);
const char *skip_ws(const char *s);
const char *json_value(const char *from, const char *to, const char *key);
const unsigned char *st_tensor(const st_file *f, const char *name, const char *dtype, size_t elem, size_t *count);
float *st_floats(const st_file *f, const char *name, size_t *count);
int32_t *st_ids(const st_file *f, const char *name, size_t *count);
int st_metadata(const st_file *f, const char *key, char *out, size_t cap);

/* ---- Fixture facts -------------------------------------------------------- */

/* gpt2-tok: 2 layers, n_embd 32, 2 heads, 64 positions, 1201 tokens. */
#define TOK_VOCAB     1201
#define TOK_POSITIONS 64
#define TOK_EMBD      32
#define TOK_EOS       1200
/* gpt2-a: n_embd 48, 3 heads, 32 positions, 101 tokens, no tokenizer. */
#define A_VOCAB     101
#define A_POSITIONS 32

lora_model *load_model(const char *name);

/* ---- The tests, by area ----------------------------------------------------- */

/* test_capi_basics.c */
void test_versions(void);
void test_status_strings(void);
void test_defaults(void);
void test_free_null(void);
void test_dead_handles(void);
/* test_capi_model.c */
void test_model_load_errors(void);
void test_model_info(void);
/* test_capi_lowp.c */
void test_model_dtype(void);
void test_kv_cache_dtype(void);
void test_tokens(void);
void test_reference_gpt2_tok(void);
/* test_capi_generation.c */
void test_generation(void);
/* test_capi_adapters.c */
void test_adapter_reference(void);
void test_adapter_create(void);
void test_adapter_combine(void);
void test_adapter_dora(void);
void test_adapter_lora_bias(void);
/* test_capi_training.c */
void test_trainer_errors(void);
void test_train_epochs(void);
void test_training_steps(void);
void test_checkpoint_resume(void);
/* test_capi_threads.c */
void test_threads(void);
void test_fork(void);
/* test_capi_engine.c */
void test_engine(void);
void test_engine_threads(void);
void test_engine_step_report(void);
void test_engine_undecodable_token(void);

/* test_capi_gguf.c */
void test_gguf_export(void);

#endif /* TEST_CAPI_H */
