"""The ctypes mirror of include/lora.h: library discovery, structs, prototypes.

Every function of the header has its ``argtypes``/``restype`` here, next to the
C prototype it mirrors. Functions returning ``lora_status`` share one
``errcheck`` that turns a non-zero status into a :class:`lora.LoraError`.
Nothing in this module is public API; use the classes of the ``lora`` package.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_float,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

from .errors import error_for_status

#: The ABI this binding is written against (LORA_ABI_VERSION in lora.h).
EXPECTED_ABI_VERSION = 1

# ---- Library discovery ------------------------------------------------------

_LIBRARY_NAMES = ("liblora.so", "liblora.so.1")


def _candidate_paths() -> list[str]:
    """Where to look for liblora.so when LORA_LIBRARY is not set, in order."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    python_dir = os.path.dirname(package_dir)  # python/ in a source checkout
    paths = [os.path.join(package_dir, name) for name in _LIBRARY_NAMES]
    # Only the checkout this package file lives in, never the current folder.
    for base in (os.path.join(python_dir, ".."),):
        for config in ("release", "debug"):
            paths.append(os.path.join(base, ".build", config, "liblora.so"))
    seen: set[str] = set()
    unique = []
    for p in paths:
        p = os.path.normpath(p)
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _load_library() -> tuple[ctypes.CDLL, str]:
    # OPENBLAS_CORETYPE is deliberately left alone: liblora chooses OpenBLAS's
    # kernel set itself before loading it, and honours a value the user set.
    env = os.environ.get("LORA_LIBRARY")
    if env:
        try:
            return ctypes.CDLL(env), env
        except OSError as e:
            raise ImportError(
                f"lora: cannot load liblora from LORA_LIBRARY={env!r}: {e}") from e
    tried = []
    for path in _candidate_paths():
        if not os.path.exists(path):
            tried.append(f"  {path} (not found)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"  {path} ({e})")
    raise ImportError(
        "lora: cannot find liblora.so. Set LORA_LIBRARY to its path, or build it "
        "with `swift build --product lora` (or `-c release`). Tried:\n" + "\n".join(tried))


lib, library_path = _load_library()


def _check_abi() -> None:
    try:
        f = lib.lora_abi_version
    except AttributeError as e:
        raise ImportError(f"lora: {library_path} is not liblora (no lora_abi_version)") from e
    f.restype = c_uint32   # uint32_t lora_abi_version(void);
    f.argtypes = []
    abi = int(f())
    if abi != EXPECTED_ABI_VERSION:
        raise ImportError(
            f"lora: {library_path} has ABI version {abi}, this binding expects "
            f"{EXPECTED_ABI_VERSION} (rebuild liblora or update the Python package)")


# Checked before any other symbol is looked up.
_check_abi()

# ---- Basic types ------------------------------------------------------------

lora_status = c_int32


class lora_model(Structure):
    """Opaque handle (struct lora_model)."""


class lora_adapter(Structure):
    """Opaque handle (struct lora_adapter)."""


class lora_trainer(Structure):
    """Opaque handle (struct lora_trainer)."""


lora_model_p = POINTER(lora_model)
lora_adapter_p = POINTER(lora_adapter)
lora_trainer_p = POINTER(lora_trainer)

# ---- Status codes, init kinds, schedulers (values pinned by lora.h) ---------

LORA_OK = 0
LORA_ERROR = 1
LORA_INVALID_ARGUMENT = 2
LORA_INVALID_FILE = 3
LORA_IO_ERROR = 4
LORA_UNSUPPORTED = 5
LORA_BUFFER_TOO_SMALL = 6
LORA_ABORTED = 7
LORA_NUMERICAL_ERROR = 8
LORA_BACKEND_ERROR = 9
LORA_WRONG_STATE = 10

LORA_GGUF_F32 = 0
LORA_GGUF_F16 = 1
GGUF_TYPES = {"f32": LORA_GGUF_F32, "f16": LORA_GGUF_F16}

LORA_INIT_DEFAULT = 0
LORA_INIT_GAUSSIAN = 1
LORA_INIT_RANDOM = 2
LORA_INIT_PISSA = 3
LORA_INIT_OLORA = 4

LORA_SCHEDULER_CONSTANT = 0
LORA_SCHEDULER_CONSTANT_WITH_WARMUP = 1
LORA_SCHEDULER_LINEAR = 2
LORA_SCHEDULER_COSINE = 3

LORA_DTYPE_SAVED = -1
LORA_DTYPE_F32 = 0
LORA_DTYPE_BF16 = 1
LORA_DTYPE_F16 = 2
LORA_DTYPE_Q8_0 = 3
#: dtype names (as `lora --dtype` and the Swift WeightDType) to LORA_DTYPE_* values.
DTYPES = {"f32": LORA_DTYPE_F32, "bf16": LORA_DTYPE_BF16, "f16": LORA_DTYPE_F16, "q8_0": LORA_DTYPE_Q8_0}

# ---- Structs (field order and types exactly as in lora.h) -------------------


class lora_model_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_threads", c_int32),
        ("dtype", c_int32),
        ("kv_cache_dtype", c_int32),
    ]


