"""PyTorch references for tests/ssl_losses.rs, written from the papers' formulas.

    ssl_losses.py INPUTS OUT [MODE]

INPUTS is a safetensors file of input tensors whose names start with the case
they belong to (``simclr.z1``, ``swav.scores.0``, ``dino.student.0``, …; scalar
settings are 0-d float64 tensors such as ``simclr.temperature``). MODE is one of
``simclr``, ``sinkhorn``, ``swav``, ``dino`` or ``all`` (default): every case
whose inputs are present is computed in float64 and its outputs are written to
OUT (safetensors, float64) under the same prefix.

- NT-Xent (Chen et al. 2020, Eq. 1): l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)
  over the 2N L2-normalised projections, averaged over the 2N anchors.
- SwAV (Caron et al. 2020, Eq. 1-3 and appendix A.1): Sinkhorn-Knopp on
  Q = exp(scores/eps)^T, rows to 1/K, columns to 1/B, codes B*Q^T; swapped
  prediction -sum_k q log softmax(scores/t) averaged over the other crops and
  over the assignment crops; an optional queue's scores are prepended before
  Sinkhorn and only the batch rows kept.
- DINO (Caron et al. 2021, Algorithm 1): H(softmax((t - c)/tau_t), log_softmax(s/tau_s))
  over pairs (teacher global crop i, student crop j != i), averaged over pairs;
  tau_t from linspace(warm-up start, final, warm-up epochs) then constant;
  centre c <- m c + (1 - m) mean(teacher rows).
"""
import sys

import torch
from safetensors.torch import load_file, save_file


def scalar(inputs, name):
    return float(inputs[name].item())


def crops(inputs, prefix):
    out, v = [], 0
    while f"{prefix}.{v}" in inputs:
        out.append(inputs[f"{prefix}.{v}"].double())
        v += 1
    return out


def nt_xent(z1, z2, t):
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    s = z @ z.T / t
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = torch.cat([s[i, :i], s[i, i + 1:]])
        losses.append(torch.logsumexp(others, 0) - s[i, partner])
    return torch.stack(losses).mean()


def simclr(inputs, out):
    z1 = inputs["simclr.z1"].double().requires_grad_(True)
    z2 = inputs["simclr.z2"].double()
    loss = nt_xent(z1, z2, scalar(inputs, "simclr.temperature"))
    loss.backward()
    out["simclr.loss"] = loss.detach()
    out["simclr.grad_z1"] = z1.grad


def sinkhorn_knopp(scores, eps, iterations):
    q = torch.exp(scores / eps).T  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k  # each prototype: 1/K
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample: 1/B
    return (q * b).T


def sinkhorn(inputs, out):
    out["sinkhorn.codes"] = sinkhorn_knopp(
        inputs["sinkhorn.scores"].double(),
        scalar(inputs, "sinkhorn.epsilon"),
        int(scalar(inputs, "sinkhorn.iterations")),
    )


def swapped_prediction(scores, assign, t, eps, iterations, queues=None):
    b = scores[0].shape[0]
    total = 0.0
    for i, a in enumerate(assign):
        with torch.no_grad():
            s = scores[a].detach()
            if queues is not None:
                s = torch.cat([queues[i], s])
            q = sinkhorn_knopp(s, eps, iterations)[-b:]
        others = [v for v in range(len(scores)) if v != a]
        sub = sum(-(q * torch.log_softmax(scores[v] / t, dim=1)).sum(dim=1).mean() for v in others)
        total = total + sub / len(others)
    return total / len(assign)


def swav(inputs, out):
    scores = [s.requires_grad_(True) for s in crops(inputs, "swav.scores")]
    assign = [int(a) for a in inputs["swav.assignment_crops"].tolist()]
    t = scalar(inputs, "swav.temperature")
    eps = scalar(inputs, "swav.epsilon")
    its = int(scalar(inputs, "swav.iterations"))
    loss = swapped_prediction(scores, assign, t, eps, its)
    loss.backward()
    out["swav.loss"] = loss.detach()
    out["swav.grad_scores_2"] = scores[2].grad
    queues = crops(inputs, "swav.queue")
    if queues:
        out["swav.loss_queue"] = swapped_prediction(
            [s.detach() for s in scores], assign, t, eps, its, queues)


def teacher_temperature(start, final, warmup_epochs, epoch):
    schedule = torch.cat([
        torch.linspace(start, final, warmup_epochs, dtype=torch.float64),
        torch.full((epoch + 1,), final, dtype=torch.float64),
    ])
    return float(schedule[epoch])


def dino(inputs, out):
    student = [s.requires_grad_(True) for s in crops(inputs, "dino.student")]
    teacher = crops(inputs, "dino.teacher")
    center = inputs["dino.center"].double()
    tau_s = scalar(inputs, "dino.student_temperature")
    tau_t = teacher_temperature(
        scalar(inputs, "dino.warmup_teacher_temperature"),
        scalar(inputs, "dino.teacher_temperature"),
        int(scalar(inputs, "dino.warmup_epochs")),
        int(scalar(inputs, "dino.epoch")),
    )
    m = scalar(inputs, "dino.center_momentum")
    targets = [torch.softmax((t - center) / tau_t, dim=1) for t in teacher]
    terms = []
    for i, q in enumerate(targets):
        for j, s in enumerate(student):
            if i != j:
                terms.append(-(q * torch.log_softmax(s / tau_s, dim=1)).sum(dim=1).mean())
    loss = torch.stack(terms).mean()
    loss.backward()
    all_teacher = torch.cat(teacher)
    out["dino.loss"] = loss.detach()
    out["dino.grad_student_3"] = student[3].grad
    out["dino.teacher_temperature"] = torch.tensor(tau_t, dtype=torch.float64)
    out["dino.center"] = center * m + all_teacher.mean(dim=0, keepdim=True) * (1 - m)


CASES = {"simclr": simclr, "sinkhorn": sinkhorn, "swav": swav, "dino": dino}


def main():
    inputs = load_file(sys.argv[1])
    mode = sys.argv[3] if len(sys.argv) > 3 else "all"
    if mode != "all" and mode not in CASES:
        sys.exit(f"unknown mode {mode!r}; expected one of {sorted(CASES)} or 'all'")
    out = {}
    for name, case in CASES.items():
        if mode in ("all", name) and any(k.startswith(name + ".") for k in inputs):
            case(inputs, out)
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])


if __name__ == "__main__":
    main()
