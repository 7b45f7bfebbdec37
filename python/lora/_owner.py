"""The base of Model, Adapter and Trainer: one C handle, freed exactly once."""
from __future__ import annotations

import weakref

from .errors import ClosedError


class Owner:
    """Owns one liblora handle.

    ``close()`` frees it and is idempotent; ``with`` closes on exit; ``__del__``
    is a fallback for objects nobody closed. Objects that must not outlive this
    one (adapters and trainers of a model, trainers of an adapter) register as
    dependents and are closed first.
    """

    _kind = "object"

    def __init__(self, handle, free):
        self._handle = handle
        # Kept on the instance so __del__ works while the interpreter shuts down.
        self._free = free
        self._dependents: weakref.WeakSet = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        return getattr(self, "_handle", None) is None

    def _require(self):
        """The live handle, or ClosedError."""
        h = getattr(self, "_handle", None)
        if h is None:
            raise ClosedError(f"this {self._kind} is closed")
        return h

    def _close_dependents(self) -> None:
        deps = list(getattr(self, "_dependents", ()))
        # Trainers before adapters: free in reverse order of creation.
        deps.sort(key=lambda d: getattr(d, "_close_rank", 0))
        for d in deps:
            d.close()

    def _on_close(self) -> None:
        """Hook run after dependents are closed, before the handle is freed."""

    def close(self) -> None:
        """Frees the C object (and first everything that depends on it). Idempotent."""
        h = getattr(self, "_handle", None)
        if h is None:
            return
        self._close_dependents()
        self._on_close()
        self._handle = None
        self._free(h)

    def __enter__(self):
        self._require()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # never raise from a finalizer
            pass
