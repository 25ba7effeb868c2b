"""PyTorch eager reference for `amlmil bench`: torchvision ResNet trunk forward
throughput (cells/s) in inference mode, NCHW and channels_last, same shapes.

    python benches/pytorch_throughput.py --arch resnet18 --size 144 --batch-size 32 --iterations 5
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--arch", default="resnet18")
p.add_argument("--size", type=int, default=144)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--iterations", type=int, default=5)
a = p.parse_args()

model = getattr(torchvision.models, a.arch)(weights=None)
trunk = nn.Sequential(*list(model.children())[:-2]).eval()
x = torch.rand(a.batch_size, 3, a.size, a.size)
for layout in ["nchw", "channels_last"]:
    m, inp = trunk, x
    if layout == "channels_last":
        m = trunk.to(memory_format=torch.channels_last)
        inp = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        m(inp)
        start = time.perf_counter()
        for _ in range(a.iterations):
            m(inp)
        secs = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "arch": a.arch, "size": a.size, "batch": a.batch_size, "device": "cpu",
                      "layout": layout, "threads": torch.get_num_threads(),
                      "cells_per_s": round(a.batch_size * a.iterations / secs, 1)}))
