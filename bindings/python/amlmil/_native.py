"""The ctypes layer over ``libamlmil.so``: finding and loading the library,
the C structs and callback types, and one prototype per function of
``include/amlmil.h``. Nothing here is a second implementation; every
operation is a call into the library.

The library is loaded on first use (:func:`lib`), not on ``import amlmil``, so
the package's other modules (``amlmil.tool``, which the Rust CLI runs) work
without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from pathlib import Path
from typing import List, Optional, Tuple

from .errors import AbiMismatchError, AmlmilError, Cancelled, LibraryNotFoundError, Status

#: ABI version of ``include/amlmil.h`` these bindings were written for.
ABI_VERSION = 1

#: Environment variable naming the library file to load.
LIBRARY_ENV = "AMLMIL_LIBRARY"

c_status = ctypes.c_uint32
_p = ctypes.POINTER


class ProgressC(ctypes.Structure):
    """``amlmil_progress``."""

    _fields_ = [
        ("stage", ctypes.c_char_p),
        ("done", ctypes.c_uint64),
        ("total", ctypes.c_uint64),
        ("epoch", ctypes.c_int32),
        ("fold", ctypes.c_int32),
        ("loss", ctypes.c_double),
    ]


class RankedCellC(ctypes.Structure):
    """``amlmil_ranked_cell``."""

    _fields_ = [
        ("cell_id", ctypes.c_uint64),
        ("index", ctypes.c_uint64),
        ("attention", ctypes.c_float),
    ]


class CellC(ctypes.Structure):
    """``amlmil_cell`` (one cell handed to a preprocessing callback)."""

    _fields_ = [
        ("cell_id", ctypes.c_uint64),
        ("pixels", ctypes.POINTER(ctypes.c_uint8)),
        ("width", ctypes.c_uint32),
        ("height", ctypes.c_uint32),
        ("keep", ctypes.c_uint32),
    ]


#: ``amlmil_preprocess_callback``
PREPROCESS_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(CellC), ctypes.c_size_t)


class ModelInfoC(ctypes.Structure):
    """``amlmil_model_info``."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_classes", ctypes.c_size_t),
        ("input_size", ctypes.c_uint32),
        ("feature_dim", ctypes.c_uint32),
        ("feature_map_channels", ctypes.c_uint32),
        ("feature_map_height", ctypes.c_uint32),
        ("feature_map_width", ctypes.c_uint32),
        ("pixel_size_um", ctypes.c_double),
        ("encoder_architecture", ctypes.c_char_p),
        ("encoder_method", ctypes.c_char_p),
        ("encoder_sha256", ctypes.c_char_p),
        ("mil_method", ctypes.c_char_p),
        ("mil_sha256", ctypes.c_char_p),
        ("mil_tool", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("precision", ctypes.c_char_p),
        ("num_heads", ctypes.c_uint32),
    ]


