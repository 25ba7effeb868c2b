"""The GPU check's driver: scripts/gpu-check.sh runs it from a bundle
(scripts/gpu-bundle.sh) with libtorch on LD_LIBRARY_PATH, the bindings on
PYTHONPATH and AMLMIL_LIBRARY set. See gpu-check.sh for the sections.

Every section runs under a deadline (its share of --budget-s plus what earlier
sections left) and writes its part of results.json as soon as it has measured
something, so a run cut short still returns what it measured. Long steps run in
child processes (the CLI, or this file's `call` and `peers` modes) that are
killed at the deadline. Only the standard library, numpy (the bindings) and,
for the PyTorch peers and GPU memory, torch are needed.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

SECTIONS = ["info", "training", "parity", "speed", "experiment"]
# Shares of the budget; a section's unused time passes to the next.
SHARES = {"info": 0.05, "training": 0.17, "parity": 0.08, "speed": 0.22, "experiment": 0.48}
# A measurement is skipped (recorded, not failed) when less than this is left of its section.
RESERVE_S = 12
METHODS = ["simclr", "swav", "dino", "supervised"]


class Timeout(Exception):
    pass


class Failed(Exception):
    pass


class Check:
    def __init__(self, a):
        self.a = a
        self.bundle = a.bundle
        self.bin = os.path.join(a.bundle, "bin")
        self.out = os.path.abspath(a.out)
        self.work = os.path.abspath(a.work or os.path.join(self.out, "work"))
        os.makedirs(self.work, exist_ok=True)
        self.cuda = a.device.startswith("cuda")
        self.tiny = a.tiny
        self.started = time.monotonic()
        self.logf = open(os.path.join(self.out, "gpu-check.log"), "a")
        self.deadline = self.started
        self.models = {}
        self.rates = {}
        self.results = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": a.device, "tiny": a.tiny, "budget_s": a.budget_s,
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "bundle": json.load(open(os.path.join(a.bundle, "BUNDLE.json"))),
            "sections": {},
        }

    # ---- plumbing -------------------------------------------------------
    def log(self, text):
        self.logf.write(text.rstrip("\n") + "\n")
        self.logf.flush()

    def save(self):
        path = os.path.join(self.out, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        os.replace(path + ".tmp", path)

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, cmd, limit=None, check=True):
        """Runs `cmd` (killed at the section's deadline or after `limit` s); stdout."""
        timeout = self.left() if limit is None else min(limit, self.left())
        if timeout < 1:
            raise Timeout(f"no time left for {os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''}")
        self.log(f"$ {' '.join(map(str, cmd))}")
        try:
            p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            self.log(f"(killed after {timeout:.0f} s)\n{e.stdout or ''}{e.stderr or ''}")
            raise Timeout(f"{os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''} ran past {timeout:.0f} s")
        self.log(p.stdout[-20000:] + p.stderr[-20000:])
        if check and p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise Failed(f"{os.path.basename(cmd[0])} {cmd[1] if len(cmd) > 1 else ''} exited {p.returncode}: {' | '.join(tail)}")
        return p.stdout

    def amlmil(self, *args, limit=None):
        return self.run([os.path.join(self.bin, "amlmil"), *args], limit)

    def call(self, function, *args, limit=None):
        """A binding's training entry point in a child process; its JSON result."""
        path = os.path.join(self.work, f"call-{time.monotonic_ns()}.json")
        self.run([sys.executable, __file__, "call", function, path, *[json.dumps(x) for x in args]], limit)
        with open(path) as f:
            return json.load(f)

    def skip(self, part, what):
        """True (and `what` recorded under `skipped`) when the section's time is
        nearly spent: later measurements are left out rather than cut short."""
        if self.left() >= RESERVE_S:
            return False
        part.setdefault("skipped", []).append(what)
        self.save()
        return True

    def section(self, name, fn):
        self.deadline = max(self.deadline, time.monotonic()) + SHARES[name] * self.a.budget_s
        self.deadline = min(self.deadline, self.started + self.a.budget_s)
        part = {"status": "running"}
        self.results["sections"][name] = part
        self.save()
        t0 = time.monotonic()
        print(f"gpu-check: {name} ({self.left():.0f} s)", file=sys.stderr, flush=True)
        try:
            problems = fn(part) or []
            part["status"] = "ok"
            part["passed"] = not problems
            if problems:
                part["problems"] = problems
        except Timeout as e:
            part.update(status="timeout", passed=False, error=str(e))
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the next section runs
            part.update(status="failed", passed=False, error=f"{type(e).__name__}: {e}")
            self.log(f"{name} failed: {e!r}")
        part["seconds"] = round(time.monotonic() - t0, 1)
        print(f"gpu-check: {name}: {part['status']}{'' if part.get('passed') else ' (checks failed)'} in {part['seconds']} s",
              file=sys.stderr, flush=True)
        self.save()

    # ---- shared inputs ----------------------------------------------------
    def size(self):
        return 64 if self.tiny else 144

    def cohort(self):
        """The synthetic cohort of the training, parity and speed sections."""
        root = os.path.join(self.work, "cohort")
        if not os.path.exists(os.path.join(root, "metadata.csv")):
            ppc, cells = (5, "4..6") if self.tiny else (6, "100..140")
            self.amlmil("synth", "--out", root, "--patients-per-class", ppc, "--cells", cells,
                        "--size", self.size(), "--seed", 7, "--annotated", 0.3)
        return root

    def bags(self, limit):
        """Cell image files per patient of the cohort (sorted), at most `limit` patients."""
        root = os.path.join(self.cohort(), "data")
        bags = []
        for cls in sorted(os.listdir(root)):
            for patient in sorted(os.listdir(os.path.join(root, cls))):
                d = os.path.join(root, cls, patient)
                bags.append(sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".tif")))
        return bags[:limit]

    def fallback_models(self):
        """Seeded random checkpoints, when training did not leave trained ones."""
        enc = os.path.join(self.work, "random-encoder.safetensors")
        mil = os.path.join(self.work, "random-mil.safetensors")
        if not os.path.exists(enc):
            self.amlmil("init-checkpoint", "encoder", "--out", enc, "--seed", 1, "--input-size", self.size())
        if not os.path.exists(mil):
            self.amlmil("init-checkpoint", "mil", "--out", mil, "--seed", 2, "--input-size", self.size(),
                        "--g", "pooled" if self.tiny else "four-conv")
        if "encoder" in self.models and "mil" in self.models:
            return self.models["encoder"], self.models["mil"]
        return enc, mil

    def pretrain_config(self, method, output, amp, steps, epochs, dataset):
        c = {"method": method, "dataset": dataset, "output": output, "device": self.a.device,
             "epochs": epochs, "steps_per_epoch": steps, "warmup_epochs": 0, "seed": 0,
             "mixed_precision": amp, "keep_every": 0, "monitor": {"probe_every_epochs": 0}}
        if self.tiny:
            c.update(preset="cpu-small", image_size=32, batch_size=8)
            crops = {"crops": {"global": {"size": 32}, "local": {"size": 16}}}
            c[method] = {"simclr": crops, "dino": crops,
                         "swav": dict(crops, num_prototypes=8, freeze_prototypes_iterations=2),
                         "supervised": {"crop": {"size": 32}}}[method]
        else:
            c.update(preset="paper", batch_size=256)
            c[method] = {"simclr": {}, "supervised": {},
                         "swav": {"queue_length": 512, "queue_start_epoch": 1},
                         "dino": {"warmup_teacher_temperature_epochs": 1, "freeze_last_layer_epochs": 1}}[method]
        return c

    # ---- sections -----------------------------------------------------------
    def info(self, part):
        info = json.loads(self.amlmil("info"))
        part["amlmil_info"] = info
        try:
            part["nvidia_smi"] = self.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                           "--format=csv,noheader"], limit=20).strip()
        except (OSError, Failed, Timeout) as e:
            part["nvidia_smi"] = f"unavailable: {e}"
        enc, mil = self.fallback_models()
        part["c_abi_minimal"] = self.run([os.path.join(self.bin, "minimal"), enc, mil, *self.bags(1)[0]]).strip()
        problems = []
        if self.cuda:
            devices = info.get("cuda_driver", {}).get("devices", [])
            if info["cuda_device_count"] < 1 or not devices:
                problems.append(f"no CUDA device: {info.get('cuda_driver')}")
            else:
                part["gpu"] = devices[0]
        return problems

    def training(self, part):
        cohort = self.cohort()
        steps, epochs = (2, 2) if self.tiny else (12, 4)
        part["runs"] = runs = []
        problems = []
        for amp in ([True, False] if self.cuda else [False]):
            for m in METHODS:
                tag = f"{m}-{'amp' if amp else 'fp32'}"
                if self.skip(part, f"pretrain {tag}"):
                    continue
                out = os.path.join(self.work, f"pretrain-{tag}")
                # fp32 runs: half the steps (the falling check needs 20).
                cfg = self.pretrain_config(m, out, amp, steps, epochs if amp or self.tiny else 2, cohort)
                r = self.call("pretrain", cfg)
                losses = r["step_losses"]
                k = max(1, min(10, len(losses) // 3))
                secs = sum(h["seconds"] for h in r["history"])
                first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
                rec = {"method": m, "mixed_precision": amp, "batch_size": cfg["batch_size"],
                       "steps": len(losses), "steps_per_s": round(len(losses) / secs, 2),
                       "images_per_s": round(len(losses) * cfg["batch_size"] / secs, 1),
                       "first_loss": round(first, 4), "last_loss": round(last, 4),
                       "finite": all(map(math.isfinite, losses))}
                if len(losses) >= 20:
                    rec["falling"] = last < first
                    if not rec["falling"]:
                        problems.append(f"{tag}: loss did not fall ({first:.4f} -> {last:.4f})")
                if not rec["finite"]:
                    problems.append(f"{tag}: non-finite loss")
                runs.append(rec)
                self.rates.setdefault(m, rec["steps_per_s"])
                if m == "supervised":
                    self.models.setdefault("encoder", r["encoder"])
                self.save()
        # MIL on the device: features once (timed), then one head (timed per epoch).
        encoder = self.models.get("encoder") or self.fallback_models()[0]
        feats = os.path.join(self.work, "mil-features")
        t0 = time.monotonic()
        self.call("extract_features", cohort, encoder, feats, {"flips": True, "device": self.a.device})
        t_features = time.monotonic() - t0
        epochs = 3 if self.tiny else 10
        training = {"preset": "paper", "epochs": epochs, "patience": epochs, "standardize_features": True}
        if self.tiny:
            training["cell_net"] = {"type": "pooled"}
        t0 = time.monotonic()
        r = self.call("train_mil", {"dataset": cohort, "encoder": encoder, "features": feats,
                                    "output": os.path.join(self.work, "mil"), "device": self.a.device,
                                    "training": training}, 0)
        t_mil = time.monotonic() - t0
        self.models["mil"] = os.path.join(r["dir"], "mil.safetensors")
        patients = len(self.bags(10**6))
        part["mil"] = {"feature_extraction_s": round(t_features, 2), "training_s": round(t_mil, 2),
                       "epochs_run": r["epochs_run"], "train_bags": round(0.6 * patients),
                       "seconds_per_bag_epoch": round(t_mil / max(1, r["epochs_run"]) / max(1, 0.8 * patients), 5),
                       "macro_f1": r["macro_f1"]}
        self.rates["mil_bag_epoch_s"] = part["mil"]["seconds_per_bag_epoch"]
        return problems

    def parity(self, part):
        import amlmil

        enc, mil = self.fallback_models()
        part["models"] = {"encoder": enc, "mil": mil}
        bags = self.bags(4 if self.tiny else 10)
        torch = None
        if self.cuda:
            import torch
        reference = amlmil.Session(enc, mil, device="cpu")
        ref = [reference.classify(_bag(amlmil, b)) for b in bags]
        reference.close()
        precisions = ["fp32", "fp16", "bf16"] if self.cuda else ["fp32"] + (["bf16"] if json.loads(self.amlmil("info")).get("cpu_bf16") else [])
        part["precisions"] = {}
        problems = []
        for p in precisions:
            if self.left() < 5:
                raise Timeout(f"parity stopped before {p}")
            if torch is not None:
                torch.cuda.reset_peak_memory_stats()
            s = amlmil.Session(enc, mil, options=amlmil.SessionOptions(device=self.a.device, precision=p))
            got = [s.classify(_bag(amlmil, b)) for b in bags]
            rec = _compare(ref, got)
            if torch is not None:
                rec["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                rec["reserved_gpu_memory_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            if rec["same_class"] != len(bags):
                problems.append(f"{p}: {len(bags) - rec['same_class']} of {len(bags)} bags change class")
            if p == "fp32":
                streamed = []
                for b in bags:
                    bag = amlmil.Bag()
                    bag.stream(s)
                    for i, f in enumerate(b):
                        bag.add_file(i, f)
                    streamed.append(s.classify(bag))
                rec["streaming_vs_plain"] = _compare(got, streamed)
                results = [[None] * len(bags) for _ in range(4)]

                def work(t):
                    for i, b in enumerate(bags):
                        results[t][i] = s.classify(_bag(amlmil, b))
                threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                worst = max((_compare(got, r) for r in results), key=lambda c: c["max_probability_diff"])
                rec["four_threads_vs_serial"] = worst
                for what in ("streaming_vs_plain", "four_threads_vs_serial"):
                    c = rec[what]
                    if c["same_class"] != len(bags) or c["max_probability_diff"] > 1e-4:
                        problems.append(f"{what}: {c}")
                if rec["max_probability_diff"] > 0.02:
                    problems.append(f"fp32 on {self.a.device} differs from the CPU by {rec['max_probability_diff']:.4f}")
            s.close()
            part["precisions"][p] = rec
            self.save()
        return problems

    def speed(self, part):
        part["bench"] = bench = []
        archs = ["resnet18", "resnet34"]
        if self.cuda:
            runs = [(a, p, 256) for a in archs for p in ("fp32", "fp16", "bf16")]
            runs += [("resnet18", "bf16", 64), ("resnet18", "bf16", 512)]
            seconds, size = 1.5, 144
        else:
            cpu_bf16 = json.loads(self.amlmil("info")).get("cpu_bf16")
            runs = [(a, p, 8) for a in archs for p in (["fp32", "bf16"] if cpu_bf16 else ["fp32"])]
            seconds, size = 0.3, self.size()
        for arch, precision, batch in runs:
            if self.skip(part, f"bench {arch} {precision} batch {batch}"):
                continue
            out = self.amlmil("bench", "--device", self.a.device, "--arch", arch, "--precision", precision,
                              "--batch-size", batch, "--seconds", seconds, "--size", size)
            bench.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
            self.save()
        # A 500-cell bag through the C ABI.
        cells = os.path.join(self.work, "cells.bin")
        files = [f for b in self.bags(10**6) for f in b]
        if not os.path.exists(cells):
            self.run([sys.executable, os.path.join(self.bundle, "prepare_cells.py"), self.cohort(), cells,
                      str(min(100, len(files)))])
        enc, mil = self.fallback_models()
        part["bag"] = bags = []
        n = 40 if self.tiny else 500
        for precision in (["fp32", "fp16", "bf16"] if self.cuda else ["fp32"]):
            if self.skip(part, f"bag {precision}"):
                continue
            out = self.run([os.path.join(self.bin, "bag_bench"), enc, mil, cells, "tiff", str(n), "0",
                            "64" if self.cuda else "16", "3", "0", precision, self.a.device])
            bags.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
            self.save()
        # PyTorch on the same weights and card.
        part["pytorch"] = peers = []
        for arch in archs:
            enc = os.path.join(self.work, f"bench-{arch}.safetensors")
            if not os.path.exists(enc):
                self.amlmil("init-checkpoint", "encoder", "--arch", arch, "--out", enc, "--seed", 1, "--input-size", size)
            batch = 256 if self.cuda else 8
            for which, limit in (("eager", None), ("compile", 90 if self.cuda else 60)):
                if self.skip(part, f"pytorch {which} {arch}"):
                    continue
                if which == "compile" and self.tiny:
                    peers.append({"impl": "pytorch_compile", "arch": arch, "skipped": "tiny rehearsal"})
                    continue
                try:
                    out = self.run([sys.executable, __file__, "peers", enc, self.a.device, str(batch), str(size),
                                    str(seconds), which], limit=limit)
                    peers.extend(json.loads(line) for line in out.splitlines() if line.startswith("{"))
                except Timeout as e:
                    peers.append({"impl": f"pytorch_{which}", "arch": arch, "skipped": str(e)})
                self.save()
        best = {}
        for r in bench:
            key = (r["arch"], r["precision"])
            best[key] = max(best.get(key, 0), r["cells_per_s"])
        part["best_cells_per_s"] = {f"{a}_{p}": v for (a, p), v in sorted(best.items())}
        return []

    def experiment(self, part):
        budget = self.left()
        if self.tiny:
            epochs = {m: 1 for m in METHODS}
            mil_epochs = 2
            crops = {"crops": {"global": {"size": 32}, "local": {"size": 16}}}
            overrides = {
                "cohort": {"patients_per_class": 5, "cells_min": 4, "cells_max": 6, "image_size": 64},
                "pretrain_cohort": {"patients_per_class": 2, "cells_min": 8, "cells_max": 10, "image_size": 64},
                "pretrain_preset": "cpu-small",
                "pretrain": {"all": {"batch_size": 8, "image_size": 32, "mixed_precision": False},
                             "simclr": {"simclr": crops}, "dino": {"dino": crops},
                             "swav": {"swav": dict(crops, num_prototypes=8, queue_length=0, queue_start_epoch=0,
                                                   freeze_prototypes_iterations=2)},
                             "supervised": {"supervised": {"crop": {"size": 32}}}},
                "training": {"cell_net": {"type": "pooled"}},
                "probe_cells": 10, "umap_cells": 50, "gallery_cells": 2,
            }
            cells = 2 * 5 * 9
            batch = 8
        else:
            overrides = {"pretrain": {"all": {}}}
            cells, batch = 12 * 5 * 200, 256  # the gpu-short pre-training cohort's expected cells
            # Sizing from measured step costs: 60 % of the budget pre-trains, a
            # quarter trains the 25 MIL heads, the rest makes cohorts, features and the report.
            shares = {"simclr": 0.27, "swav": 0.27, "dino": 0.30, "supervised": 0.16}
            steps_per_epoch = cells // batch
            epochs = {}
            for m, share in shares.items():
                rate = self.rates.get(m) or 1.0
                epochs[m] = max(1, min(60, int(0.6 * budget * share * rate / steps_per_epoch)))
            bag_epoch = self.rates.get("mil_bag_epoch_s") or 0.01
            runs, patients = 5 * 5, 20 * 5
            mil_epochs = max(3, min(50, int(0.25 * budget / (runs * bag_epoch * 0.8 * patients))))
        for m in METHODS:
            overrides["pretrain"].setdefault(m, {})["epochs"] = epochs[m]
        overrides.setdefault("training", {}).update(epochs=mil_epochs, patience=min(20, mil_epochs))
        config = dict(overrides, preset="gpu-short", output=os.path.join(self.work, "experiment"), device=self.a.device)
        part["sizing"] = {"budget_s": round(budget), "pretrain_epochs": epochs, "mil_epochs": mil_epochs,
                          "from_rates": dict(self.rates)}
        path = os.path.join(self.work, "experiment.json")
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
        self.save()
        self.amlmil("experiment", "--config", path)
        report = json.load(open(os.path.join(config["output"], "report.json")))
        table = []
        for e in report["encoders"]:
            s = e["cv"].get("summary") or {}
            table.append({"encoder": e["name"],
                          "macro_f1": s.get("macro_f1"), "roc_auc": s.get("roc_auc"), "pr_auc": s.get("pr_auc"),
                          "knn_probe": e.get("probe")})
        part["table1"] = table
        part["timings"] = report.get("timings")
        md = os.path.join(config["output"], "report.md")
        if os.path.exists(md):
            with open(md) as src, open(os.path.join(self.out, "experiment-report.md"), "w") as dst:
                dst.write(src.read())
        return [] if report.get("complete") else ["the experiment's report is not complete"]


def _bag(amlmil, files):
    bag = amlmil.Bag()
    for i, f in enumerate(files):
        bag.add_file(i, f)
    return bag


def _compare(ref, got):
    """Largest differences of probabilities and attention over bags, and bags of equal class."""
    import numpy as np

    dp = max(float(np.abs(r.probabilities - g.probabilities).max()) for r, g in zip(ref, got))
    da = max(float(max(np.abs(r.attention(k) - g.attention(k)).max() for k in range(len(r.classes))))
             for r, g in zip(ref, got))
    same = sum(r.predicted == g.predicted for r, g in zip(ref, got))
    return {"bags": len(ref), "same_class": same, "max_probability_diff": dp, "max_attention_diff": da}


def call_mode(function, out, args):
    import amlmil

    fn = getattr(amlmil, function)
    parsed = [json.loads(a) for a in args]
    kwargs = parsed.pop() if function == "extract_features" else {}
    result = fn(*parsed, **kwargs)
    with open(out, "w") as f:
        json.dump(result, f)


def peers_mode(encoder, device, batch, size, seconds, which):
    """PyTorch on the same weights: eager channels-last in fp32, bf16 autocast
    and fp16 (CUDA), or torch.compile (bf16 autocast on CUDA); JSON lines."""
    import torch

    from amlmil.models import load_encoder

    dev = torch.device(device)
    model = load_encoder(encoder).eval().to(dev).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    arch = "resnet34" if "resnet34" in os.path.basename(encoder) else "resnet18"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def rate(f):
        f(), f()
        sync()
        t0, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - t0 < seconds:
            f()
            n += 1
        sync()
        return n * batch / (time.perf_counter() - t0)

    def emit(impl, precision, cells_per_s, **extra):
        print(json.dumps({"impl": impl, "precision": precision, "arch": arch, "size": size, "batch": batch,
                          "device": device, "cells_per_s": round(cells_per_s, 1), **extra}), flush=True)

    cast = torch.bfloat16
    with torch.inference_mode():
        if which == "eager":
            emit("pytorch_eager_channels_last", "fp32", rate(lambda: model(x)))
            with torch.autocast(dev.type, dtype=cast):
                emit("pytorch_eager_channels_last_bf16_autocast", "bf16", rate(lambda: model(x)))
            if dev.type == "cuda":
                half = load_encoder(encoder).eval().to(dev).half().to(memory_format=torch.channels_last)
                xh = x.half()
                emit("pytorch_eager_channels_last_fp16", "fp16", rate(lambda: half(xh)))
        else:
            t0 = time.perf_counter()
            compiled = torch.compile(model)
            with torch.autocast(dev.type, dtype=cast):
                compiled(x)
                sync()
                compile_s = time.perf_counter() - t0
                emit("pytorch_compile_bf16_autocast", "bf16", rate(lambda: compiled(x)), compile_s=round(compile_s, 1))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "call":
        return call_mode(sys.argv[2], sys.argv[3], sys.argv[4:])
    if len(sys.argv) > 1 and sys.argv[1] == "peers":
        e, d, b, s, sec, w = sys.argv[2:8]
        return peers_mode(e, d, int(b), int(s), float(sec), w)
    p = argparse.ArgumentParser(description="The GPU check (run through gpu-check.sh).")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--work", help="scratch folder (default OUT/work)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--libtorch", required=True)
    a = p.parse_args()
    if a.device not in ("cpu", "cuda") and not a.device.startswith("cuda:"):
        p.error(f"--device: expected cuda, cuda:N or cpu, got {a.device!r}")
    if a.budget_s < 10:
        p.error(f"--budget-s: at least 10, got {a.budget_s}")
    os.makedirs(a.out, exist_ok=True)
    check = Check(a)
    check.results["libtorch"] = a.libtorch
    for name in SECTIONS:
        check.section(name, getattr(check, name))
    check.results["seconds"] = round(time.monotonic() - check.started, 1)
    check.results["passed"] = all(s.get("passed") for s in check.results["sections"].values())
    check.save()
    print(f"gpu-check: {'passed' if check.results['passed'] else 'FAILED'} in {check.results['seconds']} s; "
          f"{os.path.join(check.out, 'results.json')}", file=sys.stderr)
    return 0 if check.results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
