"""The peers a user would pick instead of libamlmil for a DINOv2-layout ViT, on
the same weights and inputs: timm's `vit_*_patch14_dinov2` (what DinoBloom's
users run) in PyTorch eager (inference mode) at fp32, under bf16 autocast and
with bf16 weights; TorchScript (traced, frozen, ``optimize_for_inference``) at
fp32 and bf16; ONNX Runtime (CPU, all graph optimisations) on the model
``amlmil export --format onnx`` wrote. Every peer takes the same f32 batch.

    python benches/vit_peers.py ENCODER.safetensors ENCODER.onnx --threads 2 --batch 16 --seconds 8 --only eager

One JSON line per peer: cells/s (normalised pixels -> class token), batch,
threads and the process's peak resident memory.
"""
import argparse
import json
import os
import resource
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
from amlmil.models import read_checkpoint  # noqa: E402
from peers import ort_session, rate  # noqa: E402

TIMM = {"vit_s14": "vit_small_patch14_dinov2", "vit_b14": "vit_base_patch14_dinov2",
        "vit_l14": "vit_large_patch14_dinov2", "vit_g14": "vit_giant_patch14_dinov2"}


def timm_model(path, dtype=torch.float32):
    import timm

    manifest, tensors = read_checkpoint(path)
    vit = manifest["vit"]
    if vit["registers"] or vit["ffn"] != "mlp" or not vit["class_pos"]:
        raise SystemExit("vit_peers.py times ViTs without registers or SwiGLU (timm's names = ours)")
    m = timm.create_model(TIMM[manifest["architecture"]], pretrained=False, num_classes=0,
                          img_size=manifest["input_size"], depth=vit["depth"])
    m.load_state_dict(tensors, strict=True)
    return manifest, m.eval().to(dtype)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("encoder")
    p.add_argument("onnx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--only", default="eager,eager_bf16_autocast,eager_bf16,torchscript,torchscript_bf16,onnxruntime")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    manifest, m = timm_model(a.encoder)
    arch, size = manifest["architecture"], manifest["input_size"]
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, size, size)

    def emit(peer, cells_per_s, precision="fp32"):
        line = {"impl": peer, "precision": precision, "arch": arch, "size": size, "batch": a.batch,
                "threads": a.threads, "cells_per_s": round(cells_per_s, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        print(json.dumps(line), flush=True)

    only = a.only.split(",")
    with torch.inference_mode():
        if "eager" in only:
            emit("timm_eager", rate(m, x, a.batch, a.seconds))
        if "eager_bf16_autocast" in only:
            def autocast(v):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return m(v)
            emit("timm_eager_bf16_autocast", rate(autocast, x, a.batch, a.seconds), "bf16")
        if "eager_bf16" in only:
            b16 = timm_model(a.encoder, torch.bfloat16)[1]
            emit("timm_eager_bf16", rate(lambda v: b16(v.to(torch.bfloat16)), x, a.batch, a.seconds), "bf16")
    for name, dtype, precision in (("torchscript", torch.float32, "fp32"),
                                   ("torchscript_bf16", torch.bfloat16, "bf16")):
        if name in only:
            with torch.no_grad():
                mod = timm_model(a.encoder, dtype)[1]
                traced = torch.jit.trace(mod, x[:2].to(dtype))
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                emit(f"torchscript_frozen_optimized{'_bf16' if dtype == torch.bfloat16 else ''}",
                     rate(lambda v: frozen(v.to(dtype)), x, a.batch, a.seconds), precision)
    if "onnxruntime" in only:
        sess = ort_session(a.onnx, a.threads)
        xn = x.numpy().astype(np.float32)
        emit("onnxruntime", rate(lambda v: sess.run(None, {"pixels": v}), xn, a.batch, a.seconds))


if __name__ == "__main__":
    main()
