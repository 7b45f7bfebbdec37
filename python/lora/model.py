"""lora.Model: a GPT-2 checkpoint loaded by liblora (lora_model)."""
from __future__ import annotations

import ctypes
import os
from ctypes import POINTER, byref, c_char_p, c_size_t, sizeof
from dataclasses import asdict, dataclass, fields

from . import _capi as C
from ._convert import (
    FloatOutput,
    cpath,
    cstring,
    cstring_array,
    flag,
    int32,
    int32_array,
    real,
    uint64,
)
from ._owner import Owner
from .errors import AbortedError, BufferTooSmallError, LoraError, file_not_found


class GeneratedText(str):
    """The text :meth:`Model.generate` returns, with ``stop_reason``: "callback"
    when on_token returned False, else "completed" (max_new_tokens,
    <|endoftext|>, a stop string or the context limit)."""

    stop_reason: str = "completed"


class GeneratedTokens(list):
    """The ids :meth:`Model.generate_tokens` returns, with ``stop_reason`` (see GeneratedText)."""

    stop_reason: str = "completed"


def _text(value: str, reason: str) -> GeneratedText:
    t = GeneratedText(value)
    t.stop_reason = reason
    return t


def _tokens(value, reason: str) -> GeneratedTokens:
    t = GeneratedTokens(value)
    t.stop_reason = reason
    return t


@dataclass(frozen=True)
class ModelInfo:
    """lora_model_info as a frozen dataclass; also readable as a mapping (info["n_vocab"])."""

    n_vocab: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    n_params: int
    has_tokenizer: bool
    eos_token: int | None   # None when the model has none (-1 in C)
    blas_core: str
    dtype: str              # storage of the weight matrices: "f32", "bf16", "f16" or "q8_0"
    kv_cache_dtype: str     # storage of the KV cache: "f32" or "bf16"

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return [f.name for f in fields(self)]

    def as_dict(self) -> dict:
        return asdict(self)


