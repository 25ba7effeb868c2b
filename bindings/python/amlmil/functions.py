"""The library's module-level calls: versions and runtime info, the training
and data entry points (cross-validation, MIL training, pre-training, the
experiment, feature extraction, synthetic cohorts, data set checks, import),
cancelling a running training call, and routing the library's log records to
Python.
"""



from __future__ import annotations

import ctypes
import enum
import json
import operator
import os
import threading
import _thread
import atexit
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _native
from ._native import LOG_CALLBACK, check, lib
from ._plumbing import PathLike, ProgressCallback, _config_json, _cstr, _run, _u64


__all__ = [
    "training_cancel",
    "LogLevel",
    "version",
    "abi_version",
    "runtime_info",
    "cuda_device_count",
    "set_log_callback",
    "cross_validate",
    "train_mil",
    "pretrain",
    "experiment",
    "extract_features",
    "synth_cohort",
    "dataset_check",
    "import_model",
    "ensemble",
]


# ------------------------------------------------------- module functions


def training_cancel() -> bool:
    """Cancels the training call running in this process, from any thread
    (``amlmil_training_cancel``); True if one was running."""
    return bool(lib().amlmil_training_cancel())


def version() -> str:
    """``amlmil_version()``, e.g. ``"0.1.0"``."""
    return lib().amlmil_version().decode("utf-8")


def abi_version() -> int:
    """``amlmil_abi_version()`` of the loaded library."""
    return int(lib().amlmil_abi_version())


def cuda_device_count() -> int:
    return int(lib().amlmil_cuda_device_count())


def runtime_info() -> Dict[str, Any]:
    """``amlmil_runtime_info``: versions, CUDA devices, libtorch threads."""
    out = ctypes.c_void_p()
    check(lib().amlmil_runtime_info(ctypes.byref(out)), "amlmil_runtime_info")
    return json.loads(_native.take_string(out))


def cross_validate(config: Mapping[str, Any], progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """``amlmil_cross_validate``: JSON configuration in, report out."""
    return json.loads(_run("amlmil_cross_validate", [_config_json(config)], progress))


def train_mil(config: Mapping[str, Any], fold: int, progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """``amlmil_train_mil``: one MIL head on fold ``fold`` of the first seed."""
    f = _u64(fold, "fold")
    if f >= 2**32:
        raise ValueError(f"fold: {f} does not fit in 32 bits")
    return json.loads(_run("amlmil_train_mil", [_config_json(config), f], progress))


def pretrain(config: Mapping[str, Any], progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """``amlmil_pretrain``: SimCLR, SwAV, DINO or supervised encoder pre-training."""
    return json.loads(_run("amlmil_pretrain", [_config_json(config)], progress))


def experiment(config: Mapping[str, Any], progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """``amlmil_experiment``: the paper's experiment (resumable)."""
    return json.loads(_run("amlmil_experiment", [_config_json(config)], progress))


def extract_features(
    dataset_dir: PathLike,
    encoder_path: PathLike,
    out_dir: PathLike,
    *,
    flips: bool = True,
    device: str = "auto",
    progress: Optional[ProgressCallback] = None,
) -> Dict[str, Any]:
    """``amlmil_extract_features``; returns the cache manifest."""
    args = [
        _cstr(dataset_dir, "dataset_dir"),
        _cstr(encoder_path, "encoder_path"),
        _cstr(out_dir, "out_dir"),
        1 if flips else 0,
        _cstr(device, "device"),
    ]
    return json.loads(_run("amlmil_extract_features", args, progress))


def synth_cohort(out_dir: PathLike, config: Optional[Mapping[str, Any]] = None, progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """``amlmil_synth_cohort``. This call cannot be cancelled: an exception raised by
    ``progress`` is re-raised only after the whole cohort is written."""
    return json.loads(_run("amlmil_synth_cohort", [_config_json(config), _cstr(out_dir, "out_dir")], progress))


def dataset_check(dataset_dir: PathLike, *, skip: bool = False, check_images: bool = False) -> Dict[str, Any]:
    """``amlmil_dataset_check``: ``{"summary": …, "issues": […]}``."""
    out = ctypes.c_void_p()
    check(
        lib().amlmil_dataset_check(_cstr(dataset_dir, "dataset_dir"), 1 if skip else 0, 1 if check_images else 0, ctypes.byref(out)),
        "amlmil_dataset_check",
    )
    return json.loads(_native.take_string(out))


def import_model(source_path: PathLike, out_path: PathLike, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``amlmil_import``: a PyTorch-trained model to a libamlmil checkpoint."""
    out = ctypes.c_void_p()
    check(
        lib().amlmil_import(_cstr(source_path, "source_path"), _cstr(out_path, "out_path"), _config_json(options, "options"), ctypes.byref(out)),
        "amlmil_import",
    )
    return json.loads(_native.take_string(out))


def ensemble(cv_dir: PathLike, out_path: PathLike, seeds: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """``amlmil_ensemble``: a cross-validation's heads (folds × seeds, or only
    ``seeds``') as one deployable MIL checkpoint; sessions average the heads'
    probabilities and per-class attention. Returns the report (heads, the run
    of each and its scores)."""
    config: Dict[str, Any] = {"cv_dir": os.fspath(cv_dir), "out": os.fspath(out_path)}
    if seeds is not None:
        config["seeds"] = [_u64(s, "seeds") for s in seeds]
    out = ctypes.c_void_p()
    check(lib().amlmil_ensemble(_config_json(config), ctypes.byref(out)), "amlmil_ensemble")
    return json.loads(_native.take_string(out))


# --------------------------------------------------------------------- log


class LogLevel(enum.IntEnum):
    """``amlmil_log_level``."""

    OFF = 0
    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4
    TRACE = 5


LogCallback = Callable[[LogLevel, str, str], None]

_log_lock = threading.Lock()
# Every callback object ever installed stays referenced: a library thread may
# still be inside an old one while a new one is installed.
_log_installed: List[Any] = []


def _log_trampoline(callback: LogCallback):
    def call(_user_data, level, target, message):
        try:
            callback(LogLevel(level), (target or b"").decode("utf-8", "replace"), (message or b"").decode("utf-8", "replace"))
        except KeyboardInterrupt:
            _thread.interrupt_main()  # delivered again, to the main thread's next check
        # Other exceptions leave through ctypes, which reports them with
        # sys.unraisablehook; a log record cannot cancel anything.

    return LOG_CALLBACK(call)


def set_log_callback(callback: Optional[LogCallback], level: Union[LogLevel, int, str] = LogLevel.INFO) -> None:
    """Routes the library's log records at or above ``level`` to
    ``callback(level, target, message)``; ``None`` stops logging. The callback
    may be called from any thread, concurrently."""
    if isinstance(level, str):
        try:
            level = LogLevel[level.upper()]
        except KeyError:
            raise ValueError(f"level: expected one of {[l.name.lower() for l in LogLevel]}, got {level!r}") from None
    lvl = LogLevel(operator.index(level))
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    with _log_lock:
        c = _log_trampoline(callback) if callback is not None else LOG_CALLBACK()
        if callback is not None:
            _log_installed.append(c)
        check(lib().amlmil_set_log_callback(c, None, int(lvl) if callback is not None else 0), "amlmil_set_log_callback")


@atexit.register
def _stop_logging() -> None:
    # Library threads must not call into a finalising interpreter.
    if _log_installed and _native._lib is not None:
        try:
            _native._lib.amlmil_set_log_callback(LOG_CALLBACK(), None, 0)
        except Exception:
            pass
