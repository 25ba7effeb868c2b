import ctypes
import json
import os
import re
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest

import amlmil
from amlmil import _native
from conftest import REPO, bag_dirs, cell_files, cli

HEADER = (REPO / "include" / "amlmil.h").read_text()


def test_the_installed_package_is_imported():
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert purelib in Path(amlmil.__file__).resolve().parents, amlmil.__file__
    assert (Path(amlmil.__file__).parent / "py.typed").exists()


def test_import_needs_no_torch_and_loads_no_library():
    code = "import sys, amlmil, amlmil._native as n; print('torch' in sys.modules, n._lib is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_bindings_match_the_header():
    m = re.search(r"#define AMLMIL_ABI_VERSION (\d+)", HEADER)
    assert int(m.group(1)) == _native.ABI_VERSION == amlmil.abi_version()
    assert re.search(r'#define AMLMIL_VERSION "([^"]+)"', HEADER).group(1) == amlmil.version()
    body = re.sub(r"/\*.*?\*/", "", HEADER[HEADER.index('extern "C" {'):], flags=re.S)
    protos = dict(re.findall(r"\b(amlmil_\w+)\(([^;]*?)\);", body, re.S))
    assert set(protos) == set(_native.PROTOTYPES)
    for name, params in protos.items():
        n = 0 if params.strip() == "void" else params.count(",") + 1
        assert n == len(_native.PROTOTYPES[name][1]), name
    for struct, cls in [("amlmil_session_options", _native.SessionOptionsC), ("amlmil_progress", _native.ProgressC), ("amlmil_ranked_cell", _native.RankedCellC), ("amlmil_model_info", _native.ModelInfoC), ("amlmil_cell", _native.CellC)]:
        block = re.search(r"typedef struct \{([^{}]*)\} " + struct + ";", HEADER).group(1)
        block = re.sub(r"/\*.*?\*/", "", block, flags=re.S)
        names = []
        for decl in block.split(";"):
            for part in decl.split(","):
                if part.strip():
                    names.append(re.findall(r"\w+", part)[-1])
        assert names == [f[0] for f in cls._fields_], struct
    for name, value in re.findall(r"AMLMIL_STATUS_(\w+) = (\d+)", HEADER):
        assert amlmil.Status[name] == int(value)
        assert _native.status_name(int(value)) == f"AMLMIL_STATUS_{name}"


def test_abi_mismatch_is_refused():
    with pytest.raises(amlmil.AbiMismatchError, match="ABI version 1.*ABI version 99"):
        _native._verify_abi(_native.lib(), "libamlmil.so", expected=99)