class SessionOptionsC(ctypes.Structure):
    """``amlmil_session_options``."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("device", ctypes.c_char_p),
        ("precision", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("num_threads", ctypes.c_uint32),
        ("channels_last", ctypes.c_uint32),
        ("fused", ctypes.c_uint32),
        ("warm_up", ctypes.c_uint32),
        ("preprocess", PREPROCESS_CALLBACK),
        ("preprocess_user_data", ctypes.c_void_p),
        ("plugin_path", ctypes.c_char_p),
        ("plugin_config", ctypes.c_char_p),
        ("max_cells_per_bag", ctypes.c_uint64),
        ("max_batch_bytes", ctypes.c_uint64),
    ]


#: ``amlmil_progress_callback``
PROGRESS_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, _p(ProgressC))
#: ``amlmil_log_callback``
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_char_p)

_vp = ctypes.c_void_p
_cp = ctypes.c_char_p
_sz = ctypes.c_size_t
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_out = _p(ctypes.c_void_p)  # `T **out` and `char **out`

#: name -> (restype, argtypes), in the order of the header.
PROTOTYPES = {
    "amlmil_version": (_cp, []),
    "amlmil_abi_version": (_u32, []),
    "amlmil_cuda_device_count": (_u32, []),
    "amlmil_runtime_info": (c_status, [_out]),
    "amlmil_string_free": (None, [_vp]),
    "amlmil_bag_new": (c_status, [_out]),
    "amlmil_bag_free": (None, [_vp]),
    "amlmil_bag_len": (c_status, [_vp, _p(_sz)]),
    "amlmil_bag_clear": (c_status, [_vp]),
    "amlmil_bag_add_pixels": (c_status, [_vp, _u64, _vp, _sz, _u32, _u32, _sz, _u32]),
    "amlmil_bag_add_encoded": (c_status, [_vp, _u64, _vp, _sz]),
    "amlmil_bag_add_file": (c_status, [_vp, _u64, _cp]),
    "amlmil_bag_stream": (c_status, [_vp, _vp]),
    "amlmil_synth_cohort": (c_status, [_cp, _cp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_dataset_check": (c_status, [_cp, _u32, _u32, _out]),
    "amlmil_import": (c_status, [_cp, _cp, _cp, _out]),
    "amlmil_set_log_callback": (c_status, [LOG_CALLBACK, _vp, _u32]),
    "amlmil_pretrain": (c_status, [_cp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_result_free": (None, [_vp]),
    "amlmil_result_num_classes": (_sz, [_vp]),
    "amlmil_result_num_cells": (_sz, [_vp]),
    "amlmil_result_class_name": (_cp, [_vp, _sz]),
    "amlmil_result_predicted_class": (c_status, [_vp, _p(_sz)]),
    "amlmil_result_probabilities": (c_status, [_vp, _vp, _sz]),
    "amlmil_result_logits": (c_status, [_vp, _vp, _sz]),
    "amlmil_result_cell_ids": (c_status, [_vp, _vp, _sz]),
    "amlmil_result_attention": (c_status, [_vp, _sz, _u32, _vp, _sz]),
    "amlmil_result_top_cells": (c_status, [_vp, _sz, _sz, _p(RankedCellC), _sz, _p(_sz)]),
    "amlmil_result_to_json": (c_status, [_vp, _out]),
    "amlmil_session_options_init": (c_status, [_p(SessionOptionsC)]),
    "amlmil_session_options_init_sized": (c_status, [_p(SessionOptionsC), _sz]),
    "amlmil_session_new": (c_status, [_cp, _cp, _p(SessionOptionsC), _out]),
    "amlmil_session_cancel": (None, [_vp]),
    "amlmil_session_free": (None, [_vp]),
    "amlmil_session_feature_dim": (_sz, [_vp]),
    "amlmil_session_feature_map_len": (_sz, [_vp]),
    "amlmil_session_info": (c_status, [_vp, _out]),
    "amlmil_session_classify": (c_status, [_vp, _vp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_session_classify_features": (c_status, [_vp, _vp, _sz, _sz, _vp, _out]),
    "amlmil_session_embed": (c_status, [_vp, _vp, PROGRESS_CALLBACK, _vp, _vp, _sz]),
    "amlmil_session_feature_maps": (c_status, [_vp, _vp, PROGRESS_CALLBACK, _vp, _vp, _sz]),
    "amlmil_session_model_info": (c_status, [_vp, _p(ModelInfoC), _sz]),
    "amlmil_session_class_name": (_cp, [_vp, _sz]),
    "amlmil_training_cancel": (_u32, []),
    "amlmil_last_error": (_cp, []),
    "amlmil_status_name": (_cp, [_u32]),
    "amlmil_cross_validate": (c_status, [_cp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_train_mil": (c_status, [_cp, _u32, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_extract_features": (c_status, [_cp, _cp, _cp, _u32, _cp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_experiment": (c_status, [_cp, PROGRESS_CALLBACK, _vp, _out]),
    "amlmil_ensemble": (c_status, [_cp, _out]),
    "amlmil_result_to_html": (c_status, [_vp, _vp, _vp, _cp, _u32, _out]),
}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None


def candidates() -> List[Tuple[str, str]]:
    """Where the library is looked for, in order: ``(how, name or path)``."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        # An explicit choice is never silently replaced by another library.
        return [(f"${LIBRARY_ENV}", env)]
    out: List[Tuple[str, str]] = []
    here = Path(__file__).resolve().parent
    beside = sorted(here.glob("libamlmil.so*"), key=lambda p: (len(p.name), p.name))
    if beside:
        out.extend(("next to the package", str(p)) for p in beside)
    else:
        out.append(("next to the package", str(here / "libamlmil.so*")))
    found = ctypes.util.find_library("amlmil")
    if found:
        out.append(("ctypes.util.find_library('amlmil')", found))
    out.append(("system loader", "libamlmil.so.1"))
    out.append(("system loader", "libamlmil.so"))
    return out


