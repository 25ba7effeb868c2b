"""The diagnosis guard for int8, measured with the peer that runs int8 here:
ONNX Runtime on the encoder statically quantised (QDQ, per-channel weights,
calibrated on normalised cells of the training cohort), its feature maps then
classified by the same fp32 attention-MIL head through
``Session.classify_features``, against the fp32 session on the same cells.
Reports the three figures of ``amlmil check-precision`` (same class,
largest probability difference, smallest top-10 attention overlap) as one
JSON line. libamlmil has no int8 path; this measures whether one would keep
the diagnosis.

    python benches/int8_guard.py ENCODER MIL CALIBRATION_COHORT BAG_DIR...
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bindings", "python"))
sys.path.insert(0, os.path.dirname(__file__))
import amlmil  # noqa: E402


def images(folder):
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(Path(folder).iterdir()) if f.suffix in (".tif", ".tiff", ".png")]


def normalised(imgs, mean, std):
    x = np.stack(imgs).astype(np.float32) / 255.0
    return ((x - mean) / std).transpose(0, 3, 1, 2).copy()


def main():
    encoder, mil, calibration, bags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    import onnxruntime as ort
    from peers import quantize

    session = amlmil.Session(encoder, mil, options=amlmil.SessionOptions(device="cpu"))
    manifest = session.info["encoder"]
    norm = manifest["normalization"]
    mean, std = np.array(norm["mean"], np.float32), np.array(norm["std"], np.float32)
    work = Path(tempfile.mkdtemp())
    cli = os.environ.get("AMLMIL_CLI", "amlmil")
    subprocess.run([cli, "export", encoder, "--format", "onnx", "--out", str(work / "e.onnx")], check=True, capture_output=True)
    calib = [f for c in sorted((Path(calibration) / "data").iterdir()) for f in sorted(c.iterdir())]

    quantize(str(work / "e.onnx"), str(work / "int8.onnx"), (normalised(images(p), mean, std) for p in calib))
    int8 = ort.InferenceSession(str(work / "int8.onnx"), providers=["CPUExecutionProvider"])
    same, prob, overlap = 0, 0.0, 10
    for bag in bags:
        imgs = images(bag)
        ref = session.classify(imgs)
        maps = int8.run(None, {"pixels": normalised(imgs, mean, std)})[0].reshape(len(imgs), -1)
        got = session.classify_features(maps.astype(np.float32))
        same += int(ref.predicted == got.predicted)
        prob = max(prob, float(np.abs(ref.probabilities - got.probabilities).max()))
        for c in range(len(ref.classes)):
            a = {x.cell_id for x in ref.top_cells(c, 10)}
            b = {x.cell_id for x in got.top_cells(c, 10)}
            overlap = min(overlap, len(a & b))
    print(json.dumps({"impl": "onnxruntime_int8_guard", "patients": len(bags), "same_class": same,
                      "max_probability_diff": round(prob, 4), "min_overlap": overlap,
                      "holds": same == len(bags) and prob <= 0.02 and overlap >= 9}))


if __name__ == "__main__":
    main()
