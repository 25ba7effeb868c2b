"""Merges the JSON lines of benches/run.sh into benches/results.json and prints
the README's table (markdown).

    python benches/report.py RESULTS.jsonl OUT.json
"""
import json
import platform
import sys


def gflop_per_cell(arch, size=144):
    """Multiply-adds x 2 of a ResNet18/34 trunk's convolutions at `size` px (no fc)."""
    blocks = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}[arch]
    out = lambda s, k, st, p: (s + 2 * p - k) // st + 1  # noqa: E731
    s = out(size, 7, 2, 3)
    flops = 2 * 3 * 64 * 49 * s * s
    s = out(s, 3, 2, 1)  # max pool
    cin = 64
    for i, (n, c) in enumerate(zip(blocks, [64, 128, 256, 512])):
        for b in range(n):
            stride = 2 if b == 0 and i > 0 else 1
            so = out(s, 3, stride, 1)
            flops += 2 * cin * c * 9 * so * so + 2 * c * c * 9 * so * so
            if stride != 1 or cin != c:
                flops += 2 * cin * c * so * so
            s, cin = so, c
    return flops / 1e9


rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
gemm = max(r["gflop_per_s"] for r in rows if r.get("impl") == "libtorch_sgemm")
enc = {}
for r in rows:
    if "cells_per_s" in r:
        key = (r["arch"], r["impl"])
        if key not in enc or r["cells_per_s"] > enc[key]["cells_per_s"]:
            enc[key] = r  # each implementation at its best batch
summary = {"machine": platform.processor() or platform.machine(), "gemm_gflop_per_s": gemm, "encoders": {}, "bags": []}
print(f"libtorch f32 GEMM (1024³, {rows[0].get('threads', '?')} threads): {gemm:.0f} GFLOP/s\n")
print("| arch | implementation | batch | cells/s | × best peer | GFLOP/s | % of GEMM | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|")
for arch in ["resnet18", "resnet34"]:
    mine = {k[1]: v for k, v in enc.items() if k[0] == arch}
    if not mine:
        continue
    g = gflop_per_cell(arch)
    peers = {k: v for k, v in mine.items() if not k.startswith("amlmil")}
    best_peer = max(peers.values(), key=lambda r: r["cells_per_s"]) if peers else None
    summary["encoders"][arch] = {"gflop_per_cell": round(g, 3), "best_peer": best_peer and best_peer["impl"], "rows": []}
    for name, r in sorted(mine.items(), key=lambda kv: -kv[1]["cells_per_s"]):
        rate = r["cells_per_s"]
        ratio = rate / best_peer["cells_per_s"] if best_peer else float("nan")
        gf = rate * g
        row = {**r, "ratio_to_best_peer": round(ratio, 3), "gflop_per_s": round(gf, 1), "fraction_of_gemm": round(gf / gemm, 3)}
        summary["encoders"][arch]["rows"].append(row)
        rss = r.get("peak_rss_mb") or ""
        print(f"| {arch} | {name} | {r['batch']} | {rate:.1f} | {ratio:.2f} | {gf:.0f} | {100 * gf / gemm:.0f} % | {rss} |")
bags = [r for r in rows if r.get("impl") == "amlmil_c_abi"]
if bags:
    arch = "resnet18"
    fused = enc.get((arch, "amlmil_fused"))
    base = {r["mode"]: r["peak_rss_mb"] for r in bags if r["cells"] == 500 and r["pace_cells_per_s"] == 0}
    print(f"\nencoder only (amlmil_fused, batch 16): {fused['cells_per_s']:.1f} cells/s\n")
    print("| bag (resnet18, C ABI) | cells | add s | classify s | total s (min) | total ÷ encoder-only (min) | classify ÷ encoding | peak RSS MB | × 500-cell RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in bags:
        encoder_only = r["cells"] / fused["cells_per_s"]
        rss_ratio = r["peak_rss_mb"] / base.get(r["mode"], r["peak_rss_mb"])
        r = {**r, "encoder_only_s": round(encoder_only, 3), "ratio_total_to_encoder_only": round(r["total_s"] / encoder_only, 3),
             "ratio_min_total_to_encoder_only": round(r["min_total_s"] / encoder_only, 3),
             "classify_fraction_of_encoding": round(r["classify_s"] / encoder_only, 3), "rss_ratio_to_500": round(rss_ratio, 2)}
        summary["bags"].append(r)
        pace = f" at {r['pace_cells_per_s']:.0f} cells/s" if r["pace_cells_per_s"] > 0 else ""
        print(f"| {r['mode']}{pace} | {r['cells']} | {r['add_s']:.2f} | {r['classify_s']:.3f} | {r['total_s']:.2f} ({r['min_total_s']:.2f}) | "
              f"{r['ratio_total_to_encoder_only']:.2f} ({r['ratio_min_total_to_encoder_only']:.2f}) | {r['classify_fraction_of_encoding']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {rss_ratio:.2f} |")
json.dump(summary, open(sys.argv[2], "w"), indent=1)
