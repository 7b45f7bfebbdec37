/*
 * lora.h — the C interface of liblora: GPT-2 inference and LoRA fine-tuning
 * on the CPU. This header is the whole contract; what is not declared here
 * is not API.
 *
 * Conventions
 * - Every fallible function returns a lora_status (LORA_OK = 0). On failure,
 *   lora_last_error() gives a message for the calling thread, valid until
 *   that thread's next liblora call; lora_status_string() gives the code's
 *   fixed name. Status values are never renumbered.
 * - Handles are opaque and created through an out-parameter placed first;
 *   *out is set to NULL on failure. Each handle type has one *_free function
 *   that accepts NULL. liblora keeps a table of the handles it returned and
 *   looks each one up before use: a freed handle, a pointer it never returned
 *   or a handle of another type gives LORA_INVALID_ARGUMENT (-1 from the
 *   getters that return counts), and freeing a handle twice does nothing.
 *   (Once a newer handle of the same type reuses the address, the old
 *   pointer means that handle: do not rely on the check to find use after
 *   free.) A call that has looked its handles up keeps them alive until it
 *   returns, even if another thread frees them meanwhile.
 * - Parameter structs start with `uint32_t struct_size`. Fill them with the
 *   matching lora_*_default_params() (which sets struct_size to the size this
 *   header declares), then change fields. Pass them by pointer; NULL means
 *   defaults. The library reads only the fields covered by struct_size, so a
 *   program built against an older, smaller struct keeps working; a
 *   struct_size larger than the library knows is rejected
 *   (LORA_INVALID_ARGUMENT). New fields are only ever appended.
 *   lora_*_default_params(p) is a macro for lora_*_default_params_v2(p,
 *   sizeof *p), which writes the defaults into the first `size` bytes (at
 *   most the library's struct) and sets struct_size to what it wrote. The
 *   plain functions, for programs built before 0.2.0, write only the struct
 *   as 0.1.0 declared it (lora_model_params 8 bytes, lora_adapter_params and
 *   lora_trainer_params 72, lora_train_params 32, lora_sampling_params 56;
 *   the structs added in 0.2.0 as 0.2.0 declares them), never past it.
 * - Variable-size results go into caller buffers with a capacity; when the
 *   buffer is too small the call returns LORA_BUFFER_TOO_SMALL and writes the
 *   size it needs to *needed (when non-NULL). The library never returns memory
 *   that the caller must free.
 * - Strings are NUL-terminated UTF-8 unless a length is given.
 * - Threads: different handles may be used from different threads at the
 *   same time. One lora_model may run lora_logits/lora_generate from several
 *   threads at once, but attaching, detaching, scaling, merging adapters or
 *   training must not overlap any other use of that model. A lora_trainer is
 *   used by one thread at a time. Callbacks run on the thread that called the
 *   function that takes them.
 * - Lifetimes: an adapter must not outlive the model it was created or loaded
 *   for; a trainer must not outlive its model or adapter. Free in reverse
 *   order of creation.
 */
#ifndef LORA_H
#define LORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LORA_VERSION_MAJOR 0
#define LORA_VERSION_MINOR 2
#define LORA_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define LORA_VERSION_NUMBER (LORA_VERSION_MAJOR * 10000 + LORA_VERSION_MINOR * 100 + LORA_VERSION_PATCH)
/* The ABI version: the library's SONAME is liblora.so.<LORA_ABI_VERSION>. */
#define LORA_ABI_VERSION 1

/* ---- Status codes ------------------------------------------------------ */

typedef int32_t lora_status;
#define LORA_OK               0
#define LORA_ERROR            1  /* an internal error (a bug: please report) */
#define LORA_INVALID_ARGUMENT 2  /* NULL pointer, out-of-range value, bad struct_size, ... */
#define LORA_INVALID_FILE     3  /* a file is malformed or does not fit the model */
#define LORA_IO_ERROR         4  /* a file or directory cannot be read or written */
#define LORA_UNSUPPORTED      5  /* the input asks for a feature liblora lacks */
#define LORA_BUFFER_TOO_SMALL 6  /* *needed tells the size required */
#define LORA_ABORTED          7  /* a callback asked to stop */
#define LORA_NUMERICAL_ERROR  8  /* NaN/inf loss or weights, LAPACK non-convergence */
#define LORA_BACKEND_ERROR    9  /* OpenBLAS/LAPACKE missing or failing */
#define LORA_WRONG_STATE      10 /* a call out of order (e.g. detaching an adapter not attached) */

/* The fixed name of a status ("LORA_OK", ...); "LORA_UNKNOWN_STATUS" otherwise. Never NULL. */
const char *lora_status_string(lora_status status);
/* The message of the calling thread's last failure ("" if none). Owned by the
 * library; valid until the thread's next liblora call. Never NULL. */
const char *lora_last_error(void);

/* ---- Versions ---------------------------------------------------------- */

const char *lora_version_string(void); /* "0.2.0" */
uint32_t lora_version_number(void);    /* LORA_VERSION_NUMBER of the library */
uint32_t lora_abi_version(void);       /* LORA_ABI_VERSION of the library */

/* ---- Models ------------------------------------------------------------ */

typedef struct lora_model lora_model;
typedef struct lora_adapter lora_adapter;
typedef struct lora_trainer lora_trainer;

