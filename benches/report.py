"""Merges the JSON lines of benches/run.sh (and the diagnosis guard's report)
into benches/results.json and prints the tables of docs/performance.md (markdown).

    python benches/report.py RESULTS.jsonl OUT.json [GUARD.json]
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
rate = lambda name: max((r["gflop_per_s"] for r in rows if r.get("impl") == name), default=None)  # noqa: E731
gemm = rate("libtorch_sgemm")
bf16_gemm = rate("libtorch_bf16_gemm")
bf16_conv = rate("onednn_bf16_conv3x3")
f32_conv = rate("onednn_f32_conv3x3")
# The ceiling each precision's rows are measured against: the fastest kernel
# found at that precision, GEMM or convolution (int8 has none measured here).
fastest = lambda *v: max((x for x in v if x is not None), default=None)  # noqa: E731
ceiling = {"fp32": fastest(gemm, f32_conv), "bf16": fastest(bf16_gemm, bf16_conv)}
enc = {}
for r in rows:
    if "cells_per_s" in r:
        key = (r["arch"], r["impl"])
        if key not in enc or r["cells_per_s"] > enc[key]["cells_per_s"]:
            enc[key] = r  # each implementation at its best batch
summary = {"machine": platform.processor() or platform.machine(), "gemm_gflop_per_s": gemm,
           "f32_conv_gflop_per_s": f32_conv, "bf16_gemm_gflop_per_s": bf16_gemm, "bf16_conv_gflop_per_s": bf16_conv,
           "ceiling_gflop_per_s": ceiling, "encoders": {}, "bags": []}
threads = rows[0].get("threads", "?")
print(f"Ceilings ({threads} threads, GFLOP/s): libtorch GEMM (1024³) f32 {gemm:.0f}, bf16 {bf16_gemm or 0:.0f}; "
      f"fastest oneDNN 3×3 convolution at a ResNet layer's shape f32 {f32_conv or 0:.0f}, bf16 {bf16_conv or 0:.0f}\n")
print("| arch | implementation | precision | batch | cells/s | × best peer (any precision) | × best peer (same precision) | GFLOP/s | % of ceiling | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for arch in ["resnet18", "resnet34"]:
    mine = {k[1]: v for k, v in enc.items() if k[0] == arch}
    if not mine:
        continue
    g = gflop_per_cell(arch)
    peers = {k: v for k, v in mine.items() if not k.startswith("amlmil")}
    best_peer = max(peers.values(), key=lambda r: r["cells_per_s"]) if peers else None
    best_at = {}
    for v in peers.values():
        p = v.get("precision", "fp32")
        if p not in best_at or v["cells_per_s"] > best_at[p]["cells_per_s"]:
            best_at[p] = v
    summary["encoders"][arch] = {"gflop_per_cell": round(g, 3), "best_peer": best_peer and best_peer["impl"],
                                 "best_peer_per_precision": {p: v["impl"] for p, v in best_at.items()}, "rows": []}
    for name, r in sorted(mine.items(), key=lambda kv: -kv[1]["cells_per_s"]):
        cps = r["cells_per_s"]
        precision = r.get("precision", "fp32")
        ratio = cps / best_peer["cells_per_s"] if best_peer else float("nan")
        same = best_at.get(precision)
        ratio_same = cps / same["cells_per_s"] if same else float("nan")
        gf = cps * g
        top = ceiling.get(precision)
        row = {**r, "precision": precision, "ratio_to_best_peer": round(ratio, 3), "ratio_to_best_peer_same_precision": round(ratio_same, 3),
               "gflop_per_s": round(gf, 1), "fraction_of_ceiling": round(gf / top, 3) if top else None}
        summary["encoders"][arch]["rows"].append(row)
        rss = r.get("peak_rss_mb") or ""
        share = f"{100 * gf / top:.0f} %" if top else ""
        print(f"| {arch} | {name} | {precision} | {r['batch']} | {cps:.1f} | {ratio:.2f} | {ratio_same:.2f} | {gf:.0f} | {share} | {rss} |")
bags = [r for r in rows if r.get("impl") == "amlmil_c_abi"]
if bags:
    arch = "resnet18"
    only = {p: [r for r in rows if r.get("impl") == name and r.get("arch") == arch and r.get("batch") == 16]
            for p, name in [("fp32", "amlmil_fused"), ("bf16", "amlmil_fused_bf16")]}
    encoder_rate = {p: v[0]["cells_per_s"] for p, v in only.items() if v}
    base = {(r.get("precision", "fp32"), r["mode"]): r["peak_rss_mb"] for r in bags if r["cells"] == 500 and r["pace_cells_per_s"] == 0}
    print("\nencoder only (batch 16): " + ", ".join(f"{p} {v:.1f} cells/s" for p, v in encoder_rate.items()) + "\n")
    print("| bag (resnet18, C ABI) | precision | cells | add s | classify s | total s (min) | total ÷ encoder-only (min) | classify ÷ encoding | peak RSS MB | × 500-cell RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in bags:
        precision = r.get("precision", "fp32")
        encoder_only = r["cells"] / encoder_rate[precision]
        rss_ratio = r["peak_rss_mb"] / base.get((precision, r["mode"]), r["peak_rss_mb"])
        r = {**r, "precision": precision, "encoder_only_s": round(encoder_only, 3), "ratio_total_to_encoder_only": round(r["total_s"] / encoder_only, 3),
             "ratio_min_total_to_encoder_only": round(r["min_total_s"] / encoder_only, 3),
             "classify_fraction_of_encoding": round(r["classify_s"] / encoder_only, 3), "rss_ratio_to_500": round(rss_ratio, 2)}
        summary["bags"].append(r)
        pace = f" at {r['pace_cells_per_s']:.0f} cells/s" if r["pace_cells_per_s"] > 0 else ""
        print(f"| {r['mode']}{pace} | {precision} | {r['cells']} | {r['add_s']:.2f} | {r['classify_s']:.3f} | {r['total_s']:.2f} ({r['min_total_s']:.2f}) | "
              f"{r['ratio_total_to_encoder_only']:.2f} ({r['ratio_min_total_to_encoder_only']:.2f}) | {r['classify_fraction_of_encoding']:.3f} | "
              f"{r['peak_rss_mb']:.0f} | {rss_ratio:.2f} |")
if len(sys.argv) > 3:
    try:
        guard = json.load(open(sys.argv[3]))
    except (OSError, ValueError):
        guard = None
    if guard:
        b = guard["bounds"]
        summary["guard"] = {k: v for k, v in guard.items() if k != "bags"} | {"cells": sum(x["cells"] for x in guard["bags"]), "patients": len(guard["bags"])}
        print(f"\nDiagnosis guard, bf16 vs fp32 ({len(guard['bags'])} patients, {summary['guard']['cells']} cells, trained encoder + head): "
              f"{guard['same_class']} of {len(guard['bags'])} same class; probabilities within {guard['max_probability_diff']:.4f} "
              f"(bound {b['max_probability_diff']}); top-{b['top_k']} attention overlap ≥ {guard['min_overlap']} (bound {b['min_overlap']}); "
              f"{'holds' if guard['holds'] else 'FAILS'}")
int8 = [r for r in rows if r.get("impl") == "onnxruntime_int8_guard"]
if int8:
    r = summary["int8_guard"] = int8[-1]
    print(f"The same guard for onnxruntime_int8 ({r['patients']} patients): {r['same_class']} of {r['patients']} same class; "
          f"probabilities within {r['max_probability_diff']:.4f}; top-10 attention overlap ≥ {r['min_overlap']}; "
          f"{'holds' if r['holds'] else 'FAILS'}")
json.dump(summary, open(sys.argv[2], "w"), indent=1)