class lora_model_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("n_vocab", c_int32),
        ("n_positions", c_int32),
        ("n_embd", c_int32),
        ("n_layer", c_int32),
        ("n_head", c_int32),
        ("n_inner", c_int32),
        ("n_params", c_int64),
        ("has_tokenizer", c_int32),
        ("eos_token", c_int32),
        ("blas_core", c_char * 32),
        ("dtype", c_int32),
        ("kv_cache_dtype", c_int32),
    ]


class lora_sampling_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("max_new_tokens", c_int32),
        ("temperature", c_float),
        ("top_k", c_int32),
        ("top_p", c_float),
        ("repetition_penalty", c_float),
        ("seed", c_uint64),
        ("stop_at_eos", c_int32),
        ("stop_strings", POINTER(c_char_p)),   # const char *const *
        ("n_stop_strings", c_size_t),
    ]


class lora_adapter_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("r", c_int32),
        ("lora_alpha", c_float),
        ("lora_dropout", c_float),
        ("target_modules", c_char_p),
        ("target_modules_regex", c_int32),
        ("use_rslora", c_int32),
        ("init", c_int32),
        ("seed", c_uint64),
        ("layers_to_transform", POINTER(c_int32)),  # const int32_t *
        ("n_layers_to_transform", c_size_t),
        ("pissa_niter", c_int32),
        ("use_dora", c_int32),
        ("modules_to_save", c_char_p),
        ("lora_bias", c_int32),
    ]


class lora_trainer_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("learning_rate", c_float),
        ("weight_decay", c_float),
        ("adam_beta1", c_float),
        ("adam_beta2", c_float),
        ("adam_epsilon", c_float),
        ("lr_scheduler", c_int32),
        ("warmup_steps", c_int32),
        ("max_steps", c_int32),
        ("gradient_accumulation_steps", c_int32),
        ("max_grad_norm", c_float),
        ("batch_size", c_int32),
        ("block_size", c_int32),
        ("seed", c_uint64),
        ("gradient_checkpointing", c_int32),
        ("loraplus_lr_ratio", c_float),
        ("model_dropout", c_int32),
    ]


class lora_train_progress(Structure):
    _fields_ = [
        ("step", c_int32),
        ("max_steps", c_int32),
        ("loss", c_float),
        ("learning_rate", c_float),
        ("grad_norm", c_float),
        ("tokens_per_second", c_float),
        ("validation_loss", c_float),
    ]


class lora_train_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("validation_fraction", c_float),
        ("eval_steps", c_int32),
        ("save_steps", c_int32),
        ("checkpoint_dir", c_char_p),
        ("skip_bad_records", c_int32),
        ("num_train_epochs", c_float),   # added in 0.2.0
    ]


# typedef int32_t (*lora_token_callback)(int32_t token, const char *piece, size_t piece_len, void *user_data);
# (piece is not NUL-terminated, hence POINTER(c_char) rather than c_char_p)
lora_token_callback = CFUNCTYPE(c_int32, c_int32, POINTER(c_char), c_size_t, c_void_p)
# typedef int32_t (*lora_progress_callback)(const lora_train_progress *progress, void *user_data);
lora_progress_callback = CFUNCTYPE(c_int32, POINTER(lora_train_progress), c_void_p)
# typedef int32_t (*lora_gradient_reducer)(float *buffer, size_t count, void *user_data);
lora_gradient_reducer = CFUNCTYPE(c_int32, POINTER(c_float), c_size_t, c_void_p)