def _verify_abi(cdll: ctypes.CDLL, path: str, expected: int = ABI_VERSION) -> None:
    fn = cdll.amlmil_abi_version
    fn.restype, fn.argtypes = ctypes.c_uint32, []
    found = int(fn())
    if found != expected:
        raise AbiMismatchError(
            f"{path} has ABI version {found}, but these Python bindings were written for "
            f"ABI version {expected} (include/amlmil.h's AMLMIL_ABI_VERSION); install the "
            f"bindings that came with that library, or point ${LIBRARY_ENV} at a matching libamlmil.so"
        )


def _declare(cdll: ctypes.CDLL, path: str) -> None:
    missing = []
    for name, (restype, argtypes) in PROTOTYPES.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            missing.append(name)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise AbiMismatchError(f"{path} does not export {', '.join(missing)}")


def load(path: str) -> ctypes.CDLL:
    """Opens one library file, checks its ABI version and declares every
    prototype. Raises :class:`OSError` when it cannot be opened."""
    cdll = ctypes.CDLL(path)
    _verify_abi(cdll, path)
    _declare(cdll, path)
    return cdll


def _preload_torch() -> bool:
    """Opens the installed torch package's libc10/libtorch libraries by path
    (without importing torch), so a bundled libamlmil.so whose RUNPATH does not
    reach them (torch in another site-packages directory, e.g. a venv over a
    system torch) finds them loaded. Returns whether any was found."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    found = False
    # Dependencies first: each is then found among the loaded libraries.
    for name in ("libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so"):
        path = lib_dir / name
        if path.exists():
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return False
            found = True
    return found


def lib() -> ctypes.CDLL:
    """The loaded library (loaded on the first call)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for how, name in candidates():
            if "*" in name:
                tried.append(f"  {how}: {name}: no such file")
                continue
            try:
                cdll = load(name)
            except OSError as e:
                # The wheel's library finds libtorch through its RUNPATH
                # ($ORIGIN/../torch/lib) when torch sits beside the package;
                # torch elsewhere on sys.path is loaded by path first.
                if how != "next to the package" or not _preload_torch():
                    hint = ""
                    if how == "next to the package" and ("libtorch" in str(e) or "libc10" in str(e)):
                        hint = " (the bundled library needs the torch package it was built with: `pip show amlmil` lists it)"
                    tried.append(f"  {how}: {name}: {e}{hint}")
                    continue
                try:
                    cdll = load(name)
                except OSError as e2:
                    tried.append(f"  {how}: {name}: {e2} (after loading torch's libraries)")
                    continue
            _lib_path = name
            _lib = cdll
            return cdll
        raise LibraryNotFoundError(
            "cannot load libamlmil.so; tried:\n" + "\n".join(tried) + "\n"
            f"set ${LIBRARY_ENV} to the library's path (e.g. target/debug/libamlmil.so after "
            "`cargo build`), copy it next to the installed package, or put it on the system "
            "loader's path (LD_LIBRARY_PATH, ldconfig)"
        )


def library_path() -> str:
    """The file or name the library was loaded from (loads it if needed)."""
    lib()
    assert _lib_path is not None
    return _lib_path


def last_error() -> str:
    raw = lib().amlmil_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def status_name(status: int) -> str:
    raw = lib().amlmil_status_name(int(status))
    return raw.decode("utf-8", "replace") if raw else f"status {status}"


def error(status: int, function: str) -> AmlmilError:
    """The exception for a failed call; must run on the failing call's thread
    before any other ``amlmil_*`` call there."""
    message = last_error()
    cls = Cancelled if status == Status.CANCELLED else AmlmilError
    return cls(status, status_name(status), message, function)


def check(status: int, function: str) -> None:
    if status != Status.OK:
        raise error(status, function)


def take_string(ptr: ctypes.c_void_p) -> str:
    """Copies a library-owned ``char *`` and frees it."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace")
    finally:
        lib().amlmil_string_free(ptr.value)


def options_defaults() -> SessionOptionsC:
    """``amlmil_session_options_init_sized``'s defaults for a struct of our size
    (the library writes no more than that and sets ``struct_size`` to what it
    wrote, so an older library leaves our newer fields zero and ignores them)."""
    ours = SessionOptionsC()
    check(lib().amlmil_session_options_init_sized(ctypes.byref(ours), ctypes.sizeof(ours)), "amlmil_session_options_init_sized")
    return ours