typedef struct lora_model_params {
    uint32_t struct_size;
    /* Compute threads for the whole process (0: keep the current count, at
     * first OPENBLAS_NUM_THREADS or the CPU count). liblora splits products,
     * element-wise kernels and attention heads across its own workers and
     * runs OpenBLAS single-threaded (it calls openblas_set_num_threads(1)
     * when it loads OpenBLAS, which a host sharing that OpenBLAS sees too).
     * Where libdnnl.so.2 is installed (oneDNN), the float32 matrix products
     * run on oneDNN's sgemm instead, one thread per call as well (each call
     * puts the calling thread's OpenMP thread count back afterwards);
     * LORA_SGEMM=openblas in the environment keeps them on OpenBLAS. Results
     * stay independent of the thread count either way. */
    int32_t n_threads;
    /* Storage of the base weight matrices (the Conv1D weights, wte, wpe; biases,
     * LayerNorms, adapters and activations stay float32): LORA_DTYPE_*.
     * LORA_DTYPE_SAVED (the default) takes the dtype a model converted by
     * liblora was saved in (lora_model_save), else F32. F32, F16 and BF16
     * checkpoints are converted at load; a saved Q8_0 model is read as it is.
     * Full fine-tuning needs F32; LoRA training, generation and the engine run
     * on every dtype. Merging into a reduced-precision base rounds the merged
     * weights to the dtype again (unmerge restores within that rounding).
     * On Linux CPUs with AMX, a BF16 model's products of more than 128 rows
     * (prefill, training) run on AMX: the first one asks Linux for the AMX
     * state for the whole process (arch_prctl ARCH_REQ_XCOMP_PERM), after
     * which signal frames take about 11 KiB and sigaltstack refuses smaller
     * alternate stacks. LORA_AMX=0 in the environment keeps AMX off. */
    int32_t dtype;
    /* Storage of the keys and values that generation and the engine cache:
     * LORA_DTYPE_F32 (the default: results as without a cache) or
     * LORA_DTYPE_BF16 (half the cache's memory: each key and value rounded to
     * nearest even as it is cached; queries and every sum stay float32).
     * lora_logits keeps no cache. Other values: LORA_INVALID_ARGUMENT. */
    int32_t kv_cache_dtype;
} lora_model_params;

/* Weight dtypes (lora_model_params.dtype, lora_model_info.dtype). */
#define LORA_DTYPE_SAVED -1 /* the saved model's dtype, else F32 (load only) */
#define LORA_DTYPE_F32   0
#define LORA_DTYPE_BF16  1 /* bfloat16, round to nearest even */
#define LORA_DTYPE_F16   2 /* IEEE half, round to nearest even (|w| >= 65520, which rounds to inf, refused) */
#define LORA_DTYPE_Q8_0  3 /* ggml's Q8_0: 32 int8 + one F16 scale per block */

void lora_model_default_params(lora_model_params *params);
void lora_model_default_params_v2(lora_model_params *params, size_t size);
#define lora_model_default_params(params) lora_model_default_params_v2((params), sizeof *(params))

/* Loads a Hugging Face GPT-2 directory (config.json, model.safetensors,
 * and vocab.json + merges.txt or tokenizer.json when present).
 * Errors: LORA_INVALID_ARGUMENT (NULL, unknown dtype), LORA_IO_ERROR,
 * LORA_INVALID_FILE (also a malformed Q8_0 file, or weights a dtype cannot hold),
 * LORA_UNSUPPORTED, LORA_BACKEND_ERROR. */
lora_status lora_model_load(lora_model **out, const char *path, const lora_model_params *params);
void lora_model_free(lora_model *model);

typedef struct lora_model_info {
    uint32_t struct_size; /* set by the caller (sizeof) */
    int32_t n_vocab;
    int32_t n_positions;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_inner;
    int64_t n_params;
    int32_t has_tokenizer;  /* 1 when tokenize/detokenize/text generation work */
    int32_t eos_token;      /* -1 when none */
    char blas_core[32];     /* the OpenBLAS kernel set in use, e.g. "SkylakeX" */
    int32_t dtype;          /* LORA_DTYPE_* of the weight matrices */
    int32_t kv_cache_dtype; /* LORA_DTYPE_* of the KV cache (lora_model_params) */
} lora_model_info;

/* Fills *info (up to info->struct_size). Errors: LORA_INVALID_ARGUMENT. */
lora_status lora_model_get_info(const lora_model *model, lora_model_info *info);

/* ---- Tokens ------------------------------------------------------------ */

/* Encodes text_len bytes of UTF-8 (special tokens such as <|endoftext|> are
 * matched in the text). Writes up to `capacity` ids; *n_tokens receives the
 * count needed. Errors: LORA_INVALID_ARGUMENT (NULL, invalid UTF-8),
 * LORA_WRONG_STATE (no tokenizer), LORA_BUFFER_TOO_SMALL. */
lora_status lora_tokenize(const lora_model *model, const char *text, size_t text_len, int32_t *tokens, size_t capacity,
                          size_t *n_tokens);

/* Decodes ids to UTF-8 (invalid byte sequences become U+FFFD) into buf,
 * NUL-terminated; *needed receives the byte count without the NUL.
 * Errors: LORA_INVALID_ARGUMENT (id out of range), LORA_WRONG_STATE,
 * LORA_BUFFER_TOO_SMALL (capacity < *needed + 1). */
lora_status lora_detokenize(const lora_model *model, const int32_t *tokens, size_t n_tokens, char *buf, size_t capacity,
                            size_t *needed);

/* ---- Logits ------------------------------------------------------------ */

/* Logits [n_tokens, n_vocab] of one sequence (1 <= n_tokens <= n_positions)
 * with the attached, enabled adapters. `capacity` counts floats.
 * Errors: LORA_INVALID_ARGUMENT (token out of range, too long),
 * LORA_BUFFER_TOO_SMALL. */
lora_status lora_logits(const lora_model *model, const int32_t *tokens, size_t n_tokens, float *logits,
                        size_t capacity);

/* Logits [n_seqs, max_len, n_vocab] of sequences of different lengths,
 * padded to the longest (left padding when left_padding != 0, positions as
 * transformers' generate computes them; padding positions get zeros).
 * seqs[i] points to lens[i] ids. Errors: as lora_logits. */
lora_status lora_logits_batch(const lora_model *model, const int32_t *const *seqs, const size_t *lens, size_t n_seqs,
                              int32_t left_padding, float *logits, size_t capacity);

