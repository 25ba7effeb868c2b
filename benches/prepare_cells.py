"""Packs N cell images of a synthetic cohort for benches/bag_bench.c: a uint32
count, each cell's TIFF bytes (uint32 length first), then the same cells as
144x144 RGB pixels.

    python benches/prepare_cells.py COHORT_DIR OUT.bin [N]
"""
import glob
import os
import struct
import sys

import numpy as np
from PIL import Image

root, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 500
files = sorted(glob.glob(os.path.join(root, "data", "*", "*", "*.tif")))[:n]
assert len(files) == n, f"{root} has {len(files)} cells, {n} wanted"
tiffs = [open(f, "rb").read() for f in files]
pixels = [np.asarray(Image.open(f).convert("RGB").resize((144, 144)), dtype=np.uint8) for f in files]
with open(out, "wb") as f:
    f.write(struct.pack("<I", n))
    for t in tiffs:
        f.write(struct.pack("<I", len(t)))
        f.write(t)
    for p in pixels:
        f.write(p.tobytes())
print(f"{out}: {n} cells, {sum(map(len, tiffs)) / n / 1024:.1f} KiB of TIFF a cell")
