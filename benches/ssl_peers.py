"""A peer for the pre-training comparisons of docs/training.md (not a test): lightly 1.6's
SimCLR, SwAV and DINO, pre-trained on the same cells as ``amlmil pretrain`` with
the same budget, and scored with OUR k-NN probe (``amlmil probe``) so the numbers
sit beside the library's.

    /root/.cache/amlmil/venv-torch-2.11.0/bin/python benches/ssl_peers.py \\
        --pretrain-dataset /tmp/ssl/pretrain-cohort --probe-dataset /tmp/ssl/cohort \\
        --out /tmp/ssl/peers --amlmil /tmp/ssl/amlmil-base

(the cohorts are ``amlmil synth --patients-per-class 6 --cells 40..60 --size 64
--annotated 0.1 --seed 1000`` and ``... 8 --cells 30..60 ... --seed 0``, as the
``quick`` experiment makes them; this script generates nothing but its outputs).

What comes from lightly (PyPI ``lightly==1.6.0``): the heads
(``SimCLRProjectionHead``, ``SwaVProjectionHead`` + ``SwaVPrototypes``,
``DINOProjectionHead``), the losses (``NTXentLoss``, ``SwaVLoss``, ``DINOLoss``),
the view transforms (``SimCLRTransform``, ``SwaVTransform``, ``DINOTransform``),
``LARS``, the cosine schedules and ``update_momentum``. The loop is plain
PyTorch. The encoder is torchvision's ``resnet18`` with ``fc`` removed.

Budget and settings: those of our ``quick`` experiment / ``cpu-small`` presets
(src/ssl/config.rs, src/ssl/augment/pipeline.rs, src/experiment/config.rs):
576 steps of batch 32 (1544 cells: 48 steps an epoch, 12 epochs) at 64 px,
ImageNet mean/std, one warm-up epoch (48 steps, linear from 0) then a cosine.

- SimCLR (``cpu_simclr``): two 64 px views, crops 40-100 %; head 512->512
  (ReLU)->64 without batch norm (SimCLR v1, as ours); NT-Xent tau 0.2; LARS
  (trust 0.001, momentum 0.9, wd 1e-6; biases and batch norm excluded from
  decay and adaptation) at base lr 1.2 x 32/256 = 0.15 -> 0.
- SwAV: 2 x 64 px (40-100 %) + 6 x 28 px (5-14 %) crops; head 512->512 (BN,
  ReLU)->128; 30 prototypes renormalised every step, frozen for 20 steps;
  tau 0.1, Sinkhorn eps 0.05, 3 iterations, no queue; LARS as above at
  0.3 x 32/256 = 0.0375 -> 0.0375/1000.
- DINO (our cpu-small departures from the paper): 2 x 64 px (40-100 %) + 8 x
  28 px (5-40 %) crops without colour jitter or greyscale (blur 1.0 / 0.1 /
  0.5, solarisation 0.2 on the second global view); head 512->512->512 (BN,
  GELU)->128 -> weight-normalised 256 outputs, last layer frozen in epoch 0;
  tau_s 0.1, tau_t 0.04 fixed, centre momentum 0.9; teacher EMA 0.98 -> 1
  (cosine); AdamW 0.01 x 32/256 = 1.25e-3 -> 1e-6, wd 0.04 -> 0.4 (cosine,
  biases and batch norm undecayed); per-parameter gradient clipping at 3.
  The teacher's backbone is exported.
- All views: H and V flips p 0.5, rotation by any angle, blur sigma
  0.1-2 px scaled by 64/224 (ours scales sigma with the crop side), SimCLR/SwAV
  colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8 and greyscale p 0.2.

Known differences from the library that this peer keeps (they are lightly's):
lightly's ``LARS`` is LARS without apex's clip (our LARC clips the local rate at
the global one, so at these rates it steps up to ~6x further); torchvision's
``RandomRotation`` fills corners with black and samples nearest-neighbour (ours:
bilinear, border padding); crops are resampled by PIL (DINO: bicubic).

Outputs under ``--out``: ``<method>/backbone.safetensors`` (torchvision names),
``<method>/encoder.safetensors`` (``amlmil import``), ``<method>/probe.json``,
``results.json`` (method, steps, seconds, losses, probe accuracy / macro F1 of
the encoder and the probe's random encoder, RankMe), and a markdown table on
stdout. ``init`` is the untrained torchvision initialisation (0 steps). A run
with ``--methods`` replaces those methods' entries of an existing ``results.json``
and keeps the others'.
"""
import argparse
import copy
import csv
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from lightly.loss import DINOLoss, NTXentLoss, SwaVLoss
from lightly.models.modules import (DINOProjectionHead, SimCLRProjectionHead,
                                    SwaVProjectionHead, SwaVPrototypes)
