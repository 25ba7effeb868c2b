"""Exceptions and status codes of the C ABI (``include/amlmil.h``)."""

from __future__ import annotations

import enum

__all__ = [
    "Status",
    "AmlmilError",
    "Cancelled",
    "LibraryNotFoundError",
    "AbiMismatchError",
]


class Status(enum.IntEnum):
    """``amlmil_status``: the numbers are fixed by the C ABI."""

    OK = 0
    NULL_ARGUMENT = 1
    INVALID_ARGUMENT = 2
    BUFFER_TOO_SMALL = 3
    IO = 4
    DECODE = 5
    CHECKPOINT = 6
    MISMATCH = 7
    EMPTY_BAG = 8
    NON_FINITE = 9
    DEVICE = 10
    DATASET = 11
    CANCELLED = 12
    TORCH = 13
    PANIC = 14
    UNSUPPORTED = 15
    PLUGIN = 16
    BUSY = 17
    LIMIT = 18


class AmlmilError(Exception):
    """A call into ``libamlmil`` returned a status other than ``AMLMIL_STATUS_OK``.

    Attributes:
        status: the ``amlmil_status`` number (compare with :class:`Status`).
        status_name: the library's name for it, e.g. ``"AMLMIL_STATUS_IO"``.
        message: ``amlmil_last_error()`` read on the calling thread right after
            the failing call; it names the argument, file or shape.
        function: the C function that failed, e.g. ``"amlmil_session_new"``.
    """

    def __init__(self, status: int, status_name: str, message: str, function: str = ""):
        self.status = int(status)
        self.status_name = status_name
        self.message = message
        self.function = function
        where = f"{function}: " if function else ""
        super().__init__(f"{where}{status_name}: {message}" if message else f"{where}{status_name}")

    def __reduce__(self):  # picklable, e.g. across multiprocessing
        return (type(self), (self.status, self.status_name, self.message, self.function))


class Cancelled(AmlmilError):
    """The call was cancelled (``AMLMIL_STATUS_CANCELLED``): a progress
    callback returned ``True``."""


class LibraryNotFoundError(ImportError):
    """``libamlmil.so`` could not be loaded; the message lists every place tried."""


class AbiMismatchError(ImportError):
    """The loaded ``libamlmil.so`` has another ABI version than these bindings."""
