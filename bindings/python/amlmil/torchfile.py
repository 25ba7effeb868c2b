"""Reading pickled PyTorch files without running their code.

``torch.load(weights_only=False)`` imports and calls whatever a pickle names, so
a checkpoint from the internet can run arbitrary code. This module uses
PyTorch's weights-only unpickler instead and lets through only what it allows
(tensors, storages, containers). Every other class the file names (an
``nn.Module`` subclass such as SCEMILA's ``AMiL``, ``argparse.Namespace`` in
DINO checkpoints, torch's own layer classes) becomes an inert stand-in that only
records its state, so no constructor, ``__setstate__`` or layer code of the file
runs. :func:`flatten` then walks the result: modules contribute their
parameters and persistent buffers under their ``state_dict`` names, dicts and
lists their items under ``key.`` prefixes.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Dict, Tuple

import torch


class Opaque:
    """Stand-in for a class named by a checkpoint; holds the state it was given."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_amlmil_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(
            s is None or isinstance(s, dict) for s in state
        ):
            merged: Dict[str, Any] = {}
            for part in state:
                merged.update(part or {})
            state = merged
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_amlmil_state"] = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name} (not imported)>"


def _stand_in(qualified: str) -> type:
    name = qualified.rsplit(".", 1)[-1] or "Opaque"
    return type(name, (Opaque,), {"qualified_name": qualified})


class TorchFileError(Exception):
    """A file that is not a readable PyTorch checkpoint."""


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for lines)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")


def load(path: str) -> Any:
    """Unpickles ``path`` with stand-ins for every class the weights-only unpickler refuses."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TorchFileError(f"cannot read {path}: {e.strerror}") from e
    unsafe = []
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if any(n.endswith("/constants.pkl") for n in z.namelist()):
                raise TorchFileError(
                    f"{path} is a TorchScript archive (torch.jit.save); save the model's "
                    "state_dict() with torch.save instead"
                )
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001 - any reader failure means the same here
            raise TorchFileError(f"cannot read {path} as a PyTorch file: {_first_line(e)}") from e
    # Legacy (non-zip) files cannot list their globals up front; the unpickler
    # then refuses any class, which the message below reports.
    stand_ins = [(_stand_in(q), q) for q in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise TorchFileError(f"cannot read {path} as a PyTorch file: {_first_line(e)}") from e


def _is_module_state(d: Dict[str, Any]) -> bool:
    return "_parameters" in d and "_modules" in d


def flatten(obj: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors of ``obj`` under dotted names, and scalar attributes of its modules.

    A module's tensors get its ``state_dict`` names; a dict's items their keys;
    a list's items their indices. Non-tensor leaves are dropped, except the
    public ``bool``/``int``/``float``/``str`` attributes of modules that are not
    torch's own (such as SCEMILA's ``multicolumn``), returned as the second value.
    """
    tensors: Dict[str, torch.Tensor] = {}
    attributes: Dict[str, Any] = {}
    seen: set = set()

    def walk(o: Any, prefix: str) -> None:
        if isinstance(o, torch.Tensor):
            tensors[prefix[:-1]] = o
            return
        if id(o) in seen:
            return
        if isinstance(o, Opaque):
            seen.add(id(o))
            d = o.__dict__
            if _is_module_state(d):
                skip = set(d.get("_non_persistent_buffers_set", ()) or ())
                for k, v in (d.get("_parameters") or {}).items():
                    if isinstance(v, torch.Tensor):
                        tensors[prefix + k] = v
                for k, v in (d.get("_buffers") or {}).items():
                    if isinstance(v, torch.Tensor) and k not in skip:
                        tensors[prefix + k] = v
                for k, v in (d.get("_modules") or {}).items():
                    if v is not None:
                        walk(v, f"{prefix}{k}.")
                if not type(o).qualified_name.startswith("torch."):
                    for k, v in d.items():
                        if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str)):
                            attributes[prefix + k] = v
            else:
                walk({k: v for k, v in d.items() if not k.startswith("_amlmil")}, prefix)
            return
        if isinstance(o, dict):
            seen.add(id(o))
            for k, v in o.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(o, (list, tuple)):
            seen.add(id(o))
            for i, v in enumerate(o):
                walk(v, f"{prefix}{i}.")

    walk(obj, "")
    return tensors, attributes


_KEPT = {torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64}


def to_safetensors(src: str, out: str) -> int:
    """Flattens the PyTorch file ``src`` into the safetensors file ``out``; returns the tensor count.

    Tensors keep their dtype when safetensors and libamlmil read it (f32, f16,
    bf16, f64, i64); other floats become f32 and other integers i64. The file's
    module attributes go into ``__metadata__["amlmil.attributes"]`` as JSON.
    ``out`` is written to a temporary name and renamed.
    """
    from safetensors.torch import save_file

    tensors, attributes = flatten(load(src))
    if not tensors:
        raise TorchFileError(f"{src} holds no tensors")
    plain = {}
    for k, t in tensors.items():
        t = t.detach()
        if t.dtype not in _KEPT:
            t = t.to(torch.float32 if t.is_floating_point() else torch.int64)
        plain[k] = t.contiguous().clone()
    meta = {
        "amlmil.flattened_from": os.path.basename(src),
        "amlmil.attributes": json.dumps(attributes, sort_keys=True),
    }
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        save_file(plain, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(plain)
