"""Exceptions of the lora package.

Every failing liblora call raises a :class:`LoraError` (or a subclass chosen by
its status), carrying the numeric ``status``, its fixed ``status_name`` from
``lora_status_string()`` and the library's ``message`` from
``lora_last_error()``. Using a closed object raises :class:`ClosedError`.
"""
from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """lora_status values (pinned by lora.h; never renumbered)."""

    OK = 0
    ERROR = 1
    INVALID_ARGUMENT = 2
    INVALID_FILE = 3
    IO_ERROR = 4
    UNSUPPORTED = 5
    BUFFER_TOO_SMALL = 6
    ABORTED = 7
    NUMERICAL_ERROR = 8
    BACKEND_ERROR = 9
    WRONG_STATE = 10


class LoraError(Exception):
    """A liblora call returned a non-zero lora_status.

    Attributes: ``status`` (int), ``status_name`` (e.g. "LORA_IO_ERROR"),
    ``message`` (the library's detail), ``function`` (the C function name).
    """

    def __init__(self, status: int, status_name: str, message: str, function: str | None = None):
        self.status = int(status)
        self.status_name = status_name
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        text = f"{where}{status_name}"
        if message:
            text += f": {message}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.status, self.status_name, self.message, self.function))

    def __str__(self) -> str:
        # The one-line text also for the OSError subclasses (whose own __str__ shows errno/filename).
        return str(self.args[0]) if self.args else ""


class InternalError(LoraError):
    """LORA_ERROR: an internal error of liblora (a bug)."""


class InvalidArgumentError(LoraError, ValueError):
    """LORA_INVALID_ARGUMENT."""


class InvalidFileError(LoraError):
    """LORA_INVALID_FILE: a file is malformed or does not fit the model."""


class LoraIOError(LoraError, OSError):
    """LORA_IO_ERROR: a file or directory cannot be read or written (an OSError)."""


class LoraFileNotFoundError(LoraIOError, FileNotFoundError):
    """A path given to liblora does not exist (``except FileNotFoundError`` catches it)."""


class UnsupportedError(LoraError):
    """LORA_UNSUPPORTED."""


class BufferTooSmallError(LoraError):
    """LORA_BUFFER_TOO_SMALL (handled inside the binding; should not escape)."""


class AbortedError(LoraError):
    """LORA_ABORTED: a callback asked to stop."""


class NumericalError(LoraError):
    """LORA_NUMERICAL_ERROR: NaN/inf loss or weights."""


class BackendError(LoraError):
    """LORA_BACKEND_ERROR: OpenBLAS/LAPACKE missing or failing."""


class WrongStateError(LoraError):
    """LORA_WRONG_STATE: a call out of order."""


class ClosedError(ValueError):
    """An operation on a Model, Adapter or Trainer that was closed."""


_BY_STATUS = {
    Status.ERROR: InternalError,
    Status.INVALID_ARGUMENT: InvalidArgumentError,
    Status.INVALID_FILE: InvalidFileError,
    Status.IO_ERROR: LoraIOError,
    Status.UNSUPPORTED: UnsupportedError,
    Status.BUFFER_TOO_SMALL: BufferTooSmallError,
    Status.ABORTED: AbortedError,
    Status.NUMERICAL_ERROR: NumericalError,
    Status.BACKEND_ERROR: BackendError,
    Status.WRONG_STATE: WrongStateError,
}


def error_for_status(status: int, status_name: str, message: str, function: str | None = None) -> LoraError:
    """The exception for a status (LoraError itself for unknown values)."""
    cls = _BY_STATUS.get(status, LoraError)
    if cls is LoraIOError and ("no such file" in message.lower() or "not found" in message.lower()):
        cls = LoraFileNotFoundError
    return cls(status, status_name, message, function)


def file_not_found(path, what: str = "path", function: str | None = None) -> LoraFileNotFoundError:
    """The error for a path that does not exist, raised before calling the library."""
    import os
    p = os.fsdecode(os.fspath(path))
    e = LoraFileNotFoundError(int(Status.IO_ERROR), "LORA_IO_ERROR", f"{p}: no such file or directory ({what})",
                              function)
    e.filename = p
    return e
