"""Conversions between Python values and the C buffers of lora.h.

numpy is optional: with it, token arrays may be numpy arrays and float outputs
are numpy float32 arrays; without it, outputs are (nested) lists of floats.
"""
from __future__ import annotations

import array
import ctypes
import math
import os
from ctypes import c_char_p, c_float, c_int32

try:  # numpy is optional
    import numpy as np
except ImportError:  # pragma: no cover - exercised by the no-numpy test run
    np = None

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1
UINT64_MAX = 2 ** 64 - 1


def has_numpy() -> bool:
    return np is not None


def is_ndarray(x) -> bool:
    return np is not None and isinstance(x, np.ndarray)


# ---- scalars -----------------------------------------------------------------

def int32(value, what: str) -> int:
    """An int that fits int32_t (ctypes would silently truncate otherwise)."""
    if isinstance(value, float) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    v = value.__index__()
    if not INT32_MIN <= v <= INT32_MAX:
        raise OverflowError(f"{what} {v} does not fit int32_t")
    return v


def uint64(value, what: str) -> int:
    if isinstance(value, float) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    v = value.__index__()
    if not 0 <= v <= UINT64_MAX:
        raise OverflowError(f"{what} {v} does not fit uint64_t")
    return v


def real(value, what: str) -> float:
    """A Python float for a C float field (NaN/inf pass through: the library rejects them)."""
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be a number, got {type(value).__name__}") from e


def flag(value) -> int:
    return 1 if value else 0


def cstring(text, what: str) -> bytes:
    """UTF-8 bytes for a NUL-terminated C string (no NUL inside)."""
    if isinstance(text, bytes):
        b = text
    elif isinstance(text, str):
        b = text.encode("utf-8")
    else:
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if b"\0" in b:
        raise ValueError(f"{what} contains a NUL character")
    return b


def cpath(path, what: str = "path") -> bytes:
    """A filesystem path (str, bytes or os.PathLike) as bytes for C."""
    try:
        b = os.fsencode(os.fspath(path))
    except TypeError as e:
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(path).__name__}") from e
    if b"\0" in b:
        raise ValueError(f"{what} contains a NUL character")
    return b


def cstring_array(items: list[bytes]):
    """A const char *const * array (the bytes objects stay referenced by the array)."""
    arr = (c_char_p * max(1, len(items)))()
    for i, b in enumerate(items):
        arr[i] = b
    return arr


# ---- token arrays ---------------------------------------------------------------

def int32_array(seq, what: str):
    """(ctypes int32 array, n) from a 1-D sequence of ints or a 1-D integer numpy array."""
    if is_ndarray(seq):
        if seq.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {seq.shape}")
        a = _int32_ndarray(seq, what)
        return (c_int32 * a.size).from_buffer(a), int(a.size)
    if isinstance(seq, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of token ids, not {type(seq).__name__}")
    try:
        a = array.array("i", seq)
    except TypeError as e:
        raise TypeError(f"{what} must be a sequence of integers: {e}") from e
    except OverflowError as e:
        raise OverflowError(f"{what}: a value does not fit int32_t") from e
    assert a.itemsize == 4
    return (c_int32 * len(a)).from_buffer(a), len(a)


def int32_matrix(rows, what: str):
    """(ctypes int32 array, n_rows, n_cols) from a list of equal-length rows or a 2-D numpy array."""
    if is_ndarray(rows):
        if rows.ndim != 2:
            raise ValueError(f"{what} must be 2-D [batch, seq_len], got shape {rows.shape}")
        a = _int32_ndarray(rows, what)
        b, t = a.shape
        return (c_int32 * a.size).from_buffer(a), int(b), int(t)
    if isinstance(rows, (str, bytes)):
        raise TypeError(f"{what} must be a list of rows of token ids")
    rows = list(rows)
    if not rows:
        raise ValueError(f"{what} is empty")
    flat = array.array("i")
    width = None
    for i, row in enumerate(rows):
        if is_ndarray(row):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
            raise ValueError(f"{what} must be 2-D (a list of lists); row {i} is {type(row).__name__}")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"{what}: every row must have the same length (row 0 has {width}, row {i} has {len(row)})")
        try:
            flat.extend(array.array("i", row))
        except TypeError as e:
            raise TypeError(f"{what} row {i} must hold integers: {e}") from e
        except OverflowError as e:
            raise OverflowError(f"{what} row {i}: a value does not fit int32_t") from e
    return (c_int32 * len(flat)).from_buffer(flat), len(rows), int(width)


def _int32_ndarray(a, what: str):
    if a.dtype.kind not in "iub":
        raise TypeError(f"{what} must hold integers, got dtype {a.dtype}")
    if a.size and (int(a.min()) < INT32_MIN or int(a.max()) > INT32_MAX):
        raise OverflowError(f"{what}: a value does not fit int32_t")
    return np.array(a, dtype=np.int32, order="C", copy=True)  # writable, contiguous, ours


# ---- float outputs ---------------------------------------------------------------

class FloatOutput:
    """A float32 output buffer of a given shape: numpy array or ctypes array."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.size = math.prod(shape)
        if np is not None:
            self._array = np.empty(shape, dtype=np.float32)
            self.pointer = self._array.ctypes.data_as(ctypes.POINTER(c_float))
        else:
            self._array = (c_float * max(1, self.size))()
            self.pointer = ctypes.cast(self._array, ctypes.POINTER(c_float))

    def result(self):
        if np is not None:
            return self._array
        flat = self._array[: self.size]  # a list of Python floats
        return _nest(flat, self.shape)


def _nest(flat: list, shape: tuple[int, ...]):
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]