/* ---- Generation -------------------------------------------------------- */

typedef struct lora_sampling_params {
    uint32_t struct_size;
    int32_t max_new_tokens;          /* default 64 */
    float temperature;               /* 0: greedy; default 1 */
    int32_t top_k;                   /* 0: off */
    float top_p;                     /* 1: off */
    float repetition_penalty;        /* 1: off */
    uint64_t seed;                   /* same seed, same text */
    int32_t stop_at_eos;             /* default 1 */
    const char *const *stop_strings; /* n_stop_strings UTF-8 strings (may be NULL) */
    size_t n_stop_strings;
} lora_sampling_params;

void lora_sampling_default_params(lora_sampling_params *params);
void lora_sampling_default_params_v2(lora_sampling_params *params, size_t size);
#define lora_sampling_default_params(params) lora_sampling_default_params_v2((params), sizeof *(params))

/* Called for each new token with its text piece (UTF-8, possibly empty while
 * a multi-byte character is incomplete; not NUL-terminated). Return 0 to
 * continue, non-zero to stop (the call then returns LORA_ABORTED). Runs on
 * the calling thread. */
typedef int32_t (*lora_token_callback)(int32_t token, const char *piece, size_t piece_len, void *user_data);

/* Generates after a text prompt; writes the new text (NUL-terminated) into
 * out; *needed receives its byte length. Stream only: out NULL with
 * capacity 0 (the text goes to the callback; LORA_OK, *needed set).
 * Generation never runs past n_positions.
 * Errors: LORA_INVALID_ARGUMENT (bad params, prompt too long),
 * LORA_WRONG_STATE (no tokenizer), LORA_ABORTED, LORA_BUFFER_TOO_SMALL
 * (the text was generated and streamed, but does not fit out). */
lora_status lora_generate(const lora_model *model, const char *prompt, const lora_sampling_params *params,
                          lora_token_callback callback, void *user_data, char *out, size_t capacity, size_t *needed);

/* The same from token ids; writes the new ids into out_tokens; *n_out
 * receives the count. Stream only: out_tokens NULL with capacity 0 (LORA_OK,
 * *n_out set; since 0.2.0: 0.1.0 returned LORA_BUFFER_TOO_SMALL).
 * Errors: as lora_generate. */
lora_status lora_generate_tokens(const lora_model *model, const int32_t *prompt, size_t n_prompt,
                                 const lora_sampling_params *params, lora_token_callback callback, void *user_data,
                                 int32_t *out_tokens, size_t capacity, size_t *n_out);

/* ---- Adapters ---------------------------------------------------------- */

#define LORA_INIT_DEFAULT  0 /* PEFT's default: A kaiming-uniform, B zeros */
#define LORA_INIT_GAUSSIAN 1 /* A ~ N(0, 1/r^2), B zeros */
#define LORA_INIT_RANDOM   2 /* A and B random (not a no-op; for tests) */
/* PiSSA: the top-r singular triplets of each base weight go into A and B and
 * the model's base weights become the residual W - scale*B*A (the model's
 * output is unchanged). pissa_niter > 0 uses a randomised SVD with that many
 * subspace iterations (PEFT's "pissa_niter_N"). The model is modified: save
 * the adapter for the original base with the conversion done by `lora train
 * --init-lora-weights pissa` (the C API saves the raw adapter). */
#define LORA_INIT_PISSA 3
/* OLoRA: A and B from the QR decomposition of each base weight (done on the
 * [out, in] weight, as PEFT intends); the base weights become the residual. */
#define LORA_INIT_OLORA 4

typedef struct lora_adapter_params {
    uint32_t struct_size;
    int32_t r;          /* default 8 */
    float lora_alpha;   /* default 8 */
    float lora_dropout; /* default 0, in [0, 1) */
    /* Comma-separated module names or suffixes ("c_attn,attn.c_proj,mlp.c_fc"),
     * matched as PEFT matches target_modules; or a full-match regular
     * expression when target_modules_regex != 0. NULL: "c_attn". */
    const char *target_modules;
    int32_t target_modules_regex;
    int32_t use_rslora; /* scaling alpha/sqrt(r) instead of alpha/r */
    int32_t init;       /* LORA_INIT_* */
    uint64_t seed;
    const int32_t *layers_to_transform; /* NULL: every layer */
    size_t n_layers_to_transform;
    int32_t pissa_niter; /* LORA_INIT_PISSA: 0 full SVD, N > 0 randomised SVD with N iterations (added in 0.1.0) */
    int32_t use_dora;    /* DoRA (PEFT's use_dora): a magnitude per output feature, trained with A and B;
                            with LORA_INIT_DEFAULT, _GAUSSIAN or _RANDOM only; default 0 (0.2.0) */
    /* PEFT's modules_to_save, comma-separated ("ln_f,h.1.ln_1"): modules trained in full beside the adapter and
     * saved with it, matched by the end of their names; LayerNorms (ln_1, ln_2, ln_f) only. NULL: none (0.2.0) */
    const char *modules_to_save;
    /* PEFT's lora_bias: B has a bias b [out], added as scale*s*b after B A x, trained with A and B (no weight
     * decay), merged into the module's bias; starts at 0 (LORA_INIT_RANDOM: random, as nn.Linear). With
     * LORA_INIT_DEFAULT or _RANDOM, without use_dora, not on wte (as PEFT). Default 0 (0.2.0) */
    int32_t lora_bias;
} lora_adapter_params;

void lora_adapter_default_params(lora_adapter_params *params);
void lora_adapter_default_params_v2(lora_adapter_params *params, size_t size);
#define lora_adapter_default_params(params) lora_adapter_default_params_v2((params), sizeof *(params))

