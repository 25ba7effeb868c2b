"""Command line of the Python side, called by ``amlmil import`` / ``amlmil export``.

    python -m amlmil.tool flatten SRC OUT.safetensors   # pickled PyTorch file -> flat safetensors
    python -m amlmil.tool to-pth CKPT.safetensors OUT.pth
    python -m amlmil.tool onnx ENCODER.safetensors OUT.onnx [--opset 18]

Errors are one line on stderr starting with ``amlmil.tool:``; the exit status is
2 for bad input, 3 for a missing Python package. Outputs are written to a
temporary name and renamed, so a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable


def _atomic(out: str, write: Callable[[str], None]) -> None:
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def flatten(args: argparse.Namespace) -> None:
    from .torchfile import to_safetensors

    n = to_safetensors(args.src, args.out)
    print(json.dumps({"tensors": n}))


def to_pth(args: argparse.Namespace) -> None:
    import torch

    from .models import read_checkpoint

    manifest, tensors = read_checkpoint(args.src)
    _atomic(args.out, lambda tmp: torch.save(tensors, tmp))
    print(json.dumps({"tensors": len(tensors), "kind": manifest.get("kind")}))


def onnx(args: argparse.Namespace) -> None:
    import torch

    from .models import load_encoder

    trunk = load_encoder(args.src)
    size = int(trunk.manifest["input_size"])
    x = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)

    def write(tmp: str) -> None:
        program = torch.onnx.export(
            trunk,
            (x,),
            input_names=["pixels"],
            output_names=["feature_map"],
            dynamic_shapes=({0: batch},),
            opset_version=args.opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(tmp)

    _atomic(args.out, write)
    print(json.dumps({"input": [None, 3, size, size], "output": "feature_map", "opset": args.opset}))


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m amlmil.tool", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flatten", help="pickled PyTorch file -> safetensors with dotted names")
    f.add_argument("src")
    f.add_argument("out")
    f.set_defaults(run=flatten)
    t = sub.add_parser("to-pth", help="libamlmil checkpoint -> torch.save'd state dict")
    t.add_argument("src")
    t.add_argument("out")
    t.set_defaults(run=to_pth)
    o = sub.add_parser("onnx", help="libamlmil encoder -> ONNX model (pixels [N,3,S,S] -> feature_map)")
    o.add_argument("src")
    o.add_argument("out")
    o.add_argument("--opset", type=int, default=18)
    o.set_defaults(run=onnx)
    args = p.parse_args(argv)
    try:
        args.run(args)
    except ModuleNotFoundError as e:
        print(f"amlmil.tool: this needs the Python package `{e.name}` (pip install it, or run scripts/setup-env.sh)", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 - reported as one line for the Rust caller
        text = str(e).strip().splitlines()
        print(f"amlmil.tool: {text[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
