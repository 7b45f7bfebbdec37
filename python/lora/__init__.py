"""lora: Python binding of liblora (GPT-2 inference and LoRA fine-tuning on the CPU).

A thin ctypes layer over include/lora.h. The library is found through the
LORA_LIBRARY environment variable (a path to liblora.so), else inside this
package (`pip install ./python` puts it there), else in the SwiftPM build
folders of the source checkout this package sits in (.build/release,
.build/debug); never relative to the current folder. Its ABI version is
checked on import.

    import lora
    with lora.Model("gpt2") as model:
        print(model.generate("Hello", max_new_tokens=20, seed=1))
"""
from __future__ import annotations

from . import _capi
from ._capi import (
    EXPECTED_ABI_VERSION as ABI_VERSION,
    LORA_ABORTED,
    LORA_BACKEND_ERROR,
    LORA_BUFFER_TOO_SMALL,
    LORA_ERROR,
    LORA_INIT_DEFAULT,
    LORA_INIT_GAUSSIAN,
    LORA_INIT_RANDOM,
    LORA_INIT_PISSA,
    LORA_INIT_OLORA,
    LORA_INVALID_ARGUMENT,
    LORA_INVALID_FILE,
    LORA_IO_ERROR,
    LORA_NUMERICAL_ERROR,
    LORA_OK,
    LORA_SCHEDULER_CONSTANT,
    LORA_SCHEDULER_CONSTANT_WITH_WARMUP,
    LORA_SCHEDULER_COSINE,
    LORA_SCHEDULER_LINEAR,
    LORA_UNSUPPORTED,
    LORA_WRONG_STATE,
)
from .adapter import Adapter
from .errors import (
    AbortedError,
    BackendError,
    BufferTooSmallError,
    ClosedError,
    InternalError,
    InvalidArgumentError,
    InvalidFileError,
    LoraError,
    LoraFileNotFoundError,
    LoraIOError,
    NumericalError,
    Status,
    UnsupportedError,
    WrongStateError,
)
from .engine import Engine, Request
from .model import GeneratedText, GeneratedTokens, Model, ModelInfo
from .trainer import Trainer

__version__ = "0.2.0"

#: The path of the liblora.so in use.
library_path: str = _capi.library_path


def version() -> str:
    """The library's version string (lora_version_string), e.g. "0.2.0"."""
    return _capi.lora_version_string().decode("ascii")


def version_number() -> int:
    """MAJOR * 10000 + MINOR * 100 + PATCH of the library (lora_version_number)."""
    return int(_capi.lora_version_number())


def abi_version() -> int:
    """The library's ABI version (lora_abi_version); this package requires ABI_VERSION."""
    return int(_capi.lora_abi_version())


def status_string(status: int) -> str:
    """The fixed name of a status code (lora_status_string)."""
    return _capi.lora_status_string(int(status)).decode("ascii")


__all__ = [
    "ABI_VERSION", "Adapter", "Engine", "Request", "Model", "ModelInfo", "Trainer", "GeneratedText", "GeneratedTokens",
    "LoraError", "AbortedError", "BackendError", "BufferTooSmallError", "ClosedError", "InternalError",
    "InvalidArgumentError", "InvalidFileError", "LoraIOError", "LoraFileNotFoundError", "NumericalError", "UnsupportedError",
    "WrongStateError", "Status",
    "version", "version_number", "abi_version", "status_string", "library_path",
    "LORA_OK", "LORA_ERROR", "LORA_INVALID_ARGUMENT", "LORA_INVALID_FILE", "LORA_IO_ERROR",
    "LORA_UNSUPPORTED", "LORA_BUFFER_TOO_SMALL", "LORA_ABORTED", "LORA_NUMERICAL_ERROR",
    "LORA_BACKEND_ERROR", "LORA_WRONG_STATE",
    "LORA_INIT_DEFAULT", "LORA_INIT_GAUSSIAN", "LORA_INIT_RANDOM", "LORA_INIT_PISSA", "LORA_INIT_OLORA",
    "LORA_SCHEDULER_CONSTANT", "LORA_SCHEDULER_CONSTANT_WITH_WARMUP", "LORA_SCHEDULER_LINEAR",
    "LORA_SCHEDULER_COSINE",
]
