"""scikit-learn reference for tests/metrics.rs.

    metrics.py CASES.json OUT.json

CASES.json is a list of {"y_true": [int], "y_score": [[float]] (n x C), "num_classes": C}.
OUT.json gets, per case, what scikit-learn computes for it:
  y_pred                 argmax of y_score per row (numpy: ties -> lowest index)
  confusion_matrix       confusion_matrix(y_true, y_pred, labels=range(C))
  precision/recall/f1/support
                         precision_recall_fscore_support(..., labels=range(C), zero_division=0)
  macro_f1               f1_score(..., average="macro", labels=range(C), zero_division=0)
  roc_auc                roc_auc_score(y_true, y_score, multi_class="ovr", average="macro",
                         labels=range(C)); null when it is NaN or raises
  roc_auc_per_class      roc_auc_score(y_true == c, y_score[:, c]); null where NaN
  average_precision_per_class, pr_auc
                         average_precision_score(onehot(y_true), y_score, average=None / "macro")
  roc_curves             roc_curve(y_true == c, y_score[:, c], drop_intermediate=True) as
                         {fpr, tpr, thresholds}, the +inf threshold written as null;
                         null for a class without positives or negatives
JSON has no NaN or infinity, hence the nulls.
"""
import json
import math
import sys
import warnings

import numpy as np
import sklearn
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)


def finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def one_case(case):
    y_true = np.asarray(case["y_true"], dtype=np.int64)
    y_score = np.asarray(case["y_score"], dtype=np.float64)
    n_classes = int(case["num_classes"])
    labels = list(range(n_classes))
    assert y_score.shape == (len(y_true), n_classes), y_score.shape

    y_pred = np.argmax(y_score, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    out = {
        "y_pred": y_pred.tolist(),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        ),
    }

    try:
        roc_auc = finite_or_none(
            roc_auc_score(
                y_true, y_score, multi_class="ovr", average="macro", labels=labels
            )
        )
    except ValueError:
        roc_auc = None
    out["roc_auc"] = roc_auc

    per_class, curves = [], []
    for c in labels:
        positive = y_true == c
        if positive.all() or not positive.any():
            # scikit-learn warns and returns NaN here; the Rust side must refuse.
            per_class.append(None)
            curves.append(None)
            continue
        per_class.append(float(roc_auc_score(positive, y_score[:, c])))
        fpr, tpr, thresholds = roc_curve(positive, y_score[:, c], drop_intermediate=True)
        curves.append(
            {
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "thresholds": [finite_or_none(t) for t in thresholds],
            }
        )
    out["roc_auc_per_class"] = per_class
    out["roc_curves"] = curves

    onehot = np.eye(n_classes, dtype=np.int64)[y_true]
    out["average_precision_per_class"] = [
        float(v) for v in average_precision_score(onehot, y_score, average=None)
    ]
    out["pr_auc"] = float(average_precision_score(onehot, y_score, average="macro"))
    return out


def main():
    cases_path, out_path = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    with warnings.catch_warnings():
        # Undefined-metric warnings are expected for the edge cases; the nulls say so.
        warnings.simplefilter("ignore")
        results = [one_case(case) for case in cases]
    with open(out_path, "w") as f:
        json.dump(
            {"sklearn_version": sklearn.__version__, "cases": results}, f, allow_nan=False
        )


if __name__ == "__main__":
    main()