/* A new adapter for `model`'s shape (not attached). With LORA_INIT_PISSA or
 * LORA_INIT_OLORA the model's base weights are replaced by the residual (so
 * this takes the model mutably, like attach). Errors:
 * LORA_INVALID_ARGUMENT (r <= 0, NaN alpha, target modules that match no
 * module of the model (as PEFT: names that match nothing are ignored when
 * others match), ...),
 * LORA_UNSUPPORTED (a target LoRA cannot adapt, e.g. lm_head or wpe; modules_to_save
 * naming a module other than a LayerNorm; use_dora with PiSSA/OLoRA or with
 * lora_bias). LORA_INVALID_ARGUMENT also for lora_bias with LORA_INIT_GAUSSIAN,
 * _PISSA or _OLORA. */
lora_status lora_adapter_create(lora_adapter **out, lora_model *model, const lora_adapter_params *params);

/* Loads a PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors) for `model`'s shape (not attached). Errors:
 * LORA_IO_ERROR, LORA_INVALID_FILE (shapes do not fit, keys without the
 * base_model.model. prefix, use_dora without lora_magnitude_vector tensors,
 * lora_B.bias tensors without lora_bias, ...), LORA_UNSUPPORTED (ensure_weight_tying, ...). */
lora_status lora_adapter_load(lora_adapter **out, const lora_model *model, const char *path);

/* Saves in PEFT's layout into directory `path` (created if needed; each file
 * written atomically). Errors: LORA_IO_ERROR, LORA_NUMERICAL_ERROR (NaN weights). */
lora_status lora_adapter_save(const lora_adapter *adapter, const char *path);

/* Frees an adapter; detach it from its model first (freeing an attached
 * adapter detaches it when the model is still alive). */
void lora_adapter_free(lora_adapter *adapter);

/* Trainable parameter count (A and B of every adapted module, DoRA magnitudes, lora_bias, LoRA on wte,
 * modules_to_save); -1 for NULL. */
int64_t lora_adapter_n_params(const lora_adapter *adapter);

/* Applies the adapter in every forward pass of the model, times `scale`.
 * Several adapters may be attached. Errors: LORA_INVALID_ARGUMENT (other
 * model shape, non-finite scale), LORA_WRONG_STATE (already attached). */
lora_status lora_model_attach(lora_model *model, lora_adapter *adapter, float scale);
/* Errors: LORA_WRONG_STATE (not attached). */
lora_status lora_model_detach(lora_model *model, lora_adapter *adapter);
/* Changes an attached adapter's scale (0 disables it). */
lora_status lora_model_set_adapter_scale(lora_model *model, lora_adapter *adapter, float scale);

/* Folds an adapter into the base weights (W += scale * s * (B A)^T, and with
 * lora_bias the module's bias += scale * s * b; DoRA: W = m / |W + dW| *
 * (W + dW) per output feature; modules_to_save copied in).
 * It stays attached but is no longer applied on the fly; an adapter not
 * attached yet is attached merged. Errors: LORA_WRONG_STATE (already merged;
 * a DoRA adapter with another adapter merged, or any adapter while a DoRA one
 * is merged), LORA_UNSUPPORTED (LoRA on wte of a model whose LM head is tied
 * to it: the head would change too), LORA_NUMERICAL_ERROR (the result would
 * not be finite; nothing changed). */
lora_status lora_model_merge(lora_model *model, lora_adapter *adapter);
/* Takes a merged adapter back out (to float rounding; to the dtype's rounding
 * for a reduced-precision base); it is applied on the fly again. Errors: LORA_WRONG_STATE (not merged). */
lora_status lora_model_unmerge(lora_model *model, lora_adapter *adapter);
/* Writes the model, merged adapters folded in, as a Hugging Face checkpoint
 * directory (config.json, model.safetensors, the tokenizer files it was
 * loaded with), each file atomically. A model loaded in a reduced-precision
 * dtype is saved in it (BF16/F16 tensors; Q8_0 as `<name>.q8_0` I8 values and
 * `<name>.q8_0_scale` F16 scales, see README "Reduced-precision base weights"),
 * and loads back in it without converting again. Errors: LORA_IO_ERROR,
 * LORA_NUMERICAL_ERROR. */
lora_status lora_model_save(const lora_model *model, const char *path);

/* ---- Adapter algebra (LAPACK) ------------------------------------------- */

/* The best lower-rank approximation of each module's delta scale*B*A (QR of B
 * and A^T, SVD of the small core; never an out x in matrix). rank > 0: that
 * rank everywhere (at most each module's rank); rank == 0: per module the
 * smallest rank keeping `energy` (in (0, 1]) of the delta's squared singular
 * values, written as PEFT rank_pattern/alpha_pattern. The new adapter has
 * scaling 1 (lora_alpha = r), belongs to the same model, is not attached.
 * *max_relative_error (may be NULL) receives the largest relative Frobenius
 * error over the modules. Errors: LORA_INVALID_ARGUMENT (rank above a
 * module's rank, energy out of range), LORA_NUMERICAL_ERROR (NaN weights,
 * LAPACK non-convergence). */
lora_status lora_adapter_compress(lora_adapter **out, const lora_adapter *adapter, int32_t rank, float energy,
                                  float *max_relative_error);

#define LORA_COMBINE_CAT    0 /* rank = sum of ranks; exactly sum w_i * delta_i */
#define LORA_COMBINE_LINEAR 1 /* weighted sums of the A's and of the B's (equal ranks) */
#define LORA_COMBINE_SVD    2 /* sum w_i * delta_i truncated to svd_rank by SVD */

/* PEFT's add_weighted_adapter: combines n adapters of one model with
 * weights. svd_rank <= 0: the largest input rank; svd_clamp <= 0: no clamp.
 * The result has scaling 1 and no rsLoRA. Errors: LORA_INVALID_ARGUMENT
 * (adapters of different models, unequal ranks for linear, bad method). */
lora_status lora_adapter_combine(lora_adapter **out, const lora_adapter *const *adapters, const float *weights,
                                 size_t n_adapters, int32_t method, int32_t svd_rank, float svd_clamp);

