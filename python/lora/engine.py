"""The batched multi-adapter engine (lora_engine): many requests, each with its own adapters, in one pass."""
from __future__ import annotations

import ctypes
from ctypes import POINTER, byref, c_size_t, sizeof

from . import _capi as C
from ._convert import cstring, int32, int32_array, real
from ._owner import Owner
from .adapter import Adapter
from .errors import BufferTooSmallError, LoraError, error_for_status
from .model import Model

_STOP_REASONS = {
    C.LORA_STOP_NONE: None,
    C.LORA_STOP_MAX_TOKENS: "max_new_tokens",
    C.LORA_STOP_EOS: "end_of_text",
    C.LORA_STOP_STRING: "stop_string",
    C.LORA_STOP_CONTEXT_FULL: "context_full",
    C.LORA_STOP_CALLBACK: "callback",
    C.LORA_STOP_CANCELLED: "cancelled",
    C.LORA_STOP_ERROR: "error",
}
_STATES = {C.LORA_REQUEST_QUEUED: "queued", C.LORA_REQUEST_RUNNING: "running",
           C.LORA_REQUEST_FINISHED: "finished", C.LORA_REQUEST_CANCELLED: "cancelled"}


class Request:
    """One request of an :class:`Engine`. Iterating it yields its text pieces as
    they are generated (stepping the engine while none is ready); ``text``,
    ``tokens`` and ``stop_reason`` are known once it has ended."""

    def __init__(self, engine: "Engine", on_token):
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be callable, got {type(on_token).__name__}")
        self.engine = engine
        self.id = 0
        self._on_token = on_token
        self._pieces: list[str] = []
        self._error: BaseException | None = None
        # Referenced here for as long as C may call it (until the request ends).
        self._c_callback = C.lora_token_callback(self._call)

    def _call(self, token, piece, piece_len, user_data):
        try:
            text = (ctypes.string_at(piece, piece_len) if piece_len else b"").decode("utf-8", "replace")
            self._pieces.append(text)
            if self._on_token is not None:
                r = self._on_token(int(token), text)
                if r is not None and not r:
                    return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised by the next step or iteration
            self._error = e
            return 1

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _info(self):
        info = C.lora_request_info()
        info.struct_size = ctypes.sizeof(info)
        C.lora_engine_request_info(self.engine._require(), self.id, byref(info))
        return info

    @property
    def state(self) -> str:
        """"queued", "running", "finished" or "cancelled"."""
        return _STATES[self._info().state]

    @property
    def done(self) -> bool:
        return self._info().state >= C.LORA_REQUEST_FINISHED

    @property
    def stop_reason(self) -> str | None:
        """Why it ended ("max_new_tokens", "end_of_text", "stop_string", "context_full",
        "callback", "cancelled", "error"), None while it runs."""
        return _STOP_REASONS.get(self._info().stop_reason)

    @property
    def failed(self) -> bool:
        """True once it has ended with stop reason "error" (a sampled token the
        tokenizer has no text for); iterating it then raises InvalidArgumentError."""
        return self._info().stop_reason == C.LORA_STOP_ERROR

    def _failure(self, message: str | None = None) -> LoraError | None:
        """The error of a request that ended with stop reason "error", else None."""
        info = self._info()
        if info.stop_reason != C.LORA_STOP_ERROR:
            return None
        name = C.lib.lora_status_string(info.status)
        return error_for_status(info.status, name.decode() if name else "LORA_UNKNOWN_STATUS",
                                message or f"request {self.id} failed: a sampled token has no text in the tokenizer")

    @property
    def tokens(self) -> list[int]:
        """The new token ids (once ended; WrongStateError before)."""
        h = self.engine._require()
        n = c_size_t(0)
        cap = 64
        while True:
            buf = (ctypes.c_int32 * cap)()
            try:
                C.lora_engine_request_tokens(h, self.id, buf, cap, byref(n))
                return list(buf[: n.value])
            except BufferTooSmallError:
                cap = n.value

    @property
    def text(self) -> str:
        """The new text (once ended; WrongStateError before)."""
        h = self.engine._require()
        needed = c_size_t(0)
        cap = 1024
        while True:
            buf = ctypes.create_string_buffer(cap)
            try:
                C.lora_engine_request_text(h, self.id, buf, cap, byref(needed))
                return buf.raw[: needed.value].decode("utf-8", "replace")
            except BufferTooSmallError:
                cap = needed.value + 1

    def cancel(self) -> None:
        """Ends the request before its next token (WrongStateError once it has ended)."""
        C.lora_engine_cancel(self.engine._require(), self.id)

    def __iter__(self):
        sent = 0
        while True:
            while sent < len(self._pieces):
                sent += 1
                yield self._pieces[sent - 1]
            self._raise_pending()
            if self.done:
                while sent < len(self._pieces):
                    sent += 1
                    yield self._pieces[sent - 1]
                failure = self._failure()
                if failure is not None:
                    raise failure
                return
            self.engine.step()

    def __repr__(self) -> str:
        return f"<lora.Request {self.id}>"


