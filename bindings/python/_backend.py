"""A minimal in-tree PEP 517 build backend (pure-Python wheel of ``amlmil/``).

The set-up environment's setuptools (65) cannot build wheels without the
``wheel`` package, which it lacks; this backend needs only the standard library,
so ``pip install --no-build-isolation ./bindings/python`` works offline.
"""

import base64
import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _project():
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _files():
    pkg = ROOT / "amlmil"
    for p in sorted(pkg.iterdir()):
        if p.suffix == ".py" or p.name == "py.typed" or _is_library(p.name):
            yield p


def _is_library(name):
    """libamlmil.so* and bundled plugins (libamlmil_grey_world.so)."""
    return name.startswith("libamlmil") and ".so" in name


def _metadata(config_settings=None):
    """METADATA; a wheel that bundles the library also requires the torch its
    libtorch came from (config setting ``torch-requirement``, scripts/wheel.sh)."""
    p = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {p['version']}", f"Summary: {p['description']}", f"Requires-Python: {p['requires-python']}"]
    lines += [f"Requires-Dist: {d}" for d in p.get("dependencies", [])]
    torch = (config_settings or {}).get("torch-requirement")
    if torch and any(_is_library(f.name) for f in _files()):
        lines.append(f"Requires-Dist: {torch}")
    for extra, deps in p.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {d}; extra == "{extra}"' for d in deps]
    return "\n".join(lines) + "\n"


def _dist_info():
    p = _project()
    return f"{p['name']}-{p['version']}.dist-info"


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    d = Path(metadata_directory) / _dist_info()
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(_metadata(config_settings))
    return d.name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    p = _project()
    # A bundled libamlmil.so makes the wheel platform-specific.
    bundled = any(_is_library(f.name) for f in _files())
    tag = "py3-none-linux_x86_64" if bundled else "py3-none-any"
    name = f"{p['name']}-{p['version']}-{tag}.whl"
    info = _dist_info()
    records = []

    def add(zf, arc, data):
        zf.writestr(arc, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{arc},sha256={digest},{len(data)}")

    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in _files():
            add(zf, f"amlmil/{f.name}", f.read_bytes())
        add(zf, f"{info}/METADATA", _metadata(config_settings).encode())
        add(zf, f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: amlmil-backend\nRoot-Is-Purelib: {'false' if bundled else 'true'}\nTag: {tag}\n".encode())
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return name


def build_sdist(sdist_directory, config_settings=None):
    p = _project()
    base = f"{p['name']}-{p['version']}"
    name = f"{base}.tar.gz"
    with tarfile.open(Path(sdist_directory) / name, "w:gz") as tf:
        for rel in ["pyproject.toml", "_backend.py", *(f"amlmil/{f.name}" for f in _files() if not _is_library(f.name))]:
            tf.add(ROOT / rel, arcname=f"{base}/{rel}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata().encode()
        info.size = len(data)
        import io

        tf.addfile(info, io.BytesIO(data))
    return name