/* PEFT's task-arithmetic merges (add_weighted_adapter's ties, dare_linear,
 * dare_ties, magnitude_prune): on the A's and the B's (equal ranks), or with
 * _SVD on each delta, then truncated to svd_rank by SVD. Only through
 * lora_adapter_combine_v2 (they need a density). */
#define LORA_COMBINE_TIES                3
#define LORA_COMBINE_DARE_LINEAR         4
#define LORA_COMBINE_DARE_TIES           5
#define LORA_COMBINE_MAGNITUDE_PRUNE     6
#define LORA_COMBINE_TIES_SVD            7
#define LORA_COMBINE_DARE_LINEAR_SVD     8
#define LORA_COMBINE_DARE_TIES_SVD       9
#define LORA_COMBINE_MAGNITUDE_PRUNE_SVD 10

#define LORA_MAJORITY_SIGN_TOTAL     0 /* the sign of the sum of the values */
#define LORA_MAJORITY_SIGN_FREQUENCY 1 /* the sign of the sum of their signs */

typedef struct lora_combine_params {
    uint32_t struct_size;
    int32_t method;               /* LORA_COMBINE_*; default LORA_COMBINE_SVD */
    int32_t svd_rank;             /* <= 0: the largest input rank (default) */
    float svd_clamp;              /* <= 0: no clamp (default) */
    float density;                /* task merges: fraction kept, in (0, 1]; default 1 (keeps all) */
    int32_t majority_sign_method; /* LORA_MAJORITY_SIGN_*; default TOTAL */
    uint64_t seed;                /* DARE's random masks; default 0 */
} lora_combine_params;

void lora_combine_default_params(lora_combine_params *params);
void lora_combine_default_params_v2(lora_combine_params *params, size_t size);
#define lora_combine_default_params(params) lora_combine_default_params_v2((params), sizeof *(params))

/* lora_adapter_combine with every add_weighted_adapter type (params NULL:
 * defaults, i.e. svd). DARE's masks come from liblora's seeded generator
 * (PEFT's from torch's: the same distribution, not the same draws). Errors:
 * LORA_INVALID_ARGUMENT (density outside (0, 1], unknown method or sign
 * method, unequal ranks for the factor merges, adapters of different
 * models), LORA_NUMERICAL_ERROR (NaN weights, LAPACK non-convergence). */
lora_status lora_adapter_combine_v2(lora_adapter **out, const lora_adapter *const *adapters, const float *weights,
                                    size_t n_adapters, const lora_combine_params *params);

/* A LoRA adapter approximating a full fine-tune: per module of
 * target_modules (comma-separated, as lora_adapter_params; NULL: "c_attn"),
 * the truncated SVD of tuned - base; rank or energy as lora_adapter_compress.
 * The adapter belongs to `base`. Errors: LORA_INVALID_ARGUMENT (models of
 * different configs), LORA_NUMERICAL_ERROR. */
lora_status lora_adapter_extract(lora_adapter **out, const lora_model *base, const lora_model *tuned,
                                 const char *target_modules, int32_t rank, float energy, float *max_relative_error);
/* lora_adapter_extract; with lora_bias != 0 the adapter also carries each
 * module's bias change as PEFT's lora_bias ((bias_tuned - bias_base) / s),
 * so merging it gives the tuned biases (added in 0.2.0). */
lora_status lora_adapter_extract_v2(lora_adapter **out, const lora_model *base, const lora_model *tuned,
                                    const char *target_modules, int32_t rank, float energy, int32_t lora_bias,
                                    float *max_relative_error);

/* A PiSSA/OLoRA adapter (created with LORA_INIT_PISSA/OLORA, then trained)
 * as a plain LoRA of rank 2r for the original, unmodified base model
 * (PEFT's path_initial_model_for_weight_conversion). Errors:
 * LORA_INVALID_ARGUMENT (not a PiSSA/OLoRA adapter created in this process). */
lora_status lora_adapter_convert_for_original_base(lora_adapter **out, const lora_adapter *adapter);

/* ---- Training ---------------------------------------------------------- */

#define LORA_SCHEDULER_CONSTANT             0
#define LORA_SCHEDULER_CONSTANT_WITH_WARMUP 1
#define LORA_SCHEDULER_LINEAR               2
#define LORA_SCHEDULER_COSINE               3

typedef struct lora_trainer_params {
    uint32_t struct_size;
    float learning_rate;          /* default 2e-4 */
    float weight_decay;           /* default 0 */
    float adam_beta1, adam_beta2; /* 0.9, 0.999 */
    float adam_epsilon;           /* 1e-8 */
    int32_t lr_scheduler;         /* LORA_SCHEDULER_*; default linear */
    int32_t warmup_steps;
    int32_t max_steps;                   /* default 100 */
    int32_t gradient_accumulation_steps; /* default 1 */
    float max_grad_norm;                 /* default 1; <= 0 disables clipping */
    int32_t batch_size;                  /* default 4 */
    int32_t block_size; /* tokens per sequence, at most n_positions; default 0: min(256, n_positions) */
    uint64_t seed;
    int32_t gradient_checkpointing; /* recompute activations in backward: less memory, slower */
    float loraplus_lr_ratio;        /* LoRA+: B's learning rate = this × A's (PEFT's create_loraplus_optimizer);
                                       default 1 (plain AdamW); adapters only (0.2.0). 0 also means 1:
                                       the field sits in 0.1.0's tail padding, which a 0.1.0 program
                                       that zero-fills the struct leaves at 0 */
    int32_t model_dropout;          /* GPT-2's own dropouts while training, with config.json's embd_pdrop,
                                       attn_pdrop and resid_pdrop (transformers' model.train()); default 0:
                                       off. Evaluation never drops (0.2.0). 4 bytes of tail padding follow:
                                       a field appended there must read 0 as its default */
} lora_trainer_params;