# ---- Prototypes -------------------------------------------------------------


def _errcheck(result, func, args):
    """The one errcheck of every lora_status function: non-zero status → LoraError."""
    if result != LORA_OK:
        name = lib.lora_status_string(result)
        message = lib.lora_last_error()
        raise error_for_status(
            int(result),
            name.decode("utf-8", "replace") if name else "LORA_UNKNOWN_STATUS",
            message.decode("utf-8", "replace") if message else "",
            func.__name__,
        )
    return result


def _fn(name, restype, argtypes, *, check=False):
    try:
        f = getattr(lib, name)
    except AttributeError as e:
        raise ImportError(f"lora: {library_path} lacks {name}") from e
    f.restype = restype
    f.argtypes = argtypes
    if check:
        f.errcheck = _errcheck
    return f


# const char *lora_status_string(lora_status status);
lora_status_string = _fn("lora_status_string", c_char_p, [lora_status])
# const char *lora_last_error(void);
lora_last_error = _fn("lora_last_error", c_char_p, [])

# const char *lora_version_string(void);
lora_version_string = _fn("lora_version_string", c_char_p, [])
# uint32_t lora_version_number(void);
lora_version_number = _fn("lora_version_number", c_uint32, [])
# uint32_t lora_abi_version(void);
lora_abi_version = _fn("lora_abi_version", c_uint32, [])

# void lora_model_default_params(lora_model_params *params);
lora_model_default_params = _fn("lora_model_default_params", None, [POINTER(lora_model_params)])
# void lora_model_default_params_v2(lora_model_params *params, size_t size);  (what lora.h's lora_model_default_params macro calls)
lora_model_default_params_v2 = _fn("lora_model_default_params_v2", None, [POINTER(lora_model_params), c_size_t])
# lora_status lora_model_load(lora_model **out, const char *path, const lora_model_params *params);
lora_model_load = _fn("lora_model_load", lora_status,
                      [POINTER(lora_model_p), c_char_p, POINTER(lora_model_params)], check=True)
# void lora_model_free(lora_model *model);
lora_model_free = _fn("lora_model_free", None, [lora_model_p])
# lora_status lora_model_get_info(const lora_model *model, lora_model_info *info);
lora_model_get_info = _fn("lora_model_get_info", lora_status,
                          [lora_model_p, POINTER(lora_model_info)], check=True)

# lora_status lora_tokenize(const lora_model *model, const char *text, size_t text_len,
#                           int32_t *tokens, size_t capacity, size_t *n_tokens);
lora_tokenize = _fn("lora_tokenize", lora_status,
                    [lora_model_p, c_char_p, c_size_t, POINTER(c_int32), c_size_t, POINTER(c_size_t)],
                    check=True)
# lora_status lora_detokenize(const lora_model *model, const int32_t *tokens, size_t n_tokens,
#                             char *buf, size_t capacity, size_t *needed);
lora_detokenize = _fn("lora_detokenize", lora_status,
                      [lora_model_p, POINTER(c_int32), c_size_t, POINTER(c_char), c_size_t, POINTER(c_size_t)],
                      check=True)

# lora_status lora_logits(const lora_model *model, const int32_t *tokens, size_t n_tokens,
#                         float *logits, size_t capacity);
lora_logits = _fn("lora_logits", lora_status,
                  [lora_model_p, POINTER(c_int32), c_size_t, POINTER(c_float), c_size_t], check=True)
# lora_status lora_logits_batch(const lora_model *model, const int32_t *const *seqs, const size_t *lens,
#                               size_t n_seqs, int32_t left_padding, float *logits, size_t capacity);
lora_logits_batch = _fn("lora_logits_batch", lora_status,
                        [lora_model_p, POINTER(POINTER(c_int32)), POINTER(c_size_t), c_size_t, c_int32,
                         POINTER(c_float), c_size_t], check=True)

# void lora_sampling_default_params(lora_sampling_params *params);
lora_sampling_default_params = _fn("lora_sampling_default_params", None, [POINTER(lora_sampling_params)])
# void lora_sampling_default_params_v2(lora_sampling_params *params, size_t size);  (what lora.h's lora_sampling_default_params macro calls)
lora_sampling_default_params_v2 = _fn("lora_sampling_default_params_v2", None, [POINTER(lora_sampling_params), c_size_t])
# lora_status lora_generate(const lora_model *model, const char *prompt, const lora_sampling_params *params,
#                           lora_token_callback callback, void *user_data,
#                           char *out, size_t capacity, size_t *needed);
lora_generate = _fn("lora_generate", lora_status,
                    [lora_model_p, c_char_p, POINTER(lora_sampling_params), lora_token_callback, c_void_p,
                     POINTER(c_char), c_size_t, POINTER(c_size_t)], check=True)
