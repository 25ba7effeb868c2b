"""Fixtures: the built CLI (for random checkpoints), a tiny synthetic cohort made
through the bindings, and one session shared by the module's tests."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import amlmil

REPO = Path(__file__).resolve().parents[3]


def cli() -> str:
    exe = os.environ.get("AMLMIL_CLI") or shutil.which("amlmil")
    if not exe:
        pytest.fail("the amlmil CLI is needed: set AMLMIL_CLI or put it on PATH (cargo build)")
    return exe


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    enc, mil = d / "enc.safetensors", d / "mil.safetensors"
    subprocess.run([cli(), "init-checkpoint", "encoder", "--input-size", "64", "--seed", "1", "--out", str(enc)], check=True, capture_output=True)
    subprocess.run([cli(), "init-checkpoint", "mil", "--input-size", "64", "--g", "pooled", "--seed", "2", "--out", str(mil)], check=True, capture_output=True)
    return enc, mil


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "cohort"
    summary = amlmil.synth_cohort(out, {"patients_per_class": 3, "cells_min": 4, "cells_max": 6, "image_size": 64, "seed": 4, "annotated_fraction": 1.0})
    return out, summary


def bag_dirs(cohort_dir):
    return sorted(p for p in (cohort_dir / "data").glob("*/*") if p.is_dir())


def cell_files(bag_dir):
    return sorted(bag_dir.glob("*.tif"), key=lambda p: (int("".join(c for c in p.name if c.isdigit())), p.name))


@pytest.fixture(scope="session")
def session(models):
    with amlmil.Session(*models, options=amlmil.SessionOptions(batch_size=2)) as s:
        yield s