void lora_trainer_default_params(lora_trainer_params *params);
void lora_trainer_default_params_v2(lora_trainer_params *params, size_t size);
#define lora_trainer_default_params(params) lora_trainer_default_params_v2((params), sizeof *(params))

/* A trainer for `adapter` on `model` (adapter NULL: full fine-tuning of every
 * weight). The adapter is attached while training if it is not already.
 * Errors: LORA_INVALID_ARGUMENT (bad hyperparameters, block_size > n_positions,
 * activations that would not fit the machine's memory). */
lora_status lora_trainer_create(lora_trainer **out, lora_model *model, lora_adapter *adapter,
                                const lora_trainer_params *params);
void lora_trainer_free(lora_trainer *trainer);

typedef struct lora_train_progress {
    int32_t step;
    int32_t max_steps;
    float loss;
    float learning_rate;
    float grad_norm;
    float tokens_per_second;
    float validation_loss; /* NaN when this step did not evaluate */
} lora_train_progress;

/* Called after each optimizer step on the calling thread. Return 0 to go on,
 * non-zero to stop (the call returns LORA_ABORTED after a consistent step). */
typedef int32_t (*lora_progress_callback)(const lora_train_progress *progress, void *user_data);

typedef struct lora_train_params {
    uint32_t struct_size;
    float validation_fraction;  /* split off for evaluation; default 0 */
    int32_t eval_steps;         /* evaluate every N steps (0: at the end only) */
    int32_t save_steps;         /* checkpoint every N steps (0: never) */
    const char *checkpoint_dir; /* where checkpoint-<step>/ go */
    int32_t skip_bad_records;   /* 1: skip bad JSONL records; 0: fail on them */
    /* > 0: the run lasts this many epochs of the data: the trainer's max_steps
     * becomes ceil(sequences * epochs / (batch_size * gradient_accumulation_steps
     * * world_size)) (world_size: the gradient reducer's ranks, else 1;
     * transformers' num_train_epochs); 0 (default): max_steps as created.
     * Added in 0.2.0. */
    float num_train_epochs;
} lora_train_params;

void lora_train_default_params(lora_train_params *params);
void lora_train_default_params_v2(lora_train_params *params, size_t size);
#define lora_train_default_params(params) lora_train_default_params_v2((params), sizeof *(params))

/* Trains until max_steps on text files (.txt: packed blocks) and JSONL files
 * ({"text"} or {"prompt", "completion"} records). Errors:
 * LORA_IO_ERROR, LORA_INVALID_FILE (bad record, with its line), LORA_ABORTED,
 * LORA_NUMERICAL_ERROR (NaN/inf loss: names the step; weights keep their last
 * good values). */
lora_status lora_trainer_train(lora_trainer *trainer, const char *const *data_paths, size_t n_paths,
                               const lora_train_params *params, lora_progress_callback callback, void *user_data);

/* One optimizer step on caller tokens [batch, seq_len]; labels (same shape,
 * -100 = ignored, NULL = the tokens) follow transformers (shifted inside).
 * *loss receives the mean loss. Errors: LORA_INVALID_ARGUMENT,
 * LORA_NUMERICAL_ERROR. */
lora_status lora_trainer_step(lora_trainer *trainer, const int32_t *tokens, const int32_t *labels, int32_t batch,
                              int32_t seq_len, float *loss);

/* Mean loss and perplexity of the model (with its enabled adapters) on a
 * data file. */
lora_status lora_trainer_evaluate(lora_trainer *trainer, const char *data_path, float *loss, float *perplexity);

/* Writes a checkpoint (weights, AdamW moments, step, RNG state) into
 * `dir`/checkpoint-<step>, atomically. */
lora_status lora_trainer_save_checkpoint(lora_trainer *trainer, const char *dir);
/* Restores a checkpoint directory written with the same trainer params.
 * Data parallel: set the gradient reducer first (the checkpoint records the
 * global batch, batch_size × world_size). lora_trainer_save_checkpoint writes
 * on the rank that calls it (train writes on rank 0 only).
 * Errors: LORA_INVALID_FILE (other settings or shapes). */
lora_status lora_trainer_resume(lora_trainer *trainer, const char *checkpoint_path);
/* Optimizer steps taken so far; -1 for NULL. */
int32_t lora_trainer_get_step(const lora_trainer *trainer);

/* ---- Data-parallel training --------------------------------------------- */

/* The host's all-reduce: replace every element of buffer[0, count) by its sum
 * over all ranks (MPI_Allreduce with MPI_SUM in place, for instance), then
 * return 0. Every rank is called in the same order with the same count. Runs
 * on the thread that called lora_trainer_train. Non-zero stops the training
 * (lora_trainer_train returns LORA_ABORTED). */
typedef int32_t (*lora_gradient_reducer)(float *buffer, size_t count, void *user_data);

/* Makes `trainer` rank `rank` of `world_size` data-parallel processes, each
 * with the same model, adapter, params and data. lora_trainer_train then:
 * checks at the start that all ranks agree (a digest of settings, weights and
 * data; otherwise LORA_INVALID_ARGUMENT on every rank, naming what differs)
 * and at the end that they hold the same parameters (LORA_NUMERICAL_ERROR if
 * the reducer gave ranks different sums);
 * takes each global batch of batch_size × world_size × gradient_accumulation_steps
 * examples from the one-process data order, this rank computing its slice;
 * calls `reduce` once per optimizer step on one contiguous buffer (the
 * gradients of the trained parameters, prescaled so that their sum is the
 * global gradient, then 2 floats of the step's loss and 1 counting ranks that
 * failed) before clipping and AdamW, then once more after the step (2 floats:
 * ranks that failed, e.g. rank 0's checkpoint write, and ranks whose progress
 * callback asked to stop), and with small buffers of other lengths at the
 * start (the ranks' digests), at the end (the parameters' digests) and per
 * evaluation (5 floats): a reducer must sum any length it is given;
 * ends every rank after the same step when one rank fails or stops (no rank
 * is left waiting in a reduction): a callback's stop gives LORA_ABORTED on
 * every rank; a rank's own failure gives it its status, the others
 * LORA_INVALID_ARGUMENT ("another rank failed ...");
 * shares out validation batches and reduces their sums; writes checkpoints on
 * rank 0 only. The result equals one process with batch_size × world_size
 * (up to the summation order). lora_trainer_evaluate becomes collective too
 * (every rank calls it; each evaluates a share of the batches). Only
 * lora_trainer_step ignores the reducer.
 * reduce NULL (or world_size 1): one process again. A checkpoint records the
 * global batch, so it resumes with any rank count that keeps it.
 * Errors: LORA_INVALID_ARGUMENT (NULL trainer, world_size < 1 or > 65536,
 * rank outside [0, world_size)). */