# lora_status lora_generate_tokens(const lora_model *model, const int32_t *prompt, size_t n_prompt,
#                                  const lora_sampling_params *params,
#                                  lora_token_callback callback, void *user_data,
#                                  int32_t *out_tokens, size_t capacity, size_t *n_out);
lora_generate_tokens = _fn("lora_generate_tokens", lora_status,
                           [lora_model_p, POINTER(c_int32), c_size_t, POINTER(lora_sampling_params),
                            lora_token_callback, c_void_p, POINTER(c_int32), c_size_t, POINTER(c_size_t)],
                           check=True)

# void lora_adapter_default_params(lora_adapter_params *params);
lora_adapter_default_params = _fn("lora_adapter_default_params", None, [POINTER(lora_adapter_params)])
# void lora_adapter_default_params_v2(lora_adapter_params *params, size_t size);  (what lora.h's lora_adapter_default_params macro calls)
lora_adapter_default_params_v2 = _fn("lora_adapter_default_params_v2", None, [POINTER(lora_adapter_params), c_size_t])
# lora_status lora_adapter_create(lora_adapter **out, lora_model *model, const lora_adapter_params *params);
lora_adapter_create = _fn("lora_adapter_create", lora_status,
                          [POINTER(lora_adapter_p), lora_model_p, POINTER(lora_adapter_params)], check=True)
# lora_status lora_adapter_load(lora_adapter **out, const lora_model *model, const char *path);
lora_adapter_load = _fn("lora_adapter_load", lora_status,
                        [POINTER(lora_adapter_p), lora_model_p, c_char_p], check=True)
# lora_status lora_adapter_save(const lora_adapter *adapter, const char *path);
lora_adapter_save = _fn("lora_adapter_save", lora_status, [lora_adapter_p, c_char_p], check=True)
# lora_status lora_adapter_export_gguf(const lora_adapter *adapter, const char *path, int32_t type);
lora_adapter_export_gguf = _fn("lora_adapter_export_gguf", lora_status, [lora_adapter_p, c_char_p, c_int32], check=True)
# void lora_adapter_free(lora_adapter *adapter);
lora_adapter_free = _fn("lora_adapter_free", None, [lora_adapter_p])
# int64_t lora_adapter_n_params(const lora_adapter *adapter);
lora_adapter_n_params = _fn("lora_adapter_n_params", c_int64, [lora_adapter_p])

# lora_status lora_adapter_compress(lora_adapter **out, const lora_adapter *adapter, int32_t rank, float energy,
#                                   float *max_relative_error);
lora_adapter_compress = _fn("lora_adapter_compress", lora_status,
                            [POINTER(lora_adapter_p), lora_adapter_p, c_int32, c_float, POINTER(c_float)], check=True)
LORA_COMBINE_CAT = 0
LORA_COMBINE_LINEAR = 1
LORA_COMBINE_SVD = 2
# lora_status lora_adapter_combine(lora_adapter **out, const lora_adapter *const *adapters, const float *weights,
#                                  size_t n_adapters, int32_t method, int32_t svd_rank, float svd_clamp);
lora_adapter_combine = _fn("lora_adapter_combine", lora_status,
                           [POINTER(lora_adapter_p), POINTER(lora_adapter_p), POINTER(c_float), c_size_t, c_int32,
                            c_int32, c_float], check=True)
LORA_COMBINE_TIES = 3
LORA_COMBINE_DARE_LINEAR = 4
LORA_COMBINE_DARE_TIES = 5
LORA_COMBINE_MAGNITUDE_PRUNE = 6
LORA_COMBINE_TIES_SVD = 7
LORA_COMBINE_DARE_LINEAR_SVD = 8
LORA_COMBINE_DARE_TIES_SVD = 9
LORA_COMBINE_MAGNITUDE_PRUNE_SVD = 10
LORA_MAJORITY_SIGN_TOTAL = 0
LORA_MAJORITY_SIGN_FREQUENCY = 1