def test_library_not_found_names_what_was_tried(tmp_path):
    env = dict(os.environ, AMLMIL_LIBRARY=str(tmp_path / "nope.so"))
    code = "import amlmil\ntry:\n    amlmil.version()\nexcept ImportError as e:\n    print(type(e).__name__, e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("LibraryNotFoundError") and "$AMLMIL_LIBRARY" in out and "nope.so" in out
    env.pop("AMLMIL_LIBRARY")
    env.pop("LD_LIBRARY_PATH", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "next to the package" in out and "libamlmil.so.1" in out


def test_runtime_info(session):
    info = amlmil.runtime_info()
    assert info["amlmil_version"] == amlmil.version()
    assert info["cuda_device_count"] == amlmil.cuda_device_count()
    assert session.feature_dim == 512 and session.feature_map_len == 512 * 2 * 2
    assert session.info["classes"] == ["PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1", "control"]
    assert amlmil.SessionOptions().batch_size == _native.options_defaults().batch_size


def test_classification_equals_the_cli(session, models, cohort):
    dirs = bag_dirs(cohort[0])[:2]
    out = subprocess.run([cli(), "predict", "--encoder", str(models[0]), "--mil", str(models[1]), "--batch-size", "2", *map(str, dirs)], capture_output=True, text=True, check=True).stdout
    for d, rep in zip(dirs, json.loads(out)):
        with amlmil.Bag() as bag:
            for i, f in enumerate(cell_files(d)):
                bag.add_file(i, f)
            assert len(bag) == rep["num_cells"]
            r = session.classify(bag)
        assert r.predicted_class == rep["predicted"]
        expect = np.array([rep["probabilities"][c] for c in r.classes], np.float32)
        np.testing.assert_array_equal(r.probabilities, expect)
        assert abs(float(r.probabilities.sum()) - 1) < 1e-5
        for c in r.classes:
            top = r.top_cells(c, 5)
            assert [t.cell_id for t in top] == [t["cell_id"] for t in rep["top_cells"][c]]
            np.testing.assert_array_equal(np.float32([t.attention for t in top]), np.float32([t["attention"] for t in rep["top_cells"][c]]))
            assert abs(float(r.attention(c).sum()) - 1) < 1e-5
        d = r.as_dict()
        assert d["classes"] == r.classes and d["predicted"] == r.predicted
        np.testing.assert_array_equal(np.float32(d["logits"]), r.logits)


def test_arrays_bytes_and_strides_give_the_same_result(session, cohort):
    files = cell_files(bag_dirs(cohort[0])[0])
    with amlmil.Bag() as a:
        for i, f in enumerate(files):
            a.add_encoded(i, f.read_bytes())
        ra = session.classify(a)
    # The same cells as arrays: decoded by the library itself (embed is of the pixels),
    # so compare arrays with strides against their contiguous copies.
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    padded = [np.pad(im, ((0, 0), (0, 3), (0, 0)))[:, :64] for im in imgs]  # row stride 201
    flipped = [np.ascontiguousarray(im[::-1])[::-1] for im in imgs]  # negative row stride
    rgba = [np.dstack([im, np.full((64, 64), 255, np.uint8)]) for im in imgs]
    base = session.classify(imgs)
    for variant in (padded, flipped, rgba):
        r = session.classify(variant)
        np.testing.assert_array_equal(r.probabilities, base.probabilities)
    with amlmil.Bag() as b:
        for i, im in enumerate(imgs):
            b.add(i, im[:, :, ::-1], order="bgr")
        np.testing.assert_array_equal(session.classify(b).probabilities, base.probabilities)
    assert ra.num_cells == len(files)
    np.testing.assert_array_equal(base.cell_ids, np.arange(5, dtype=np.uint64))


def test_embed_and_classify_features(session):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    e = session.embed(imgs)
    assert e.shape == (3, 512) and e.dtype == np.float32 and np.isfinite(e).all()
    assert not np.array_equal(e[0], e[1])
    f = rng.standard_normal((4, session.feature_map_len)).astype(np.float32)
    r = session.classify_features(f, cell_ids=[10, 11, 12, 13])
    assert list(r.cell_ids) == [10, 11, 12, 13]
    r2 = session.classify_features(f)
    np.testing.assert_array_equal(r.probabilities, r2.probabilities)
    f[0, 0] = np.nan
    with pytest.raises(amlmil.AmlmilError) as e:
        session.classify_features(f)
    assert e.value.status == amlmil.Status.NON_FINITE


def test_missing_files_name_the_path(models, tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(amlmil.AmlmilError) as e:
        amlmil.Session(missing, models[1])
    assert e.value.status == amlmil.Status.IO and e.value.status_name == "AMLMIL_STATUS_IO"
    assert str(missing) in e.value.message
    with amlmil.Bag() as bag, pytest.raises(amlmil.AmlmilError) as e:
        bag.add_file(0, tmp_path / "cell.tif")
    assert e.value.status == amlmil.Status.IO and "cell.tif" in e.value.message
    with amlmil.Bag() as bag, pytest.raises(amlmil.AmlmilError) as e:
        bag.add_encoded(0, b"not an image")
    assert e.value.status == amlmil.Status.DECODE


def test_library_errors(session):
    with amlmil.Bag() as bag:
        with pytest.raises(amlmil.AmlmilError) as e:
            session.classify(bag)
        assert e.value.status == amlmil.Status.EMPTY_BAG
        im = np.zeros((8, 8, 3), np.uint8)
        bag.add(7, im)
        with pytest.raises(amlmil.AmlmilError) as e:
            bag.add(7, im)
        assert e.value.status == amlmil.Status.INVALID_ARGUMENT and len(bag) == 1
        bag.clear()
        assert len(bag) == 0
    with pytest.raises(amlmil.AmlmilError, match="device"):
        amlmil.Session("a", "b", device="tpu")


def test_bad_arguments_are_refused_before_any_c_call(session, monkeypatch):
    def forbidden(*a):
        raise AssertionError("C was called")

    bag = amlmil.Bag()
    monkeypatch.setattr(_native.lib(), "amlmil_bag_add_pixels", forbidden)
    monkeypatch.setattr(_native.lib(), "amlmil_session_classify_features", forbidden)
    with pytest.raises(TypeError, match="pixels.*uint8.*float32"):
        bag.add(0, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"pixels.*\(8, 8\)"):
        bag.add(0, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="pixels"):
        bag.add(0, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="pixels"):
        bag.add(0, [[1, 2, 3]])
    with pytest.raises(ValueError, match="cell_id"):
        bag.add(-1, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"bag\[1\]"):
        session.classify([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(TypeError, match="features.*float32"):
        session.classify_features(np.zeros((2, session.feature_map_len)))
    with pytest.raises(ValueError, match="features"):
        session.classify_features(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="cell_ids"):
        session.classify_features(np.zeros((2, session.feature_map_len), np.float32), cell_ids=[1])
    with pytest.raises(ValueError, match="NUL"):
        bag.add_file(0, "a\0b")
    bag.close()
    with pytest.raises(ValueError, match="closed"):
        len(bag)


def test_threads_equal_serial(session, cohort):
    bags = []
    for d in bag_dirs(cohort[0])[:4]:
        b = amlmil.Bag()
        for i, f in enumerate(cell_files(d)):
            b.add_file(i, f)
        bags.append(b)
    serial = [session.classify(b) for b in bags]
    results = {}
    errors = []

    def work(t):
        try:
            for k in range(3):
                for j, b in enumerate(bags):
                    results[(t, k, j)] = session.classify(b)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8 * 3 * len(bags)
    for (_, _, j), r in results.items():
        np.testing.assert_array_equal(r.probabilities, serial[j].probabilities)
        np.testing.assert_array_equal(r.attention(0, raw=True), serial[j].attention(0, raw=True))
    for b in bags:
        b.close()


def test_progress_cancel_and_callback_exceptions(session):
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    seen = []
    session.classify(imgs, progress=seen.append)
    assert [p.done for p in seen][-1] == 8 and all(p.stage == "encode" and p.total == 8 for p in seen)
    calls = []
    with pytest.raises(amlmil.Cancelled) as e:
        session.classify(imgs, progress=lambda p: calls.append(p) or True)
    assert e.value.status == amlmil.Status.CANCELLED and isinstance(e.value, amlmil.AmlmilError)
    assert len(calls) == 1

    class Boom(Exception):
        pass

    n = []

    def boom(p):
        n.append(p)
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        session.classify(imgs, progress=boom)
    assert len(n) == 1
    with pytest.raises(Boom):
        session.embed(imgs, progress=boom)
    # The session is fine afterwards.
    np.testing.assert_array_equal(session.classify(imgs).probabilities, session.classify(imgs).probabilities)


def test_close_is_refused_while_in_use(models):
    s = amlmil.Session(*models, options=amlmil.SessionOptions(warm_up=False))
    imgs = [np.zeros((64, 64, 3), np.uint8)] * 4
    with pytest.raises(RuntimeError, match="still running"):
        s.classify(imgs, progress=lambda p: s.close())
    s.close()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.classify(imgs)


CTRL_C = r"""
import os, signal, sys, threading, time
import numpy as np, amlmil
# A process started in the background by a shell without job control inherits
# SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
s = amlmil.Session(sys.argv[1], sys.argv[2], options=amlmil.SessionOptions(batch_size=1, warm_up=False))
imgs = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(20)]
t0 = time.time(); s.classify(imgs); per_cell = (time.time() - t0) / 20
# Enough cells for the call to last ~4 s whatever the machine's speed or load,
# interrupted a tenth of the way in.
n = max(400, int(4.0 / per_cell))
imgs = imgs * (n // 20 + 1)
threading.Timer(0.1 * per_cell * len(imgs), os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.time()
try:
    s.classify(imgs)
    print("finished", time.time() - t0, per_cell * len(imgs), flush=True)
except KeyboardInterrupt:
    print("interrupted", time.time() - t0, per_cell * len(imgs), flush=True)
"""


def test_ctrl_c_cancels_a_call_without_a_callback(models, tmp_path):
    out = subprocess.run([sys.executable, "-c", CTRL_C, *map(str, models)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[0] == "interrupted", out.stdout + out.stderr
    assert float(words[1]) < 0.5 * float(words[2]), out.stdout  # cancelled, not run to the end
    assert "Exception ignored" not in out.stderr, out.stderr


def test_log_callback(models):
    records = []
    amlmil.set_log_callback(lambda lvl, target, msg: records.append((lvl, target, msg)), "info")
    try:
        amlmil.Session(*models, options=amlmil.SessionOptions(warm_up=False)).close()
    finally:
        amlmil.set_log_callback(None)
    assert records and all(isinstance(r[0], amlmil.LogLevel) and r[0] <= amlmil.LogLevel.INFO for r in records)
    n = len(records)
    amlmil.Session(*models, options=amlmil.SessionOptions(warm_up=False)).close()
    assert len(records) == n
    with pytest.raises(ValueError, match="level"):
        amlmil.set_log_callback(print, "loud")


def test_data_entry_points(cohort, models, tmp_path):
    out, summary = cohort
    assert summary
    check = amlmil.dataset_check(out, check_images=True)
    assert check["issues"] == [] and "summary" in check
    with pytest.raises(amlmil.AmlmilError) as e:
        amlmil.dataset_check(tmp_path / "none")
    assert "none" in e.value.message
    with pytest.raises(amlmil.AmlmilError, match="unknown|colour"):
        amlmil.synth_cohort(tmp_path / "x", {"colour": 1})
    rep = amlmil.import_model(models[0], tmp_path / "imported.safetensors")
    assert (tmp_path / "imported.safetensors").exists() and rep
    stages = []
    man = amlmil.extract_features(out, models[0], tmp_path / "feat", flips=False, device="cpu", progress=lambda p: stages.append(p.stage))
    assert man and set(stages) == {"extract"}
    with pytest.raises(amlmil.AmlmilError, match="method"):
        amlmil.pretrain({"dataset": str(out), "output": str(tmp_path / "pt")})
    with pytest.raises(amlmil.AmlmilError, match="bogus"):
        amlmil.experiment({"output": str(tmp_path / "ex"), "bogus": 1})
    with pytest.raises(TypeError, match="config"):
        amlmil.cross_validate(["not", "a", "dict"])


def test_train_mil_end_to_end(cohort, models, tmp_path):
    out, _ = cohort
    config = {"dataset": out, "encoder": models[0], "output": tmp_path / "tm", "folds": 3, "seeds": [0], "device": "cpu", "gallery_cells": 2,
              "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 2}}
    events = []
    report = amlmil.train_mil(config, 0, progress=events.append)
    assert report["epochs_run"] == 2 and report["fold"] == 0
    train = [e for e in events if e.stage == "train"]
    assert train and {e.epoch for e in train} == {0, 1} and {e.fold for e in train} == {0}
    assert all(e.loss is None or np.isfinite(e.loss) for e in train)
    mil = tmp_path / "tm" / "runs" / "seed0_fold0" / "mil.safetensors"
    with amlmil.Session(models[0], mil) as s:
        d = bag_dirs(out)[0]
        with amlmil.Bag() as bag:
            for i, f in enumerate(cell_files(d)):
                bag.add_file(i, f)
            r = s.classify(bag)
        assert r.num_cells == len(cell_files(d)) and abs(float(r.probabilities.sum()) - 1) < 1e-5
    with pytest.raises(amlmil.Cancelled):
        amlmil.cross_validate(dict(config, output=tmp_path / "cv"), progress=lambda p: p.stage == "train")


def test_ensemble_of_a_cross_validation(cohort, models, tmp_path):
    out, _ = cohort
    cv = tmp_path / "cv"
    config = {"dataset": out, "encoder": models[0], "output": cv, "folds": 3, "seeds": [0], "device": "cpu", "gallery_cells": 2,
              "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 2}}
    amlmil.cross_validate(config)
    report = amlmil.ensemble(cv, tmp_path / "ens.safetensors", seeds=[0])
    assert report["heads"] == 3 and [m["fold"] for m in report["members"]] == [0, 1, 2]
    files = cell_files(bag_dirs(out)[0])
    results = []
    for mil in [tmp_path / "ens.safetensors"] + [cv / "runs" / f"seed0_fold{f}" / "mil.safetensors" for f in range(3)]:
        with amlmil.Session(models[0], mil, device="cpu") as s:
            with amlmil.Bag() as bag:
                for i, f in enumerate(files):
                    bag.add_file(i, f)
                results.append((s.model_info().num_heads, s.classify(bag)))
    assert [n for n, _ in results] == [3, 1, 1, 1]
    ens, heads = results[0][1], [r for _, r in results[1:]]
    assert np.allclose(ens.probabilities, np.mean([h.probabilities for h in heads], axis=0), atol=1e-5)
    for k in range(len(ens.classes)):
        assert np.allclose(ens.attention(k), np.mean([h.attention(k) for h in heads], axis=0), atol=1e-5)
    with pytest.raises(amlmil.AmlmilError, match="no finished runs"):
        amlmil.ensemble(cv, tmp_path / "none.safetensors", seeds=[5])


def test_html_page_of_a_bag(session, cohort):
    files = cell_files(bag_dirs(cohort[0])[0])
    with amlmil.Bag() as bag:
        for i, f in enumerate(files):
            bag.add_file(i, f)
        page = session.html(bag, name="patient <1>", top_k=2)
        with amlmil.Bag() as streamed:
            streamed.stream(session)
            streamed.add_file(0, files[0])
            with pytest.raises(amlmil.AmlmilError, match="streaming bag"):
                session.html(streamed)
    assert page.startswith("<!DOCTYPE html>") and "Research software" in page
    assert "patient &lt;1&gt;" in page
    # Every cell once in the grid, two tiles for each of the five classes.
    assert page.count("data:image/jpeg;base64,") == len(files) + 5 * 2


def test_example_program(models, cohort, session):
    d = bag_dirs(cohort[0])[1]
    out = subprocess.run([sys.executable, str(REPO / "examples/python/classify.py"), str(models[0]), str(models[1]), str(d)], capture_output=True, text=True, check=True).stdout
    with amlmil.Bag() as bag:
        files = cell_files(d)
        for i, f in enumerate(files):
            bag.add_file(i, f)
        r = session.classify(bag)
    lines = out.splitlines()
    assert lines[0] == f"predicted: {r.predicted_class}"
    for c, p in zip(r.classes, r.probabilities):
        assert f"  {c:<14} {p:.4f}" in lines
    top = lines[lines.index("top cells:") + 1:]
    assert len(top) == min(5, len(files))
    for line, cell in zip(top, r.top_cells(r.predicted, 5)):
        assert line == f"  {files[cell.index].name}  cell {cell.cell_id}  attention {cell.attention:.4f}"


def test_readme_shows_the_example_verbatim():
    readme = (REPO / "README.md").read_text()
    marker = "<!-- program: examples/python/classify.py -->\n```python\n"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("\n```", 1)[0] + "\n"
    assert block == (REPO / "examples/python/classify.py").read_text()


def test_model_info_and_feature_maps_round_trip(session, models):
    info = session.model_info()
    assert len(info.classes) == 5 and info.classes[0] == "PML_RARA"
    assert info.input_size == 64 and info.feature_dim == 512 and info.feature_map == (512, 2, 2)
    assert info.device == "cpu" and len(info.encoder_sha256) == 64 and len(info.mil_sha256) == 64
    assert info.encoder_architecture == "resnet18" and np.isnan(info.pixel_size_um)
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    maps = session.feature_maps(imgs)
    assert maps.shape == (3, session.feature_map_len) and maps.dtype == np.float32
    cached = session.classify_features(maps, cell_ids=[0, 1, 2])
    direct = session.classify(imgs)
    np.testing.assert_allclose(cached.probabilities, direct.probabilities, atol=1e-6)
    with pytest.raises(amlmil.AmlmilError, match="appears earlier"):
        session.classify_features(maps, cell_ids=[0, 1, 0])
    session.cancel()  # nothing running: later calls are unaffected
    np.testing.assert_array_equal(session.classify(imgs).probabilities, direct.probabilities)
    assert amlmil.training_cancel() is False


BF16_REFUSED = r"""
import sys, amlmil
try:
    amlmil.Session(sys.argv[1], sys.argv[2], options=amlmil.SessionOptions(device="cpu", precision="bf16"))
except amlmil.AmlmilError as e:
    print(e.status, e)
"""


def test_bf16_on_the_cpu_where_it_is_native_and_refused_naming_why_elsewhere(models):
    flags = Path("/proc/cpuinfo").read_text().split()
    native = ("avx512_bf16" in flags or "amx_bf16" in flags) and os.environ.get("AMLMIL_CPU_BF16") != "0"
    imgs = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(5)]
    if native:
        bf16 = amlmil.Session(*models, options=amlmil.SessionOptions(device="cpu", precision="bf16"))
        fp32 = amlmil.Session(*models, options=amlmil.SessionOptions(device="cpu"))
        with bf16, fp32:
            assert (bf16.model_info().precision, fp32.model_info().precision) == ("bf16", "fp32")
            a, b = fp32.classify(imgs), bf16.classify(imgs)
            diff = np.abs(a.probabilities - b.probabilities).max()
            assert 0 < diff < 0.05, diff
    env = {**os.environ, "AMLMIL_CPU_BF16": "0"}
    out = subprocess.run([sys.executable, "-c", BF16_REFUSED, *map(str, models)], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"{int(amlmil.Status.UNSUPPORTED)} ") and "AMLMIL_CPU_BF16=0" in out, out


def test_rust_plugin_through_options(models):
    plugin = Path(_native.library_path()).parent / "libamlmil_grey_world.so"
    assert plugin.exists(), plugin
    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    imgs.append(np.full((64, 64, 3), 200, np.uint8))  # a blank crop
    opts = amlmil.SessionOptions(device="cpu", plugin_path=plugin, plugin_config='{"min_contrast": 2.0}')
    with amlmil.Session(*models, options=opts) as s:
        r = s.classify(imgs)
    assert list(r.cell_ids) == [0, 1], "the blank crop is dropped"
    with pytest.raises(amlmil.AmlmilError) as e:
        amlmil.Session(*models, options=amlmil.SessionOptions(plugin_path="/nonexistent/plugin.so"))
    assert e.value.status == amlmil.Status.PLUGIN and "/nonexistent/plugin.so" in e.value.message


def test_a_vit_encoder_classifies(tmp_path, cohort):
    """A ViT-S/14 (DINOv2 layout, class-token features) with a pooled head."""
    enc, mil = tmp_path / "vit.safetensors", tmp_path / "vit_mil.safetensors"
    subprocess.run([cli(), "init-checkpoint", "encoder", "--arch", "vit_s14", "--input-size", "56", "--seed", "1",
                    "--out", str(enc)], check=True, capture_output=True)
    subprocess.run([cli(), "init-checkpoint", "mil", "--arch", "vit_s14", "--input-size", "56", "--g", "pooled",
                    "--seed", "2", "--out", str(mil)], check=True, capture_output=True)
    files = cell_files(bag_dirs(cohort[0])[0])
    with amlmil.Session(enc, mil) as s:
        info = s.model_info()
        assert info.encoder_architecture == "vit_s14" and info.feature_map == (384, 1, 1)
        assert info.input_size == 56 and s.feature_map_len == 384
        with amlmil.Bag() as bag:
            for i, f in enumerate(files):
                bag.add_file(i, f)
            r = s.classify(bag)
        assert abs(float(np.sum(r.probabilities)) - 1.0) < 1e-5 and len(r.cell_ids) == len(files)
        maps = s.feature_maps([np.zeros((64, 64, 3), np.uint8)] * 2)
        assert maps.shape == (2, 384)
