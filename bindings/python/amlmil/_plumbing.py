"""The bindings' shared machinery: converting Python arguments for the C ABI
(``_cstr``, ``_u64``, ``_config_json``), the progress trampoline that carries
callbacks, cancellation and Ctrl-C across each long call (``_run``; the rules
are in :mod:`amlmil.core`'s notes), and owned, thread-safe handles
(``_Handle``, ``_Using``, ``_Owner``) that free their C object exactly once.
"""


from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import operator
import os
import sys
import threading
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from . import _native
from ._native import PROGRESS_CALLBACK, check, lib
from .errors import Status

PathLike = Union[str, "os.PathLike[str]"]
ClassKey = Union[int, str]

# ---------------------------------------------------------------- arguments


def _cstr(value: Any, name: str) -> bytes:
    """A UTF-8 C string; refuses what C would misread (NUL bytes, non-UTF-8)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, bytes):
            raw = text
        else:
            try:
                raw = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{name}: {text!r} is not valid UTF-8 (the C ABI takes UTF-8): {e}") from None
    else:
        raise TypeError(f"{name}: expected str or os.PathLike, got {type(value).__name__}")
    if b"\0" in raw:
        raise ValueError(f"{name}: contains a NUL byte")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not valid UTF-8 (the C ABI takes UTF-8): {e}") from None
    return raw


def _u64(value: Any, name: str) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if not 0 <= v < 2**64:
        raise ValueError(f"{name}: {v} is outside 0..2**64-1")
    return v


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _config_json(config: Optional[Mapping[str, Any]], name: str = "config") -> Optional[bytes]:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"{name}: expected a dict, got {type(config).__name__}")
    try:
        return json.dumps(dict(config), default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot be written as JSON: {e}") from None


# ----------------------------------------------------------------- progress


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report of a long call (``amlmil_progress``)."""

    stage: str
    done: int
    total: int
    epoch: Optional[int]  #: ``None`` where the library reports -1 (not applicable)
    fold: Optional[int]  #: ``None`` where the library reports -1
    loss: Optional[float]  #: ``None`` where the library reports NaN


ProgressCallback = Callable[[Progress], Optional[bool]]


_hook_lock = threading.Lock()
_hook_installed = False


def _install_unraisable_hook() -> None:
    """A KeyboardInterrupt pending when the library calls the trampoline is raised
    by Python at the function's entry, before its ``try`` can catch it; ctypes then
    reports it to ``sys.unraisablehook`` instead of the caller. This hook (which
    passes everything else on to the hook it replaced) hands such an exception to
    its trampoline, so the call is cancelled at the next report and the exception
    re-raised when the call returns."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        previous = sys.unraisablehook

        def hook(unraisable):
            owner = getattr(unraisable.object, "__self__", None)
            if isinstance(owner, _Trampoline) and unraisable.exc_value is not None:
                if owner.error is None:
                    owner.error = unraisable.exc_value
                return
            previous(unraisable)

        sys.unraisablehook = hook
        _hook_installed = True


class _Trampoline:
    """The C progress callback of one call. Catches everything the Python side
    raises (it must not unwind through C), turns it into a cancellation, and
    keeps it for :meth:`finish` to re-raise."""

    def __init__(self, callback: Optional[ProgressCallback]):
        if callback is not None and not callable(callback):
            raise TypeError(f"progress: expected a callable or None, got {type(callback).__name__}")
        self.callback = callback
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self.calls = 0
        _install_unraisable_hook()
        self.c = PROGRESS_CALLBACK(self._call)

    def _call(self, _user_data, p):  # runs on the calling thread, GIL held
        try:
            if self.error is not None or self.cancelled:
                return 1
            self.calls += 1
            if self.callback is None:
                return 0
            q = p.contents
            loss = float(q.loss)
            report = Progress(
                stage=(q.stage or b"").decode("utf-8", "replace"),
                done=int(q.done),
                total=int(q.total),
                epoch=None if q.epoch < 0 else int(q.epoch),
                fold=None if q.fold < 0 else int(q.fold),
                loss=None if math.isnan(loss) else loss,
            )
            if self.callback(report):
                self.cancelled = True
                return 1
            return 0
        except BaseException as e:  # KeyboardInterrupt included
            self.error = e
            return 1

    def finish(self, status: int, function: str) -> None:
        """Raises what the call ended with: the callback's exception first."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        check(status, function)


def _run(function: str, args_before: Sequence[Any], progress: Optional[ProgressCallback], args_after: Sequence[Any] = ()) -> str:
    """Calls one of the JSON-in/JSON-out training entry points with a trampoline."""
    tramp = _Trampoline(progress)
    out = ctypes.c_void_p()
    status = getattr(lib(), function)(*args_before, tramp.c, None, *args_after, ctypes.byref(out))
    text = _native.take_string(out) if status == Status.OK else ""
    tramp.finish(status, function)
    return text


# ------------------------------------------------------------------ handles


class _Handle:
    """An owned C pointer with a count of calls using it, so that it is never
    freed under a running call."""

    def __init__(self, ptr: int, free_name: str, what: str):
        self._ptr: Optional[int] = ptr
        self._free_name = free_name
        self._what = what
        self._lock = threading.Lock()
        self._users = 0

    def acquire(self) -> int:
        with self._lock:
            if self._ptr is None:
                raise ValueError(f"the {self._what} is closed")
            self._users += 1
            return self._ptr

    def release(self) -> None:
        with self._lock:
            self._users -= 1

    def close(self) -> None:
        with self._lock:
            if self._users:
                raise RuntimeError(f"cannot close the {self._what}: {self._users} call(s) on it are still running")
            ptr, self._ptr = self._ptr, None
        if ptr:
            getattr(lib(), self._free_name)(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None


class _Using:
    def __init__(self, *handles: _Handle):
        self.handles = handles

    def __enter__(self):
        got = []
        try:
            for h in self.handles:
                got.append(h.acquire())
        except BaseException:
            for h in self.handles[: len(got)]:
                h.release()
            raise
        return got

    def __exit__(self, *exc):
        for h in self.handles:
            h.release()


class _Owner:
    """A Python object owning one library handle (``self._h``): a context
    manager; ``close()`` frees the handle (refused while calls on it run in
    other threads), and so does garbage collection."""

    _h: "_Handle"

    def close(self) -> None:
        self._h.close()

    @property
    def closed(self) -> bool:
        return self._h.closed

    def __enter__(self: "_O") -> "_O":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._h.close()
        except Exception:
            pass


_O = TypeVar("_O", bound=_Owner)
