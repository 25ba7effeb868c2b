"""The peers a user would pick instead of libamlmil, on the same weights and
inputs: PyTorch eager (torchvision ResNet trunk, inference mode) in NCHW and
channels-last layouts, TorchScript frozen with ``optimize_for_inference``, and
ONNX Runtime (CPU) on the encoder ``amlmil export --format onnx`` wrote.

    python benches/peers.py ENCODER.safetensors ENCODER.onnx --threads 2 --batch 32 --seconds 10

One JSON line per peer: cells/s of the encoder (normalised pixels -> feature
map), the batch, threads and the process's peak resident memory so far.
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
from amlmil.models import load_encoder  # noqa: E402


def rate(run, x, batch, seconds):
    run(x)  # warm-up: primitive creation, allocator
    run(x)
    n, start = 0, time.perf_counter()
    while True:
        run(x)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return batch * n / elapsed


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("encoder")
    p.add_argument("onnx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--only", default="eager,channels_last,torchscript,onnxruntime")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    trunk = load_encoder(a.encoder)
    arch, size = trunk.manifest["architecture"], trunk.manifest["input_size"]
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, size, size)
    results = []

    def emit(peer, cells_per_s):
        line = {"impl": peer, "arch": arch, "size": size, "batch": a.batch, "threads": a.threads,
                "cells_per_s": round(cells_per_s, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
        results.append(line)
        print(json.dumps(line), flush=True)

    only = a.only.split(",")
    with torch.inference_mode():
        if "eager" in only:
            emit("pytorch_eager", rate(trunk, x, a.batch, a.seconds))
        if "channels_last" in only:
            cl = load_encoder(a.encoder).to(memory_format=torch.channels_last)
            emit("pytorch_eager_channels_last",
                 rate(cl, x.contiguous(memory_format=torch.channels_last), a.batch, a.seconds))
    if "torchscript" in only:
        with torch.no_grad():
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(load_encoder(a.encoder).eval())))
            emit("torchscript_frozen_optimized", rate(scripted, x, a.batch, a.seconds))
    if "onnxruntime" in only:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        xn = x.numpy().astype(np.float32)
        emit("onnxruntime", rate(lambda v: sess.run(None, {"pixels": v}), xn, a.batch, a.seconds))


if __name__ == "__main__":
    main()