class lora_combine_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("method", c_int32),
        ("svd_rank", c_int32),
        ("svd_clamp", c_float),
        ("density", c_float),
        ("majority_sign_method", c_int32),
        ("seed", c_uint64),
    ]


# void lora_combine_default_params(lora_combine_params *params);
lora_combine_default_params = _fn("lora_combine_default_params", None, [POINTER(lora_combine_params)])
# void lora_combine_default_params_v2(lora_combine_params *params, size_t size);  (what lora.h's lora_combine_default_params macro calls)
lora_combine_default_params_v2 = _fn("lora_combine_default_params_v2", None, [POINTER(lora_combine_params), c_size_t])
# lora_status lora_adapter_combine_v2(lora_adapter **out, const lora_adapter *const *adapters, const float *weights,
#                                     size_t n_adapters, const lora_combine_params *params);
lora_adapter_combine_v2 = _fn("lora_adapter_combine_v2", lora_status,
                              [POINTER(lora_adapter_p), POINTER(lora_adapter_p), POINTER(c_float), c_size_t,
                               POINTER(lora_combine_params)], check=True)
# lora_status lora_adapter_extract(lora_adapter **out, const lora_model *base, const lora_model *tuned,
#                                  const char *target_modules, int32_t rank, float energy, float *max_relative_error);
lora_adapter_extract = _fn("lora_adapter_extract", lora_status,
                           [POINTER(lora_adapter_p), lora_model_p, lora_model_p, c_char_p, c_int32, c_float,
                            POINTER(c_float)], check=True)
# lora_status lora_adapter_extract_v2(lora_adapter **out, const lora_model *base, const lora_model *tuned,
#                                     const char *target_modules, int32_t rank, float energy, int32_t lora_bias,
#                                     float *max_relative_error);
lora_adapter_extract_v2 = _fn("lora_adapter_extract_v2", lora_status,
                              [POINTER(lora_adapter_p), lora_model_p, lora_model_p, c_char_p, c_int32, c_float, c_int32,
                               POINTER(c_float)], check=True)
# lora_status lora_adapter_convert_for_original_base(lora_adapter **out, const lora_adapter *adapter);
lora_adapter_convert_for_original_base = _fn("lora_adapter_convert_for_original_base", lora_status,
                                             [POINTER(lora_adapter_p), lora_adapter_p], check=True)

# lora_status lora_model_attach(lora_model *model, lora_adapter *adapter, float scale);
lora_model_attach = _fn("lora_model_attach", lora_status, [lora_model_p, lora_adapter_p, c_float], check=True)
# lora_status lora_model_detach(lora_model *model, lora_adapter *adapter);
lora_model_detach = _fn("lora_model_detach", lora_status, [lora_model_p, lora_adapter_p], check=True)
# lora_status lora_model_set_adapter_scale(lora_model *model, lora_adapter *adapter, float scale);
lora_model_set_adapter_scale = _fn("lora_model_set_adapter_scale", lora_status,
                                   [lora_model_p, lora_adapter_p, c_float], check=True)
# lora_status lora_model_merge(lora_model *model, lora_adapter *adapter);
lora_model_merge = _fn("lora_model_merge", lora_status, [lora_model_p, lora_adapter_p], check=True)
# lora_status lora_model_unmerge(lora_model *model, lora_adapter *adapter);
lora_model_unmerge = _fn("lora_model_unmerge", lora_status, [lora_model_p, lora_adapter_p], check=True)
# lora_status lora_model_save(const lora_model *model, const char *path);
lora_model_save = _fn("lora_model_save", lora_status, [lora_model_p, c_char_p], check=True)
# lora_status lora_model_export_gguf(const lora_model *model, const char *path, int32_t type);
lora_model_export_gguf = _fn("lora_model_export_gguf", lora_status, [lora_model_p, c_char_p, c_int32], check=True)

# void lora_trainer_default_params(lora_trainer_params *params);
lora_trainer_default_params = _fn("lora_trainer_default_params", None, [POINTER(lora_trainer_params)])
# void lora_trainer_default_params_v2(lora_trainer_params *params, size_t size);  (what lora.h's lora_trainer_default_params macro calls)
lora_trainer_default_params_v2 = _fn("lora_trainer_default_params_v2", None, [POINTER(lora_trainer_params), c_size_t])
# lora_status lora_trainer_create(lora_trainer **out, lora_model *model, lora_adapter *adapter,
#                                 const lora_trainer_params *params);
lora_trainer_create = _fn("lora_trainer_create", lora_status,
                          [POINTER(lora_trainer_p), lora_model_p, lora_adapter_p, POINTER(lora_trainer_params)],
                          check=True)
