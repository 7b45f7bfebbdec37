"""Test helpers: a small pure-Python safetensors reader, tolerant comparisons."""
import array
import json
import math
import struct
import sys

try:
    import numpy as np
except ImportError:
    np = None

#: Logits vs Hugging Face: float32 sums in a different order (BLAS vs torch).
LOGITS_TOLERANCE = 1e-4
#: Losses and weights after AdamW steps vs torch (the Swift tests' bound).
TRAJECTORY_TOLERANCE = 1e-4
#: Merge/unmerge and reload round trips: float32 rounding of W + s·BA.
MERGE_TOLERANCE = 1e-4

_TYPECODES = {"F32": "f", "F64": "d", "I64": "q", "I32": "i", "U8": "B", "I8": "b"}


class Tensor:
    def __init__(self, dtype, shape, raw):
        self.dtype = dtype
        self.shape = list(shape)
        self.raw = raw

    def values(self) -> list:
        """The elements as a flat list of Python numbers."""
        a = array.array(_TYPECODES[self.dtype])
        a.frombytes(self.raw)
        if sys.byteorder != "little":
            a.byteswap()
        return a.tolist()

    def rows(self) -> list:
        """A 2-D tensor as a list of rows."""
        assert len(self.shape) == 2, self.shape
        flat = self.values()
        w = self.shape[1]
        return [flat[i * w:(i + 1) * w] for i in range(self.shape[0])]


def read_safetensors(path):
    """(metadata dict, {name: Tensor}) of a safetensors file: 8-byte LE header size + JSON header + data."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = Tensor(t["dtype"], t["shape"], data[base + start:base + end])
    return meta, tensors


def flatten(x) -> list:
    """A flat list of floats from a numpy array or nested lists."""
    if np is not None and isinstance(x, np.ndarray):
        return x.ravel().tolist()
    if isinstance(x, (list, tuple)):
        out = []
        for v in x:
            if isinstance(v, (list, tuple)) or (np is not None and isinstance(v, np.ndarray)):
                out.extend(flatten(v))
            else:
                out.append(v)
        return out
    return [x]


def shape_of(x) -> tuple:
    if np is not None and isinstance(x, np.ndarray):
        return tuple(x.shape)
    dims = []
    while isinstance(x, list):
        dims.append(len(x))
        x = x[0] if x else None
    return tuple(dims)


def max_abs_diff(a, b) -> float:
    fa, fb = flatten(a), flatten(b)
    assert len(fa) == len(fb), (len(fa), len(fb))
    worst = 0.0
    for x, y in zip(fa, fb):
        d = abs(x - y)
        if math.isnan(d):
            return math.inf
        worst = max(worst, d)
    return worst