class Engine(Owner):
    """Runs many generation requests together, each with its own adapters
    (``[adapter, (adapter, scale), ...]``) and sampling, in batched steps.

    Requests beyond ``max_sequences`` wait in a queue. ``submit``/``cancel``
    may be called from any thread; ``step``/``run`` from one thread at a time.
    A request keeps its adapters alive until it ends.

        with lora.Engine(model, max_sequences=8) as engine:
            texts = engine.generate(["Hello", {"prompt": "Hi", "adapters": [(a, 0.5)]}], max_new_tokens=20)
    """

    _kind = "engine"
    _close_rank = 0

    def __init__(self, model: Model, max_sequences: int = 16, max_tokens_per_step: int = 512,
                 context_per_sequence: int = 0):
        p = C.lora_engine_params()
        C.lora_engine_default_params_v2(byref(p), sizeof(p))
        p.max_sequences = int32(max_sequences, "max_sequences")
        p.max_tokens_per_step = int32(max_tokens_per_step, "max_tokens_per_step")
        p.context_per_sequence = int32(context_per_sequence, "context_per_sequence")
        handle = C.lora_engine_p()
        C.lora_engine_create(byref(handle), model._require(), byref(p))
        super().__init__(handle, C.lora_engine_free)
        self.model = model
        self.max_sequences = max_sequences
        self._requests: dict[int, Request] = {}
        model._dependents.add(self)

    def submit(self, prompt, adapters=(), max_new_tokens: int | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
               seed: int | None = None, stop_at_eos: bool | None = None, stop=None, on_token=None) -> Request:
        """Queues a request: ``prompt`` is text or a list of token ids; ``adapters``
        a list of :class:`Adapter` or ``(Adapter, scale)``. Sampling arguments left
        at None take the library's defaults, as :meth:`Model.generate`.
        ``on_token(id, piece)`` streams its tokens (return False to end it: stop
        reason "callback")."""
        h = self._require()
        params, keep = self.model._sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                                            stop_at_eos, stop)
        req = C.lora_request()
        C.lora_request_default_params_v2(byref(req), sizeof(req))
        if isinstance(prompt, (str, bytes)):
            req.prompt = cstring(prompt, "prompt")
        else:
            arr, n = int32_array(prompt, "prompt")
            req.tokens = ctypes.cast(arr, POINTER(ctypes.c_int32))
            req.n_tokens = n
            keep = (keep, arr)
        uses = []
        for item in adapters:
            adapter, scale = (item, 1.0) if isinstance(item, Adapter) else item
            if not isinstance(adapter, Adapter):
                raise TypeError(f"adapters must hold lora.Adapter or (Adapter, scale), got {type(adapter).__name__}")
            uses.append((adapter._require(), real(scale, "adapter scale")))
        arr_uses = (C.lora_adapter_use * max(1, len(uses)))()
        for i, (ah, scale) in enumerate(uses):
            arr_uses[i].adapter = ah
            arr_uses[i].scale = scale
        req.adapters = arr_uses
        req.n_adapters = len(uses)
        req.sampling = ctypes.pointer(params)
        r = Request(self, on_token)
        req.callback = r._c_callback
        rid = C.lora_request_id(0)
        C.lora_engine_submit(h, byref(req), byref(rid))
        del keep
        r.id = rid.value
        self._requests[r.id] = r
        return r

    def step(self) -> list[Request]:
        """Runs one batched step; returns the requests that ended in it. An
        exception raised by a request's on_token is re-raised here (that request
        has ended with stop reason "callback"). A request whose sampled token has
        no text in the tokenizer ends with stop reason "error" (``failed``); the
        others go on."""
        h = self._require()
        cap = max(1, self.max_sequences)
        finished = (C.lora_request_id * cap)()
        n_finished, n_tokens = c_size_t(0), c_size_t(0)
        C.lora_engine_step(h, finished, cap, byref(n_finished), byref(n_tokens))
        ended = [self._requests.get(finished[i]) for i in range(min(cap, n_finished.value))]
        for r in list(self._requests.values()):
            r._raise_pending()
        return [r for r in ended if r is not None]

    def run(self) -> None:
        """Steps until no request is queued or running."""
        while True:
            self.step()
            if all(r.done for r in self._requests.values()):
                return

    def generate(self, prompts, **defaults) -> list[str]:
        """Runs many prompts together and returns their texts in order. Each item
        is a prompt (text or ids) or a dict with ``prompt`` and any of submit's
        keyword arguments (``adapters``, ``seed``, ...), over ``defaults``.
        InvalidArgumentError, after every prompt has ended, when one failed
        (stop reason "error"); ``submit`` keeps the others' texts."""
        reqs = []
        for item in prompts:
            kw = dict(defaults)
            if isinstance(item, dict):
                kw.update(item)
                prompt = kw.pop("prompt")
            else:
                prompt = item
            reqs.append(self.submit(prompt, **kw))
        self.run()
        texts = [r.text for r in reqs]
        failed = [i for i, r in enumerate(reqs) if r.failed]
        error = reqs[failed[0]]._failure(f"prompts {failed} failed: a sampled token has no text in the tokenizer") \
            if failed else None
        for r in reqs:
            self.release(r)
        if error is not None:
            raise error
        return texts

    def release(self, request: Request) -> None:
        """Forgets an ended request (its result is kept until then)."""
        C.lora_engine_release(self._require(), request.id)
        self._requests.pop(request.id, None)

    def _on_close(self) -> None:
        self.model._dependents.discard(self)

    def __repr__(self) -> str:
        return f"<lora.Engine max_sequences={self.max_sequences}{' closed' if self.closed else ''}>"