# void lora_trainer_free(lora_trainer *trainer);
lora_trainer_free = _fn("lora_trainer_free", None, [lora_trainer_p])
# void lora_train_default_params(lora_train_params *params);
lora_train_default_params = _fn("lora_train_default_params", None, [POINTER(lora_train_params)])
# void lora_train_default_params_v2(lora_train_params *params, size_t size);  (what lora.h's lora_train_default_params macro calls)
lora_train_default_params_v2 = _fn("lora_train_default_params_v2", None, [POINTER(lora_train_params), c_size_t])
# lora_status lora_trainer_train(lora_trainer *trainer, const char *const *data_paths, size_t n_paths,
#                                const lora_train_params *params,
#                                lora_progress_callback callback, void *user_data);
lora_trainer_train = _fn("lora_trainer_train", lora_status,
                         [lora_trainer_p, POINTER(c_char_p), c_size_t, POINTER(lora_train_params),
                          lora_progress_callback, c_void_p], check=True)
# lora_status lora_trainer_step(lora_trainer *trainer, const int32_t *tokens, const int32_t *labels,
#                               int32_t batch, int32_t seq_len, float *loss);
lora_trainer_step = _fn("lora_trainer_step", lora_status,
                        [lora_trainer_p, POINTER(c_int32), POINTER(c_int32), c_int32, c_int32, POINTER(c_float)],
                        check=True)
# lora_status lora_trainer_evaluate(lora_trainer *trainer, const char *data_path, float *loss, float *perplexity);
lora_trainer_evaluate = _fn("lora_trainer_evaluate", lora_status,
                            [lora_trainer_p, c_char_p, POINTER(c_float), POINTER(c_float)], check=True)
# lora_status lora_trainer_save_checkpoint(lora_trainer *trainer, const char *dir);
lora_trainer_save_checkpoint = _fn("lora_trainer_save_checkpoint", lora_status,
                                   [lora_trainer_p, c_char_p], check=True)
# lora_status lora_trainer_resume(lora_trainer *trainer, const char *checkpoint_path);
lora_trainer_resume = _fn("lora_trainer_resume", lora_status, [lora_trainer_p, c_char_p], check=True)
# int32_t lora_trainer_get_step(const lora_trainer *trainer);
lora_trainer_get_step = _fn("lora_trainer_get_step", c_int32, [lora_trainer_p])
# lora_status lora_trainer_set_gradient_reducer(lora_trainer *trainer, int32_t rank, int32_t world_size,
#                                               lora_gradient_reducer reduce, void *user_data);
lora_trainer_set_gradient_reducer = _fn("lora_trainer_set_gradient_reducer", lora_status,
                                        [lora_trainer_p, c_int32, c_int32, lora_gradient_reducer, c_void_p],
                                        check=True)


# ---- Batched engine -----------------------------------------------------------


class lora_engine(Structure):
    """Opaque handle (struct lora_engine)."""


lora_engine_p = POINTER(lora_engine)
lora_request_id = c_int64

LORA_REQUEST_QUEUED = 0
LORA_REQUEST_RUNNING = 1
LORA_REQUEST_FINISHED = 2
LORA_REQUEST_CANCELLED = 3

LORA_STOP_NONE = 0
LORA_STOP_MAX_TOKENS = 1
LORA_STOP_EOS = 2
LORA_STOP_STRING = 3
LORA_STOP_CONTEXT_FULL = 4
LORA_STOP_CALLBACK = 5
LORA_STOP_CANCELLED = 6
LORA_STOP_ERROR = 7


class lora_engine_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("max_sequences", c_int32),
        ("max_tokens_per_step", c_int32),
        ("context_per_sequence", c_int32),
    ]


class lora_adapter_use(Structure):
    _fields_ = [("adapter", lora_adapter_p), ("scale", c_float)]


