"""PyTorch reference of one DINO training step, for tests/ssl_training.rs.

    dino_step.py STATE SETTINGS.json IMAGES_DIR OUT

STATE is one of our pre-training states (``state.safetensors`` after some epochs):
student (``encoder.*``, ``head.*``), teacher (``teacher.encoder.*``,
``teacher.head.*``), the centre ``dino.center`` and AdamW's moments
(``optimizer.exp_avg.<param>``, ``optimizer.exp_avg_sq.<param>``,
``optimizer.step.<param>``). SETTINGS gives the step, the schedules' ends and
the loss's settings. IMAGES_DIR holds the cells (every ``*.tif`` below it); the
batch is all of them and both global views are the whole, unaugmented cell, so
the result does not depend on the order the batch was drawn in.

The step follows DINO's ``train_one_epoch`` (Caron et al. 2021, Algorithm 1 and
the reference training loop as published), written here from that description:

1. teacher (train mode, no gradient) on the global views; student on all views,
   views of one size in one forward pass;
2. loss: mean over pairs (teacher view i, student view j != i) of
   -sum softmax((t_i - c) / tau_t) * log_softmax(s_j / tau_s); then
   c <- m_c c + (1 - m_c) mean(teacher rows);
3. backward; every gradient scaled to norm <= clip (per parameter); the last
   layer's gradients dropped while epoch < freeze epochs;
4. torch.optim.AdamW, weight decay on the parameters that are neither biases
   nor 1-D; lr and weight decay on cosine schedules
   final + (base - final) (1 + cos(pi step / total)) / 2 (lr after a linear
   warm-up from 0);
5. teacher <- lam teacher + (1 - lam) student for every parameter (not the
   batch-norm buffers), lam = 1 + (base - 1) (1 + cos(pi step / total)) / 2.

OUT gets every tensor of the state after the step, under the state's names.
"""
import json
import math
import pathlib
import sys

import torch
import torch.nn as nn
import torchvision
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor
from safetensors.torch import load_file, save_file


class WeightNormLinear(nn.Module):
    """W = g * V / ||V|| row-wise, no bias (torch's weight_norm at dim 0)."""

    def __init__(self, d, k, train_g):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(k, 1), requires_grad=train_g)
        self.weight_v = nn.Parameter(torch.zeros(k, d))

    def forward(self, x):
        return x @ (self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)).T


class DinoHead(nn.Module):
    def __init__(self, s):
        super().__init__()
        h, bn = s["hidden_dim"], s["use_bn_in_head"]
        layers = [nn.Linear(s["in_dim"], h)]
        layers += [nn.BatchNorm1d(h)] if bn else []
        layers += [nn.GELU(), nn.Linear(h, h)]
        layers += [nn.BatchNorm1d(h)] if bn else []
        layers += [nn.GELU(), nn.Linear(h, s["bottleneck_dim"])]
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(s["bottleneck_dim"], s["out_dim"], not s["norm_last_layer"])

    def forward(self, x):
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))


class Student(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.encoder = getattr(torchvision.models, s["architecture"])(weights=None)
        self.encoder.fc = nn.Identity()
        self.head = DinoHead(s)

    def forward(self, views):
        out, i = [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape == views[i].shape:
                j += 1
            out += list(self.head(self.encoder(torch.cat(views[i:j]))).chunk(j - i))
            i = j
        return out


def load(model, state, prefix):
    own = {
        k[len(prefix):]: v for k, v in state.items()
        if k.startswith(prefix + "encoder.") or k.startswith(prefix + "head.")
    }
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    assert not missing and not unexpected, (prefix, missing, unexpected)


def cosine(step, base, final, total, warmup=0, warmup_start=0.0):
    if step < warmup:
        return warmup_start if warmup == 1 else warmup_start + (base - warmup_start) * step / (warmup - 1)
    if total == warmup or step >= total:
        return final
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def images(root, mean, std):
    paths = sorted(pathlib.Path(root).rglob("*.tif"))
    x = torch.stack([pil_to_tensor(Image.open(p).convert("RGB")) for p in paths]).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def main():
    state = load_file(sys.argv[1])
    s = json.loads(pathlib.Path(sys.argv[2]).read_text())
    torch.manual_seed(0)
    student, teacher = Student(s), Student(s)
    load(student, state, "")
    load(teacher, state, "teacher.")
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    teacher.train()
    center = state["dino.center"].clone()

    x = images(sys.argv[3], s["mean"], s["std"])
    views = [x] * s["global_views"]

    step, total, epoch = s["step"], s["total_steps"], s["epoch"]
    lr = cosine(step, s["peak_lr"], s["final_lr"], total, s["warmup_steps"])
    wd = cosine(step, s["weight_decay"], s["weight_decay_end"], total)
    lam = cosine(step, s["teacher_momentum"], 1.0, total)
    if epoch < s["warmup_teacher_temperature_epochs"]:
        n = s["warmup_teacher_temperature_epochs"]
        a, b = s["warmup_teacher_temperature"], s["teacher_temperature"]
        tau_t = a if n == 1 else a + (b - a) * epoch / (n - 1)
    else:
        tau_t = s["teacher_temperature"]

    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not (n.endswith(".bias") or p.ndim == 1)]
    no_decay = [p for n, p in named if n.endswith(".bias") or p.ndim == 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=tuple(s["betas"]), eps=s["eps"], foreach=False,
    )
    for n, p in named:
        if f"optimizer.exp_avg.{n}" in state:
            opt.state[p] = {
                "step": torch.tensor(float(state[f"optimizer.step.{n}"].item())),
                "exp_avg": state[f"optimizer.exp_avg.{n}"].clone(),
                "exp_avg_sq": state[f"optimizer.exp_avg_sq.{n}"].clone(),
            }

    with torch.no_grad():
        t_out = teacher(views[: s["global_views"]])
    s_out = student(views)
    targets = [torch.softmax((t - center) / tau_t, dim=1) for t in t_out]
    terms = [
        -(q * torch.log_softmax(o / s["student_temperature"], dim=1)).sum(dim=1).mean()
        for i, q in enumerate(targets) for j, o in enumerate(s_out) if i != j
    ]
    loss = torch.stack(terms).mean()
    m = s["center_momentum"]
    center = center * m + torch.cat(t_out).mean(dim=0, keepdim=True) * (1 - m)

    opt.zero_grad()
    loss.backward()
    if s["clip_grad"] > 0:
        for _, p in named:
            if p.grad is not None:
                coef = s["clip_grad"] / (p.grad.norm() + 1e-6)
                if coef < 1:
                    p.grad.mul_(coef)
    if epoch < s["freeze_last_layer_epochs"]:
        for n, p in named:
            if "last_layer" in n:
                p.grad = None
    opt.step()
    with torch.no_grad():
        for (n, pt), (_, ps) in zip(teacher.named_parameters(), student.named_parameters()):
            pt.mul_(lam).add_((1 - lam) * ps.detach())

    out = {"loss": loss.detach().double()}
    for prefix, model in (("", student), ("teacher.", teacher)):
        for n, t in model.state_dict().items():
            if not n.endswith("num_batches_tracked"):
                out[prefix + n] = t
    out["dino.center"] = center
    for n, p in named:
        if p in opt.state:
            out[f"optimizer.exp_avg.{n}"] = opt.state[p]["exp_avg"]
            out[f"optimizer.exp_avg_sq.{n}"] = opt.state[p]["exp_avg_sq"]
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[4])


if __name__ == "__main__":
    main()