lora_status lora_trainer_set_gradient_reducer(lora_trainer *trainer, int32_t rank, int32_t world_size,
                                              lora_gradient_reducer reduce, void *user_data);

/* ---- Batched engine ---------------------------------------------------- */

/* An engine runs many generation requests together, each with its own
 * adapters (zero or more, each with a scale), sampling, seed, stop strings
 * and token callback. Each lora_engine_step runs one forward pass over the
 * new tokens of every running request (prompt chunks and decode tokens
 * mixed): the base products once over all rows, each adapter's product on
 * the rows of the requests that use it. A request's tokens and text are those
 * lora_generate gives with its adapters attached and the same sampling
 * params (its logits agree within 1e-4).
 *
 * Sizes are fixed at creation: max_sequences requests run at once, each in a
 * KV-cache slot of context_per_sequence positions, allocated once. Requests
 * beyond max_sequences wait in a first-in first-out queue and start when a
 * slot frees. A prompt must leave room for one new token in the context;
 * max_new_tokens beyond the context is truncated (the request ends with
 * LORA_STOP_CONTEXT_FULL).
 *
 * Threads: lora_engine_submit, lora_engine_cancel, lora_engine_request_info,
 * lora_engine_request_tokens, lora_engine_request_text and
 * lora_engine_release may be called from any thread at any time, also from a
 * token callback. lora_engine_step and lora_engine_run run on one thread at a
 * time: a second concurrent caller (or a callback calling them) gets
 * LORA_WRONG_STATE. Token callbacks run on the stepping thread.
 *
 * Lifetimes: a request keeps its adapters alive until it ends (reference
 * counted), so lora_adapter_free on an adapter a request uses is allowed and
 * does not disturb it; the freed handle is refused afterwards
 * (LORA_INVALID_ARGUMENT). Requests read their adapters: an adapter a queued
 * or running request uses must not be trained, loaded into or changed
 * (lora_trainer_step and friends, merges into it) until the request ends.
 * The engine keeps its model's weights alive, but the model must not be
 * changed (merge, unmerge, training) while requests are queued or run (a
 * DoRA adapter's norms are taken at submission); adapters attached
 * to the model with lora_model_attach are not applied by the engine (merged
 * ones are part of the weights). lora_engine_free must not overlap another
 * call on the same engine. Free the engine before the model. */

typedef struct lora_engine lora_engine;
typedef int64_t lora_request_id; /* > 0 */

typedef struct lora_engine_params {
    uint32_t struct_size;
    int32_t max_sequences;        /* requests running at once; default 16 */
    int32_t max_tokens_per_step;  /* new tokens per step; >= max_sequences; default 512 */
    int32_t context_per_sequence; /* positions per request; 0 (default): n_positions */
} lora_engine_params;

void lora_engine_default_params(lora_engine_params *params);
void lora_engine_default_params_v2(lora_engine_params *params, size_t size);
#define lora_engine_default_params(params) lora_engine_default_params_v2((params), sizeof *(params))

/* Allocates the KV pool: 2 x n_layer x max_sequences x context x n_embd
 * values in the model's kv_cache_dtype (lora_model_params; bf16 halves it),
 * kept for the engine's life. Errors: LORA_INVALID_ARGUMENT (sizes out of
 * range or too large for the machine's memory). */
lora_status lora_engine_create(lora_engine **out, const lora_model *model, const lora_engine_params *params);
/* Ends every request (their callbacks are not called again) and frees the engine. */
void lora_engine_free(lora_engine *engine);

/* One adapter of a request and its scale (as lora_model_attach). */
typedef struct lora_adapter_use {
    const lora_adapter *adapter;
    float scale;
} lora_adapter_use;

typedef struct lora_request {
    uint32_t struct_size;
    const char *prompt;    /* UTF-8 text (needs a tokenizer), or NULL to use tokens */
    const int32_t *tokens; /* the prompt as ids when prompt is NULL */
    size_t n_tokens;
    const lora_adapter_use *adapters; /* applied in order; may be NULL when n_adapters is 0 */
    size_t n_adapters;
    const lora_sampling_params *sampling; /* NULL: defaults */
    lora_token_callback callback;         /* may be NULL; non-zero return ends the request (LORA_ABORTED) */
    void *user_data;
} lora_request;

void lora_request_default_params(lora_request *request);
void lora_request_default_params_v2(lora_request *request, size_t size);
#define lora_request_default_params(request) lora_request_default_params_v2((request), sizeof *(request))

/* Queues a request; *id receives its id. The prompt and params are copied.
 * Errors: LORA_INVALID_ARGUMENT (empty prompt, token out of range, prompt
 * without room for a new token in the context, bad sampling params, an
 * adapter made for another model shape or belonging to another model handle,
 * a scale that is NaN or infinite, an adapter given twice),
 * LORA_UNSUPPORTED (two adapters of the request saving one module), LORA_WRONG_STATE
 * (a text prompt without a tokenizer). */
lora_status lora_engine_submit(lora_engine *engine, const lora_request *request, lora_request_id *id);