class _TokenRelay:
    """The lora_token_callback handed to C: forwards to on_token, never lets an exception cross into C."""

    def __init__(self, on_token=None):
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be callable, got {type(on_token).__name__}")
        self.on_token = on_token
        self.pieces: list[bytes] = []
        self.error: BaseException | None = None
        self.stopped = False
        # Referenced by this object for as long as C may call it (the duration of the call).
        self.c_callback = C.lora_token_callback(self._call)

    def _call(self, token, piece, piece_len, user_data):
        try:
            data = ctypes.string_at(piece, piece_len) if piece_len else b""
            self.pieces.append(data)
            if self.on_token is not None:
                r = self.on_token(int(token), data.decode("utf-8", "replace"))
                if r is not None and not r:
                    self.stopped = True
                    return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
            self.error = e
            self.stopped = True
            return 1

    def raise_pending(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class Model(Owner):
    """A GPT-2 model loaded from a Hugging Face directory: ``lora.Model(path)``,
    ``lora.Model.from_pretrained(path)`` or ``lora.Model.load(path)``.

    Closing a model first closes its trainers and adapters (they must not
    outlive it). Attached adapters are kept referenced by the model.
    """

    _kind = "Model"
    _close_rank = 2

    def __init__(self, path, n_threads: int = 0, *, dtype: str | None = None, kv_cache_dtype: str = "f32",
                 _handle=None):
        if _handle is None:
            if isinstance(path, C.lora_model_p):
                raise TypeError("use lora.Model(path) to load a model")
            _handle = self._load_handle(path, n_threads, dtype, kv_cache_dtype)
        if not isinstance(_handle, C.lora_model_p) or not _handle:
            raise TypeError("use lora.Model(path) to create a Model")
        path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        super().__init__(_handle, C.lora_model_free)
        self.path = path
        self._attached: set = set()   # adapters attached (possibly merged): kept alive while attached
        self._info: ModelInfo | None = None

    # ---- lifetime ------------------------------------------------------------

    @staticmethod
    def _load_handle(path, n_threads: int, dtype: str | None = None, kv_cache_dtype: str = "f32"):
        p = C.lora_model_params()
        C.lora_model_default_params_v2(byref(p), sizeof(p))
        p.n_threads = int32(n_threads, "n_threads")
        if dtype is not None:
            if not isinstance(dtype, str) or dtype.lower() not in C.DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(C.DTYPES)} or None (got {dtype!r})")
            p.dtype = C.DTYPES[dtype.lower()]
        if not isinstance(kv_cache_dtype, str) or kv_cache_dtype.lower() not in ("f32", "bf16"):
            raise ValueError(f"kv_cache_dtype must be 'f32' or 'bf16' (got {kv_cache_dtype!r})")
        p.kv_cache_dtype = C.DTYPES[kv_cache_dtype.lower()]
        if kv_cache_dtype.lower() != "f32" and p.struct_size < C.lora_model_params.kv_cache_dtype.offset + 4:
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} needs a liblora with that field "
                             f"(this one's lora_model_params has {p.struct_size} bytes)")
        cp = cpath(path)
        if not os.path.exists(cp):
            raise file_not_found(path, "model directory", "lora_model_load")
        h = C.lora_model_p()
        C.lora_model_load(byref(h), cp, byref(p))
        return h

    @classmethod
    def load(cls, path, n_threads: int = 0, *, dtype: str | None = None, kv_cache_dtype: str = "f32") -> "Model":
        """Loads a GPT-2 directory (config.json, model.safetensors, tokenizer files when present).

        n_threads: compute threads for the whole process (0 keeps the current
            count: OPENBLAS_NUM_THREADS or the CPU count at first).
        dtype: storage of the weight matrices, "f32", "bf16", "f16" or "q8_0"
            (None: the dtype a converted model was saved in, else "f32").
        kv_cache_dtype: storage of the keys and values generation and the
            engine cache, "f32" (exact) or "bf16" (half the memory; each key
            and value rounded to nearest even as it is cached).
        A missing path raises FileNotFoundError (lora.LoraFileNotFoundError).
        """
        return cls(path, n_threads, dtype=dtype, kv_cache_dtype=kv_cache_dtype)

    @classmethod
    def from_pretrained(cls, path, n_threads: int = 0, *, dtype: str | None = None,
                        kv_cache_dtype: str = "f32") -> "Model":
        """transformers' name for :meth:`load`."""
        return cls(path, n_threads, dtype=dtype, kv_cache_dtype=kv_cache_dtype)

    def _on_close(self) -> None:
        # Attached adapters not registered as dependents anymore (GC cleared the
        # weak set) are still referenced here: free them before the model.
        for a in list(self._attached):
            a.close()
        self._attached.clear()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<lora.Model {self.path!r} ({state})>"

    # ---- information ------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            i = C.lora_model_info()
            i.struct_size = ctypes.sizeof(C.lora_model_info)
            C.lora_model_get_info(self._require(), byref(i))
            self._info = ModelInfo(
                n_vocab=i.n_vocab, n_positions=i.n_positions, n_embd=i.n_embd, n_layer=i.n_layer,
                n_head=i.n_head, n_inner=i.n_inner, n_params=i.n_params,
                has_tokenizer=bool(i.has_tokenizer),
                eos_token=None if i.eos_token < 0 else i.eos_token,
                blas_core=i.blas_core.decode("utf-8", "replace"),
                dtype=next((k for k, v in C.DTYPES.items() if v == i.dtype), str(i.dtype)),
                kv_cache_dtype=next((k for k, v in C.DTYPES.items() if v == i.kv_cache_dtype), str(i.kv_cache_dtype)),
            )
        else:
            self._require()
        return self._info

    @property
    def adapters(self) -> tuple:
        """The adapters attached to this model (merged ones included)."""
        return tuple(self._attached)

    # ---- tokens -------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of text (special tokens such as <|endoftext|> are matched)."""
        h = self._require()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        # Every token covers at least one byte, so len(data) ids always fit.
        capacity = max(1, len(data))
        n = c_size_t(0)
        while True:
            buf = (ctypes.c_int32 * capacity)()
            try:
                C.lora_tokenize(h, data, len(data), buf, capacity, byref(n))
            except BufferTooSmallError:
                capacity = max(n.value, capacity * 2)
                continue
            return buf[: n.value]

    def detokenize(self, ids) -> str:
        """The text of token ids (invalid UTF-8 sequences become U+FFFD)."""
        h = self._require()
        arr, n = int32_array(ids, "ids")
        capacity = 16 * n + 64
        needed = c_size_t(0)
        while True:
            buf = ctypes.create_string_buffer(capacity)
            try:
                C.lora_detokenize(h, arr, n, buf, capacity, byref(needed))
            except BufferTooSmallError:
                capacity = max(needed.value + 1, capacity * 2)
                continue
            return buf.raw[: needed.value].decode("utf-8", "replace")

    # ---- logits ---------------------------------------------------------------------

    def logits(self, ids):
        """Logits [len(ids), n_vocab] (float32 numpy array; nested lists without numpy)."""
        h = self._require()
        arr, n = int32_array(ids, "ids")
        out = FloatOutput((n, self.info.n_vocab))
        C.lora_logits(h, arr, n, out.pointer, out.size)
        return out.result()

    def logits_batch(self, seqs, left_padding: bool = True):
        """Logits [len(seqs), longest, n_vocab] of sequences padded to the longest.

        Left padding (the default) places positions as transformers' generate
        does; padding positions hold zeros.
        """
        h = self._require()
        if isinstance(seqs, (str, bytes)):
            raise TypeError("seqs must be a list of token id sequences")
        arrays = [int32_array(s, f"seqs[{i}]") for i, s in enumerate(seqs)]
        n = len(arrays)
        ptrs = (POINTER(ctypes.c_int32) * max(1, n))()
        lens = (c_size_t * max(1, n))()
        for i, (a, length) in enumerate(arrays):
            ptrs[i] = ctypes.cast(a, POINTER(ctypes.c_int32))
            lens[i] = length
        longest = max((length for _, length in arrays), default=0)
        out = FloatOutput((n, longest, self.info.n_vocab))
        C.lora_logits_batch(h, ptrs, lens, n, flag(left_padding), out.pointer, out.size)
        return out.result()

    # ---- generation ----------------------------------------------------------------------

    def _sampling(self, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop_at_eos, stop):
        # Arguments left at None keep the library's defaults (lora_sampling_default_params).
        p = C.lora_sampling_params()
        C.lora_sampling_default_params_v2(byref(p), sizeof(p))
        if max_new_tokens is not None:
            p.max_new_tokens = int32(max_new_tokens, "max_new_tokens")
        if temperature is not None:
            p.temperature = real(temperature, "temperature")
        if top_k is not None:
            p.top_k = int32(top_k, "top_k")
        if top_p is not None:
            p.top_p = real(top_p, "top_p")
        if repetition_penalty is not None:
            p.repetition_penalty = real(repetition_penalty, "repetition_penalty")
        if seed is not None:
            p.seed = uint64(seed, "seed")
        if stop_at_eos is not None:
            p.stop_at_eos = flag(stop_at_eos)
        keep = None
        if stop is not None:
            if isinstance(stop, (str, bytes)):
                stop = [stop]
            items = [cstring(s, "stop string") for s in stop]
            if items:
                arr = cstring_array(items)
                p.stop_strings = ctypes.cast(arr, POINTER(c_char_p))
                p.n_stop_strings = len(items)
                keep = (arr, items)
        return p, keep

    def generate(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                 seed: int | None = None, stop_at_eos: bool | None = None, stop=None, on_token=None,
                 stream: bool = False):
        """Generates text after a prompt and returns the new text.

        Arguments left at None take the library's defaults
        (lora_sampling_default_params: 64 new tokens, temperature 1, top_p 1,
        seed 0). temperature 0 is greedy; the same seed gives the same text.
        ``stop`` is a string or a list of strings (generation stops once the
        text contains one; it is kept). ``on_token(token_id, piece)`` streams
        each new token's text piece; it returns True/None to go on, False to
        stop quietly: the text so far is returned, its ``stop_reason`` is
        "callback". An exception raised by on_token stops generation and is
        re-raised here. ``stream=True`` returns an iterator of text pieces
        instead (generation runs in a worker thread; closing the iterator
        early stops it).
        """
        if stream:
            if on_token is not None:
                raise ValueError("give either stream=True or on_token, not both")
            return self._stream(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                                stop_at_eos, stop)
        h = self._require()
        prompt_b = cstring(prompt, "prompt")
        # `keep` holds the stop strings referenced by params for the duration of the call.
        params, keep = self._sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                                      stop_at_eos, stop)
        n_new = max(0, min(params.max_new_tokens, self.info.n_positions))
        capacity = 256 + 64 * n_new
        relay = _TokenRelay(on_token)
        out = ctypes.create_string_buffer(capacity)
        needed = c_size_t(0)
        try:
            C.lora_generate(h, prompt_b, byref(params), relay.c_callback, None, out, capacity, byref(needed))
        except BufferTooSmallError:
            relay.raise_pending()
            if relay.stopped:
                return _text(b"".join(relay.pieces).decode("utf-8", "replace"), "callback")
            joined = b"".join(relay.pieces)
            if len(joined) == needed.value:
                return _text(joined.decode("utf-8", "replace"), "completed")
            # The pieces miss the decoder's final flush: generate again (same seed,
            # same text) into a buffer of the size now known, without re-streaming.
            capacity = needed.value + 1
            out = ctypes.create_string_buffer(capacity)
            again = _TokenRelay(None)
            C.lora_generate(h, prompt_b, byref(params), again.c_callback, None, out, capacity, byref(needed))
        except LoraError as e:
            relay.raise_pending()
            if isinstance(e, AbortedError) and relay.stopped:
                return _text(out.raw[: min(needed.value, capacity - 1)].decode("utf-8", "replace"), "callback")
            raise
        relay.raise_pending()
        return _text(out.raw[: needed.value].decode("utf-8", "replace"), "completed")

    def _stream(self, prompt, *args):
        """The iterator of generate(stream=True): a worker thread runs the C call, pieces come through a queue."""
        import queue
        import threading

        self._require()
        pieces: queue.Queue = queue.Queue()
        done = object()
        cancel = threading.Event()
        failure: list = []

        def on_token(token_id, piece):
            pieces.put(piece)
            return not cancel.is_set()

        def work():
            try:
                self.generate(prompt, *args, on_token=on_token)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                failure.append(e)
            finally:
                pieces.put(done)

        def iterate():
            worker = threading.Thread(target=work, name="lora-generate", daemon=True)
            worker.start()
            try:
                while True:
                    item = pieces.get()
                    if item is done:
                        break
                    yield item
                if failure:
                    raise failure[0]
            finally:
                cancel.set()
                worker.join()

        return iterate()

    def generate_tokens(self, ids, max_new_tokens: int | None = None, temperature: float | None = None,
                        top_k: int | None = None, top_p: float | None = None,
                        repetition_penalty: float | None = None, seed: int | None = None,
                        stop_at_eos: bool | None = None, stop=None, on_token=None) -> list[int]:
        """Generates after prompt token ids and returns the new ids (see :meth:`generate`)."""
        h = self._require()
        arr, n = int32_array(ids, "ids")
        # `keep` holds the stop strings referenced by params for the duration of the call.
        params, keep = self._sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                                      stop_at_eos, stop)
        capacity = max(1, min(params.max_new_tokens, self.info.n_positions))
        relay = _TokenRelay(on_token)
        out = (ctypes.c_int32 * capacity)()
        n_out = c_size_t(0)
        try:
            C.lora_generate_tokens(h, arr, n, byref(params), relay.c_callback, None, out, capacity, byref(n_out))
        except BufferTooSmallError:  # not expected: the capacity covers max_new_tokens
            relay.raise_pending()
            if relay.stopped:
                return _tokens(out[: min(n_out.value, capacity)], "callback")
            capacity = n_out.value
            out = (ctypes.c_int32 * capacity)()
            again = _TokenRelay(None)
            C.lora_generate_tokens(h, arr, n, byref(params), again.c_callback, None, out, capacity, byref(n_out))
        except LoraError as e:
            relay.raise_pending()
            if isinstance(e, AbortedError) and relay.stopped:
                return _tokens(out[: min(n_out.value, capacity)], "callback")
            raise
        relay.raise_pending()
        return _tokens(out[: n_out.value], "completed")

    # ---- adapters ----------------------------------------------------------------------------

    def _adapter_handle(self, adapter):
        from .adapter import Adapter
        if not isinstance(adapter, Adapter):
            raise TypeError(f"expected a lora.Adapter, got {type(adapter).__name__}")
        return adapter._require()

    def attach(self, adapter, scale: float = 1.0) -> None:
        """Applies the adapter in every forward pass, times scale. Attaching an
        adapter that is already attached (a Trainer attaches its adapter) sets
        its scale."""
        h = self._require()
        if adapter in self._attached:
            C.lora_model_set_adapter_scale(h, self._adapter_handle(adapter), real(scale, "scale"))
            return
        C.lora_model_attach(h, self._adapter_handle(adapter), real(scale, "scale"))
        self._attached.add(adapter)

    def detach(self, adapter) -> None:
        """Stops applying an attached adapter (LORA_WRONG_STATE if it is not attached)."""
        h = self._require()
        C.lora_model_detach(h, self._adapter_handle(adapter))
        self._attached.discard(adapter)

    def set_adapter_scale(self, adapter, scale: float) -> None:
        """Changes an attached adapter's scale (0 disables it)."""
        h = self._require()
        C.lora_model_set_adapter_scale(h, self._adapter_handle(adapter), real(scale, "scale"))

    def merge(self, adapter) -> None:
        """Folds the adapter into the base weights (attaching it merged if needed)."""
        h = self._require()
        C.lora_model_merge(h, self._adapter_handle(adapter))
        self._attached.add(adapter)

    def unmerge(self, adapter) -> None:
        """Takes a merged adapter back out of the weights (it is applied on the fly again)."""
        h = self._require()
        C.lora_model_unmerge(h, self._adapter_handle(adapter))

    def save(self, path) -> None:
        """Writes a Hugging Face checkpoint directory (merged adapters folded in)."""
        C.lora_model_save(self._require(), cpath(path))

    def export_gguf(self, path, dtype: str = "f32") -> None:
        """Writes a GGUF file for llama.cpp (architecture gpt2, with the tokenizer);
        dtype "f32" or "f16" for the matrices. Merged adapters are part of the
        weights; export attached, unmerged ones with Adapter.export_gguf."""
        C.lora_model_export_gguf(self._require(), cpath(path), gguf_type(dtype))


def gguf_type(dtype: str) -> int:
    """"f32" / "f16" → LORA_GGUF_*."""
    if dtype not in C.GGUF_TYPES:
        raise ValueError(f"dtype must be one of {sorted(C.GGUF_TYPES)}, not {dtype!r}")
    return C.GGUF_TYPES[dtype]
