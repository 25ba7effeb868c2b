"""Classify one patient's bag of cell images with libamlmil's Python bindings.

usage: python classify.py ENCODER.safetensors MIL.safetensors BAG_DIR
"""
import sys
from pathlib import Path

import amlmil


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    encoder, mil, bag_dir = sys.argv[1:]
    files = sorted(p for p in Path(bag_dir).iterdir()
                   if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg"))
    try:
        with amlmil.Session(encoder, mil) as session, amlmil.Bag() as bag:
            for cell_id, path in enumerate(files):
                bag.add_file(cell_id, path)
            result = session.classify(bag)
    except amlmil.AmlmilError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"predicted: {result.predicted_class}")
    for name, p in zip(result.classes, result.probabilities):
        print(f"  {name:<14} {p:.4f}")
    print("top cells:")
    for cell in result.top_cells(result.predicted, 5):
        print(f"  {files[cell.index].name}  cell {cell.cell_id}  attention {cell.attention:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