from lightly.models.utils import (deactivate_requires_grad, get_weight_decay_parameters,
                                  update_momentum)
from lightly.transforms import DINOTransform, SimCLRTransform, SwaVTransform
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

SIZE, LOCAL = 64, 28  # global crop side; local = 96/224 of it, even
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIGMAS = (0.1 * SIZE / 224, 2.0 * SIZE / 224)
CELLS = dict(hf_prob=0.5, vf_prob=0.5, rr_prob=1.0, rr_degrees=180.0, sigmas=SIGMAS,
             normalize={"mean": MEAN, "std": STD})


def load_cells(root, typed_only=False):
    """PIL RGB images of every cell of a data set (ROOT/data/<label>/<patient>/<image>)
    with their cells.csv types, in cells.csv order."""
    with open(os.path.join(root, "metadata.csv")) as f:
        label = {r["patient_id"]: r["bag_label"] for r in csv.DictReader(f)}
    images, types = [], []
    with open(os.path.join(root, "cells.csv")) as f:
        for r in csv.DictReader(f):
            if typed_only and not r["cell_type"]:
                continue
            path = os.path.join(root, "data", label[r["patient_id"]], r["patient_id"], r["image"])
            with Image.open(path) as im:
                images.append(im.convert("RGB").resize((SIZE, SIZE)) if im.size != (SIZE, SIZE)
                              else im.convert("RGB"))
            types.append(r["cell_type"])
    return images, types


def resnet18():
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    return net