class lora_request(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("prompt", c_char_p),
        ("tokens", POINTER(c_int32)),
        ("n_tokens", c_size_t),
        ("adapters", POINTER(lora_adapter_use)),
        ("n_adapters", c_size_t),
        ("sampling", POINTER(lora_sampling_params)),
        ("callback", lora_token_callback),
        ("user_data", c_void_p),
    ]


class lora_request_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("state", c_int32),
        ("stop_reason", c_int32),
        ("status", lora_status),
        ("n_tokens", c_int64),
    ]


# void lora_engine_default_params(lora_engine_params *params);
lora_engine_default_params = _fn("lora_engine_default_params", None, [POINTER(lora_engine_params)])
# void lora_engine_default_params_v2(lora_engine_params *params, size_t size);  (what lora.h's lora_engine_default_params macro calls)
lora_engine_default_params_v2 = _fn("lora_engine_default_params_v2", None, [POINTER(lora_engine_params), c_size_t])
# lora_status lora_engine_create(lora_engine **out, const lora_model *model, const lora_engine_params *params);
lora_engine_create = _fn("lora_engine_create", lora_status,
                         [POINTER(lora_engine_p), lora_model_p, POINTER(lora_engine_params)], check=True)
# void lora_engine_free(lora_engine *engine);
lora_engine_free = _fn("lora_engine_free", None, [lora_engine_p])
# void lora_request_default_params(lora_request *request);
lora_request_default_params = _fn("lora_request_default_params", None, [POINTER(lora_request)])
# void lora_request_default_params_v2(lora_request *request, size_t size);  (what lora.h's lora_request_default_params macro calls)
lora_request_default_params_v2 = _fn("lora_request_default_params_v2", None, [POINTER(lora_request), c_size_t])
# lora_status lora_engine_submit(lora_engine *engine, const lora_request *request, lora_request_id *id);
lora_engine_submit = _fn("lora_engine_submit", lora_status,
                         [lora_engine_p, POINTER(lora_request), POINTER(lora_request_id)], check=True)
# lora_status lora_engine_step(lora_engine *engine, lora_request_id *finished, size_t capacity,
#                              size_t *n_finished, size_t *n_tokens);
lora_engine_step = _fn("lora_engine_step", lora_status,
                       [lora_engine_p, POINTER(lora_request_id), c_size_t, POINTER(c_size_t), POINTER(c_size_t)],
                       check=True)
# lora_status lora_engine_step_report(lora_engine *engine, lora_request_id *produced, size_t produced_capacity,
#                                     size_t *n_produced, lora_request_id *finished, size_t finished_capacity,
#                                     size_t *n_finished);
lora_engine_step_report = _fn("lora_engine_step_report", lora_status,
                              [lora_engine_p, POINTER(lora_request_id), c_size_t, POINTER(c_size_t),
                               POINTER(lora_request_id), c_size_t, POINTER(c_size_t)], check=True)
# lora_status lora_engine_run(lora_engine *engine);
lora_engine_run = _fn("lora_engine_run", lora_status, [lora_engine_p], check=True)
# lora_status lora_engine_cancel(lora_engine *engine, lora_request_id id);
lora_engine_cancel = _fn("lora_engine_cancel", lora_status, [lora_engine_p, lora_request_id], check=True)
# lora_status lora_engine_request_info(lora_engine *engine, lora_request_id id, lora_request_info *info);
lora_engine_request_info = _fn("lora_engine_request_info", lora_status,
                               [lora_engine_p, lora_request_id, POINTER(lora_request_info)], check=True)
# lora_status lora_engine_request_tokens(lora_engine *engine, lora_request_id id, int32_t *out_tokens,
#                                        size_t capacity, size_t *n_out);
lora_engine_request_tokens = _fn("lora_engine_request_tokens", lora_status,
                                 [lora_engine_p, lora_request_id, POINTER(c_int32), c_size_t, POINTER(c_size_t)],
                                 check=True)
# lora_status lora_engine_request_text(lora_engine *engine, lora_request_id id, char *out, size_t capacity,
#                                      size_t *needed);
lora_engine_request_text = _fn("lora_engine_request_text", lora_status,
                               [lora_engine_p, lora_request_id, c_char_p, c_size_t, POINTER(c_size_t)], check=True)
# lora_status lora_engine_release(lora_engine *engine, lora_request_id id);
lora_engine_release = _fn("lora_engine_release", lora_status, [lora_engine_p, lora_request_id], check=True)
