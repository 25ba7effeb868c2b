"""The peers a user would pick instead of libamlmil, on the same weights and
inputs: PyTorch eager (torchvision ResNet trunk, inference mode) in NCHW and
channels-last layouts, TorchScript frozen with ``optimize_for_inference``, and
ONNX Runtime (CPU) on the encoder ``amlmil export --format onnx`` wrote; at
bf16, PyTorch eager under autocast and with bf16 weights (channels-last) and
TorchScript frozen in bf16; ONNX Runtime int8 (static QDQ quantisation,
per-channel weights, calibrated on 64 normalised inputs). Every peer takes the
same f32 input batch, so a conversion to bf16 is part of its time, as it is of
libamlmil's.

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


def ort_session(path, threads):
    """An ONNX Runtime CPU session with every graph optimisation, `threads` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("encoder")
    p.add_argument("onnx")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--only", default="eager,channels_last,torchscript,onnxruntime,"
                   "eager_bf16_autocast,eager_bf16,torchscript_bf16,onnxruntime_int8")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    trunk = load_encoder(a.encoder)
    arch, size = trunk.manifest["architecture"], trunk.manifest["input_size"]
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, size, size)
    results = []

    def emit(peer, cells_per_s, precision="fp32"):
        line = {"impl": peer, "precision": precision, "arch": arch, "size": size, "batch": a.batch, "threads": a.threads,
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
        cl_x = x.contiguous(memory_format=torch.channels_last)
        if "eager_bf16_autocast" in only:
            cl = load_encoder(a.encoder).to(memory_format=torch.channels_last)

            def autocast(v):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return cl(v)
            emit("pytorch_eager_bf16_autocast", rate(autocast, cl_x, a.batch, a.seconds), "bf16")
        if "eager_bf16" in only:
            b16 = load_encoder(a.encoder).to(torch.bfloat16).to(memory_format=torch.channels_last)
            emit("pytorch_eager_bf16", rate(lambda v: b16(v.to(torch.bfloat16)), cl_x, a.batch, a.seconds), "bf16")
    if "torchscript_bf16" in only:
        with torch.no_grad():
            b16 = load_encoder(a.encoder).eval().to(torch.bfloat16).to(memory_format=torch.channels_last)
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(b16)))
            cl_x = x.contiguous(memory_format=torch.channels_last)
            emit("torchscript_frozen_optimized_bf16",
                 rate(lambda v: scripted(v.to(torch.bfloat16)), cl_x, a.batch, a.seconds), "bf16")
    if "torchscript" in only:
        with torch.no_grad():
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(load_encoder(a.encoder).eval())))
            emit("torchscript_frozen_optimized", rate(scripted, x, a.batch, a.seconds))
    if "onnxruntime" in only:
        sess = ort_session(a.onnx, a.threads)
        xn = x.numpy().astype(np.float32)
        emit("onnxruntime", rate(lambda v: sess.run(None, {"pixels": v}), xn, a.batch, a.seconds))
    if "onnxruntime_int8" in only:
        sess = ort_session(quantized(a.onnx, size), a.threads)
        xn = x.numpy().astype(np.float32)
        emit("onnxruntime_int8", rate(lambda v: sess.run(None, {"pixels": v}), xn, a.batch, a.seconds), "int8")


def quantized(onnx_path, size):
    """The exported model statically quantised to int8, calibrated on 64
    normal-distributed inputs, cached beside it."""
    out = onnx_path.replace(".onnx", ".int8.onnx")
    if not os.path.exists(out):
        g = np.random.default_rng(0)
        quantize(onnx_path, out, (g.standard_normal((8, 3, size, size)).astype(np.float32) for _ in range(8)))
    return out


def quantize(onnx_path, out, batches):
    """Static QDQ quantisation of ``onnx_path`` to int8 (per-channel weights,
    uint8 activations) calibrated on ``batches`` of normalised input, written
    to ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    pre = out.replace(".onnx", ".pre.onnx")
    quant_pre_process(onnx_path, pre, skip_symbolic_shape=True)
    quantize_static(pre, out + ".tmp", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