/* Runs one batched step. The ids of requests that ended in it go into
 * finished (at most max_sequences per step; with a smaller capacity the
 * first `capacity` are written); *n_finished receives their count and
 * *n_tokens the count of tokens produced (each pointer may be NULL).
 * A step with nothing to run returns at once with both counts 0.
 * Errors: LORA_WRONG_STATE (another thread is stepping). A sampled token with
 * no text in the tokenizer (a model vocabulary larger than the tokenizer's)
 * fails only its request, as a callback's stop ends only its own: it ends in
 * this step (in finished; LORA_STOP_ERROR, its info's status
 * LORA_INVALID_ARGUMENT) and the step returns LORA_OK. */
lora_status lora_engine_step(lora_engine *engine, lora_request_id *finished, size_t capacity, size_t *n_finished,
                             size_t *n_tokens);
/* lora_engine_step that also says which requests got a token: their ids go
 * into produced (each running request gets at most one token a step, so
 * max_sequences suffices; with a smaller capacity the first
 * `produced_capacity` are written) and *n_produced receives their count;
 * finished as lora_engine_step. Each pointer may be NULL with capacity 0.
 * Errors as lora_engine_step. Added in 0.2.0. */
lora_status lora_engine_step_report(lora_engine *engine, lora_request_id *produced, size_t produced_capacity,
                                    size_t *n_produced, lora_request_id *finished, size_t finished_capacity,
                                    size_t *n_finished);
/* Steps until no request is queued or running. */
lora_status lora_engine_run(lora_engine *engine);

/* Cancels a queued or running request: it ends before its next token, with
 * the tokens it has so far. Between steps it ends at once (no step reports
 * it); called while another thread steps, it ends when that step returns (and
 * that step reports it). Errors: LORA_INVALID_ARGUMENT (unknown id),
 * LORA_WRONG_STATE (already ended). */
lora_status lora_engine_cancel(lora_engine *engine, lora_request_id id);

#define LORA_REQUEST_QUEUED    0
#define LORA_REQUEST_RUNNING   1
#define LORA_REQUEST_FINISHED  2 /* ended by a stop rule, its callback or an error */
#define LORA_REQUEST_CANCELLED 3

#define LORA_STOP_NONE         0 /* not ended yet */
#define LORA_STOP_MAX_TOKENS   1
#define LORA_STOP_EOS          2
#define LORA_STOP_STRING       3
#define LORA_STOP_CONTEXT_FULL 4
#define LORA_STOP_CALLBACK     5 /* its callback asked to stop */
#define LORA_STOP_CANCELLED    6
#define LORA_STOP_ERROR        7 /* failed: the info's status says why */

typedef struct lora_request_info {
    uint32_t struct_size; /* set by the caller: sizeof(lora_request_info) */
    int32_t state;        /* LORA_REQUEST_* */
    int32_t stop_reason;  /* LORA_STOP_* */
    lora_status status;   /* LORA_OK; LORA_ABORTED when its callback stopped it;
                           * with LORA_STOP_ERROR, the error (LORA_INVALID_ARGUMENT) */
    int64_t n_tokens;     /* tokens generated so far */
} lora_request_info;

/* Errors: LORA_INVALID_ARGUMENT (unknown or released id, bad struct_size). */
lora_status lora_engine_request_info(lora_engine *engine, lora_request_id id, lora_request_info *info);
/* An ended request's new tokens / text (NUL-terminated), as lora_generate_tokens
 * and lora_generate write them. Errors: LORA_INVALID_ARGUMENT (unknown id),
 * LORA_WRONG_STATE (not ended yet), LORA_BUFFER_TOO_SMALL. */
lora_status lora_engine_request_tokens(lora_engine *engine, lora_request_id id, int32_t *out_tokens, size_t capacity,
                                       size_t *n_out);
lora_status lora_engine_request_text(lora_engine *engine, lora_request_id id, char *out, size_t capacity,
                                     size_t *needed);
/* Forgets an ended request (the engine keeps each ended request's result
 * until then). Errors: LORA_INVALID_ARGUMENT (unknown id), LORA_WRONG_STATE
 * (not ended). */
lora_status lora_engine_release(lora_engine *engine, lora_request_id id);

/* ---- GGUF export for llama.cpp ------------------------------------------ */

/* Tensor types of an export: matrices and embeddings in F32 or F16
 * (LayerNorm weights and biases are always F32). */
#define LORA_GGUF_F32 0
#define LORA_GGUF_F16 1

/* Writes the model as a GGUF v3 file llama.cpp loads (architecture gpt2,
 * llama.cpp's tensor names, hyperparameters, the byte-level BPE tokenizer;
 * without a tokenizer, tokenizer model "none"), written atomically. Merged
 * adapters are part of the weights; attached, unmerged ones are not (export
 * them with lora_adapter_export_gguf). `type` is LORA_GGUF_*. Errors:
 * LORA_INVALID_ARGUMENT (NULL, unknown type, a weight beyond F16's range),
 * LORA_UNSUPPORTED (a config llama.cpp's gpt2 graph computes differently:
 * an activation other than GELU-tanh, scale_attn_by_inverse_layer_idx),
 * LORA_IO_ERROR, LORA_NUMERICAL_ERROR (NaN weights). */
lora_status lora_model_export_gguf(const lora_model *model, const char *path, int32_t type);

/* Writes the adapter as a GGUF LoRA for the model it was made for
 * (general.type "adapter", adapter.type "lora", adapter.lora.alpha;
 * <base tensor>.lora_a / .lora_b, PEFT's A and B without transposing),
 * written atomically; llama.cpp applies it with --lora. rsLoRA and per-module
 * ranks and alphas are folded into the file's alpha and B. Errors as
 * lora_model_export_gguf. */
lora_status lora_adapter_export_gguf(const lora_adapter *adapter, const char *path, int32_t type);

#ifdef __cplusplus
}
#endif
#endif /* LORA_H */