def embed(views, fn):
    """`fn` of the views, views of one size batched together (so batch norm sees
    them together, as in the references' multi-crop wrappers and our library)."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        out.extend(fn(torch.cat(views[start:end])).chunk(end - start))
        start = end
    return out


def lars(modules, lr):
    """LARS with biases and batch norm out of weight decay, hence (lightly's rule)
    out of layer adaptation."""
    decay, no_decay = get_weight_decay_parameters(modules)
    return LARS([{"params": decay, "weight_decay": 1e-6, "decayed": True},
                 {"params": no_decay, "weight_decay": 0.0, "decayed": False}],
                lr=lr, momentum=0.9, trust_coefficient=0.001)


class SimCLR(nn.Module):
    base_lr, final_lr = 1.2, 0.0
    transform = SimCLRTransform(input_size=SIZE, min_scale=0.4, **CELLS)

    def __init__(self):
        super().__init__()
        self.backbone = resnet18()
        self.head = SimCLRProjectionHead(512, 512, 64, batch_norm=False)
        self.criterion = NTXentLoss(temperature=0.2)

    def optimizer(self, lr):
        return lars([self.backbone, self.head], lr)

    def loss(self, views, step):
        z0, z1 = embed(views, lambda x: self.head(self.backbone(x)))
        return self.criterion(z0, z1)


class SwAV(nn.Module):
    base_lr = 0.3
    final_lr = 0.3 * 32 / 256 / 1000
    transform = SwaVTransform(crop_sizes=(SIZE, LOCAL), crop_counts=(2, 6),
                              crop_min_scales=(0.4, 0.05), crop_max_scales=(1.0, 0.14), **CELLS)

    def __init__(self):
        super().__init__()
        self.backbone = resnet18()
        self.head = SwaVProjectionHead(512, 512, 128)
        self.prototypes = SwaVPrototypes(128, 30, n_steps_frozen_prototypes=20)
        self.criterion = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)

    def optimizer(self, lr):
        return lars([self.backbone, self.head, self.prototypes], lr)

    def loss(self, views, step):
        self.prototypes.normalize()
        out = embed(views, lambda x: self.prototypes(
            nn.functional.normalize(self.head(self.backbone(x)), dim=1), step))
        return self.criterion(out[:2], out[2:])


class DINO(nn.Module):
    base_lr, final_lr = 0.01, 1e-6
    transform = DINOTransform(global_crop_size=SIZE, global_crop_scale=(0.4, 1.0),
                              local_crop_size=LOCAL, local_crop_scale=(0.05, 0.4), n_local_views=8,
                              cj_prob=0.0, random_gray_scale=0.0, gaussian_blur=(1.0, 0.1, 0.5),
                              solarization_prob=0.2, **CELLS)

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = total_steps
        self.backbone = resnet18()
        head = lambda: DINOProjectionHead(512, 512, 128, 256, batch_norm=True,  # noqa: E731
                                          freeze_last_layer=1)
        self.head, self.teacher_head = head(), head()
        # weight_norm modules cannot be deep-copied: the teacher starts as a state copy.
        self.teacher_head.load_state_dict(self.head.state_dict())
        self.teacher_backbone = copy.deepcopy(self.backbone)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=256, warmup_teacher_temp=0.04, teacher_temp=0.04,
                                  warmup_teacher_temp_epochs=0, student_temp=0.1,
                                  center_momentum=0.9)

    def optimizer(self, lr):
        decay, no_decay = get_weight_decay_parameters([self.backbone, self.head])
        trainable = lambda ps: [p for p in ps if p.requires_grad]  # noqa: E731 (weight_g is fixed)
        return torch.optim.AdamW([{"params": trainable(decay), "decayed": True},
                                  {"params": trainable(no_decay), "weight_decay": 0.0,
                                   "decayed": False}], lr=lr)

    def loss(self, views, step):
        with torch.no_grad():
            teacher = embed(views[:2], lambda x: self.teacher_head(self.teacher_backbone(x)))
        student = embed(views, lambda x: self.head(self.backbone(x)))
        return self.criterion(teacher, student, teacher_temp=0.04)

    def after_backward(self, epoch):
        for p in list(self.backbone.parameters()) + list(self.head.parameters()):
            if p.grad is not None:  # DINO's per-parameter clipping at 3
                norm = p.grad.norm()
                p.grad.mul_(torch.clamp(3.0 / (norm + 1e-6), max=1.0))
        self.head.cancel_last_layer_gradients(epoch)

    def after_step(self, step):
        m = cosine_schedule(step, self.total_steps, 0.98, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)

    def encoder(self):
        return self.teacher_backbone


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pretrain(name, images, args):
    """Trains one method; returns the backbone to export and the run's record."""
    seed_everything(args.seed)
    steps_per_epoch = len(images) // args.batch_size
    warmup = min(steps_per_epoch, args.steps)  # one epoch, as cpu-small's warmup_epochs = 1
    model = {"simclr": SimCLR, "swav": SwAV}.get(name, lambda: DINO(args.steps))()
    model.train()
    peak = model.base_lr * args.batch_size / 256
    opt = model.optimizer(peak)
    wd = (lambda s: cosine_schedule(s, args.steps, 0.04, 0.4)) if name == "dino" else (lambda s: 1e-6)
    losses, start, order = [], time.perf_counter(), []
    for step in range(args.steps):
        epoch = step // steps_per_epoch
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(images)).tolist()
        idx = order[(step % steps_per_epoch) * args.batch_size:][:args.batch_size]
        per_image = [model.transform(images[i]) for i in idx]
        views = [torch.stack(v) for v in zip(*per_image)]
        lr = cosine_warmup_schedule(step, args.steps, peak, model.final_lr, warmup, 0.0)
        for group in opt.param_groups:
            group["lr"] = lr
            if group["decayed"]:
                group["weight_decay"] = wd(step)
        loss = model.loss(views, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hasattr(model, "after_backward"):
            model.after_backward(epoch)
        opt.step()
        if hasattr(model, "after_step"):
            model.after_step(step)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"{name}: loss {losses[-1]} at step {step}")
        if step % 24 == 0 or step == args.steps - 1:
            print(f"[{name}] step {step}/{args.steps} loss {losses[-1]:.4f} lr {lr:.3g} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    backbone = model.encoder() if hasattr(model, "encoder") else model.backbone
    return backbone, {
        "steps": args.steps, "seconds": round(seconds, 1),
        "loss_first30": float(np.mean(losses[:30])), "loss_last30": float(np.mean(losses[-30:])),
        "loss_final": losses[-1],
    }


@torch.no_grad()
def pooled_features(backbone, images):
    backbone.eval()
    norm = torchvision.transforms.Normalize(MEAN, STD)
    to_tensor = torchvision.transforms.functional.to_tensor
    x = torch.stack([norm(to_tensor(im)) for im in images])
    return torch.cat([backbone(x[i:i + 100]) for i in range(0, len(x), 100)])


def rankme(features, eps=1e-7):
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def export_and_probe(backbone, folder, args):
    """Writes the torchvision-named backbone, converts it with `amlmil import` and
    returns the JSON of `amlmil probe` on the probe data set."""
    os.makedirs(folder, exist_ok=True)
    src = os.path.join(folder, "backbone.safetensors")
    enc = os.path.join(folder, "encoder.safetensors")
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, src)
    stats = lambda v: ",".join(str(x) for x in v)  # noqa: E731
    subprocess.run([args.amlmil, "import", src, "--out", enc, "--source", "torchvision",
                    "--input-size", str(SIZE), "--mean", stats(MEAN), "--std", stats(STD)],
                   check=True, stdout=subprocess.DEVNULL)
    probe = subprocess.run([args.amlmil, "probe", "--encoder", enc, "--dataset",
                            args.probe_dataset, "--max-cells", str(args.max_cells)],
                           check=True, capture_output=True, text=True)
    report = json.loads(probe.stdout)
    with open(os.path.join(folder, "probe.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def table(results):
    lines = ["| method | steps | seconds | loss first 30 → last 30 | k-NN acc / macro F1 "
             "| random acc / macro F1 | RankMe |", "|---|---|---|---|---|---|---|"]
    for r in results:
        loss = (f"{r['loss_first30']:.3f} → {r['loss_last30']:.3f}" if r["steps"] else "–")
        lines.append(f"| {r['method']} | {r['steps']} | {r['seconds']} | {loss} "
                     f"| {r['accuracy']:.3f} / {r['macro_f1']:.3f} "
                     f"| {r['random_accuracy']:.3f} / {r['random_macro_f1']:.3f} | {r['rankme']:.1f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrain-dataset", required=True)
    p.add_argument("--probe-dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=576)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--methods", default="init,simclr,swav,dino",
                   help="comma-separated: init (untrained torchvision weights), simclr, swav, dino")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-cells", type=int, default=600, help="cells of the k-NN probe")
    p.add_argument("--amlmil", default="amlmil", help="the amlmil CLI")
    args = p.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    images, _ = load_cells(args.pretrain_dataset)
    probe_images, _ = load_cells(args.probe_dataset, typed_only=True)
    # RankMe on a seeded subset of the probe's size (not the probe's own ChaCha subset).
    pick = np.random.default_rng(args.seed).permutation(len(probe_images))[:args.max_cells]
    probe_images = [probe_images[i] for i in sorted(pick)]
    print(f"{len(images)} pre-training cells, {len(probe_images)} probe cells for RankMe",
          flush=True)
    results_path = os.path.join(args.out, "results.json")
    methods = args.methods.split(",")
    if set(methods) - {"init", "simclr", "swav", "dino"}:
        sys.exit(f"unknown method in {args.methods!r} (init, simclr, swav, dino)")
    results = []
    if os.path.exists(results_path):  # keep the other methods' earlier results
        with open(results_path) as f:
            results = [r for r in json.load(f)["results"] if r["method"] not in methods]
    for name in methods:
        if name == "init":
            seed_everything(args.seed)
            backbone = resnet18()
            record = {"steps": 0, "seconds": 0.0, "loss_first30": None, "loss_last30": None,
                      "loss_final": None}
        else:
            backbone, record = pretrain(name, images, args)
        report = export_and_probe(backbone, os.path.join(args.out, name), args)
        results.append({
            "method": name, **record,
            "accuracy": report["encoder"]["accuracy"], "macro_f1": report["encoder"]["macro_f1"],
            "random_accuracy": report["random"]["accuracy"],
            "random_macro_f1": report["random"]["macro_f1"],
            "embedding_std": report["embedding_std"],
            "rankme": rankme(pooled_features(backbone, probe_images)),
            "probe_cells": report["encoder"]["queries"],
        })
        print(json.dumps(results[-1]), flush=True)
        results.sort(key=lambda r: ["init", "simclr", "swav", "dino"].index(r["method"]))
        with open(results_path, "w") as f:  # rewritten after each method: partial runs keep theirs
            json.dump({"lightly": "1.6.0", "torch": torch.__version__, "seed": args.seed,
                       "batch_size": args.batch_size, "results": results}, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
