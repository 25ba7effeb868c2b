"""High-level Python API over the C ABI of ``libamlmil.so`` (see ``include/amlmil.h``).

Every operation is a call into the library through :mod:`amlmil._native`;
results are copied into numpy arrays and plain Python objects at once.

Threads: ctypes releases the GIL during every foreign call, so one
:class:`Session` classifies from several Python threads at once (the C ABI
allows concurrent calls on a ``const`` session).

Progress and cancellation: every long call gets an internal progress
trampoline. A user ``progress`` callable receives a :class:`Progress` and
returns ``None``/``False`` to go on or ``True`` to cancel (then
:class:`~amlmil.errors.Cancelled` is raised). An exception raised inside the
callable -- ``KeyboardInterrupt`` from Ctrl-C included -- cancels the C call
and is re-raised once it has returned; it never unwinds through C. Without a
callable, a Ctrl-C that arrives during the call is noticed at the library's
next progress report, which cancels the call, and ``KeyboardInterrupt`` is
raised when it returns.
"""


from __future__ import annotations

import ctypes
import dataclasses
import json
import operator
import threading
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _native
from ._native import check, lib
from .errors import Cancelled, Status
from ._plumbing import (  # noqa: F401 (Progress and ProgressCallback are re-exported)
    ClassKey,
    PathLike,
    Progress,
    ProgressCallback,
    _cstr,
    _Handle,
    _Owner,
    _Trampoline,
    _u64,
    _Using,
)


__all__ = [
    "Progress",
    "ProgressCallback",
    "SessionOptions",
    "Session",
    "ModelInfo",
    "Bag",
    "Result",
    "RankedCell",
]


# -------------------------------------------------------------------- bag


_FORMATS = {("rgb", 3): 0, ("rgb", 4): 1, ("bgr", 3): 2, ("bgr", 4): 3}


def _pixels(pixels: Any, name: str, order: str = "rgb"):
    """Validates an image array; returns (array kept alive, ptr, len, w, h, stride, format)."""
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"{name}: expected a numpy uint8 array of shape (H, W, 3) or (H, W, 4), got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (8-bit RGB or RGBA), got {pixels.dtype}")
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected shape (H, W, 3) for RGB8 or (H, W, 4) for RGBA8, got {pixels.shape}")
    h, w, ch = pixels.shape
    if h == 0 or w == 0:
        raise ValueError(f"{name}: the image is empty (shape {pixels.shape})")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order: expected 'rgb' or 'bgr', got {order!r}")
    s0, s1, s2 = pixels.strides
    if not (s2 == 1 and s1 == ch and s0 >= w * ch):
        pixels = np.ascontiguousarray(pixels)  # each row must be packed pixels
        s0 = pixels.strides[0]
    length = s0 * (h - 1) + w * ch
    return pixels, pixels.ctypes.data, length, w, h, s0, _FORMATS[(order, ch)]


class Bag(_Owner):
    """A bag of cells (``amlmil_bag``) for one patient. A context manager;
    ``close()`` frees it (also done when it is garbage-collected)."""

    def __init__(self) -> None:
        out = ctypes.c_void_p()
        check(lib().amlmil_bag_new(ctypes.byref(out)), "amlmil_bag_new")
        self._h = _Handle(out.value, "amlmil_bag_free", "bag")
        # Serialises changes with `embed`, which needs the count to stay put.
        self._mutate = threading.RLock()
        self._session: Optional[Session] = None

    def add(self, cell_id: int, pixels: npt.NDArray[np.uint8], *, order: str = "rgb") -> None:
        """Adds a cell from an ``HxWx3`` (RGB8) or ``HxWx4`` (RGBA8) uint8 array
        of any strides (``order="bgr"`` for BGR8/BGRA8). The pixels are copied."""
        cid = _u64(cell_id, "cell_id")
        arr, ptr, length, w, h, stride, fmt = _pixels(pixels, "pixels", order)
        with self._mutate, _Using(self._h) as (bag,):
            check(lib().amlmil_bag_add_pixels(bag, cid, ptr, length, w, h, stride, fmt), "amlmil_bag_add_pixels")
        del arr

    def add_encoded(self, cell_id: int, data: Union[bytes, bytearray, memoryview]) -> None:
        """Adds a cell from encoded TIFF, PNG or JPEG bytes."""
        cid = _u64(cell_id, "cell_id")
        try:
            buf = np.frombuffer(data, dtype=np.uint8)
        except (TypeError, ValueError) as e:
            raise TypeError(f"data: expected contiguous bytes of an encoded image, got {type(data).__name__} ({e})") from None
        with self._mutate, _Using(self._h) as (bag,):
            check(lib().amlmil_bag_add_encoded(bag, cid, buf.ctypes.data, buf.size), "amlmil_bag_add_encoded")

    def add_file(self, cell_id: int, path: PathLike) -> None:
        """Adds a cell from a TIFF, PNG or JPEG file."""
        cid = _u64(cell_id, "cell_id")
        p = _cstr(path, "path")
        with self._mutate, _Using(self._h) as (bag,):
            check(lib().amlmil_bag_add_file(bag, cid, p), "amlmil_bag_add_file")

    def __len__(self) -> int:
        n = ctypes.c_size_t()
        with _Using(self._h) as (bag,):
            check(lib().amlmil_bag_len(bag, ctypes.byref(n)), "amlmil_bag_len")
        return n.value

    def clear(self) -> None:
        """Removes every cell (a streaming bag keeps streaming)."""
        with self._mutate, _Using(self._h) as (bag,):
            check(lib().amlmil_bag_clear(bag), "amlmil_bag_clear")

    def stream(self, session: "Session") -> None:
        """Makes this empty bag stream its cells to ``session``'s encoder as they
        are added (``amlmil_bag_stream``)."""
        if not isinstance(session, Session):
            raise TypeError(f"session: expected a Session, got {type(session).__name__}")
        with self._mutate, _Using(self._h, session._h) as (bag, s):
            check(lib().amlmil_bag_stream(bag, s), "amlmil_bag_stream")
        self._session = session

    @classmethod
    def from_arrays(cls, images: Iterable[npt.NDArray[np.uint8]], name: str = "images") -> "Bag":
        """A bag of ``images`` with cell ids 0, 1, …; every array is checked
        before the bag is made."""
        checked = []
        for i, im in enumerate(images):
            checked.append(_pixels(im, f"{name}[{i}]"))
        bag = cls()
        try:
            with _Using(bag._h) as (b,):
                for i, (_arr, ptr, length, w, h, stride, fmt) in enumerate(checked):
                    check(lib().amlmil_bag_add_pixels(b, i, ptr, length, w, h, stride, fmt), "amlmil_bag_add_pixels")
        except BaseException:
            bag.close()
            raise
        return bag


# ------------------------------------------------------------------ result


class RankedCell(NamedTuple):
    """One cell of an attention ranking (``amlmil_ranked_cell``)."""

    cell_id: int
    index: int  #: position in the bag (order of addition)
    attention: float  #: softmax attention for the ranked class


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class Result:
    """A classification, copied out of ``amlmil_result`` (which is freed at once)."""

    classes: List[str]
    probabilities: npt.NDArray[np.float32]
    logits: npt.NDArray[np.float32]
    predicted: int
    cell_ids: npt.NDArray[np.uint64]

    def __init__(self, ptr: int):
        L = lib()
        c = L.amlmil_result_num_classes(ptr)
        n = L.amlmil_result_num_cells(ptr)
        self.classes = [L.amlmil_result_class_name(ptr, i).decode("utf-8", "replace") for i in range(c)]
        self.probabilities = np.empty(c, np.float32)
        check(L.amlmil_result_probabilities(ptr, self.probabilities.ctypes.data, c), "amlmil_result_probabilities")
        self.logits = np.empty(c, np.float32)
        check(L.amlmil_result_logits(ptr, self.logits.ctypes.data, c), "amlmil_result_logits")
        pred = ctypes.c_size_t()
        check(L.amlmil_result_predicted_class(ptr, ctypes.byref(pred)), "amlmil_result_predicted_class")
        self.predicted = int(pred.value)
        self.cell_ids = np.empty(n, np.uint64)
        check(L.amlmil_result_cell_ids(ptr, self.cell_ids.ctypes.data, n), "amlmil_result_cell_ids")
        self._attention = np.empty((2, c, n), np.float32)
        ranked = (_native.RankedCellC * max(n, 1))()
        self._rank_index = np.empty((c, n), np.int64)
        self._rank_attention = np.empty((c, n), np.float32)
        for k in range(c):
            for kind in (0, 1):
                check(L.amlmil_result_attention(ptr, k, kind, self._attention[kind, k].ctypes.data, n), "amlmil_result_attention")
            written = ctypes.c_size_t()
            check(L.amlmil_result_top_cells(ptr, k, n, ranked, n, ctypes.byref(written)), "amlmil_result_top_cells")
            for j in range(written.value):
                self._rank_index[k, j] = ranked[j].index
                self._rank_attention[k, j] = ranked[j].attention
        out = ctypes.c_void_p()
        check(L.amlmil_result_to_json(ptr, ctypes.byref(out)), "amlmil_result_to_json")
        self._json = _native.take_string(out)
        for a in (self.probabilities, self.logits, self.cell_ids, self._attention):
            _readonly(a)

    @property
    def predicted_class(self) -> str:
        return self.classes[self.predicted]

    @property
    def num_cells(self) -> int:
        return int(self.cell_ids.size)

    def __len__(self) -> int:
        return self.num_cells

    def class_index(self, cls: ClassKey) -> int:
        """The index of a class given by index or name."""
        if isinstance(cls, str):
            try:
                return self.classes.index(cls)
            except ValueError:
                raise ValueError(f"class: {cls!r} is not one of {self.classes}") from None
        try:
            i = operator.index(cls)
        except TypeError:
            raise TypeError(f"class: expected a class index or name, got {type(cls).__name__}") from None
        if not 0 <= i < len(self.classes):
            raise IndexError(f"class: index {i} is outside 0..{len(self.classes) - 1}")
        return i

    def attention(self, cls: ClassKey, raw: bool = False) -> npt.NDArray[np.float32]:
        """Attention of every cell (bag order) for ``cls``: softmax over the bag,
        or the scores before it with ``raw=True``. Read-only."""
        return self._attention[1 if raw else 0, self.class_index(cls)]

    def top_cells(self, cls: ClassKey, k: int = 5) -> List[RankedCell]:
        """The ``k`` cells with the highest attention for ``cls``, highest first
        (ties in bag order), as the library ranked them."""
        c = self.class_index(cls)
        k = operator.index(k)
        if k < 0:
            raise ValueError(f"k: must not be negative, got {k}")
        k = min(k, self.num_cells)
        return [
            RankedCell(int(self.cell_ids[i]), int(i), float(a))
            for i, a in zip(self._rank_index[c, :k], self._rank_attention[c, :k])
        ]

    def to_json(self) -> str:
        """``amlmil_result_to_json``'s JSON."""
        return self._json

    def as_dict(self) -> Dict[str, Any]:
        return json.loads(self._json)

    def __repr__(self) -> str:
        return f"<amlmil.Result {self.predicted_class} p={float(self.probabilities[self.predicted]):.3f} cells={self.num_cells}>"


def _take_result(out: ctypes.c_void_p) -> Result:
    try:
        return Result(out.value)
    finally:
        lib().amlmil_result_free(out.value)


# ----------------------------------------------------------------- session


_PRECISIONS = {"fp32": 0, "fp16": 1, "bf16": 2}


def _default(name: str) -> Callable[[], Any]:
    def get():
        d = _native.options_defaults()
        v = getattr(d, name)
        if name == "device":
            return v.decode("utf-8") if v else "auto"
        if name == "precision":
            return {b: a for a, b in _PRECISIONS.items()}.get(v, v)
        if name in ("channels_last", "fused", "warm_up"):
            return bool(v)
        return int(v)

    return get


@dataclasses.dataclass
class SessionOptions:
    """``amlmil_session_options``; defaults come from ``amlmil_session_options_init``."""

    device: str = dataclasses.field(default_factory=_default("device"))  #: "auto", "cpu", "cuda", "cuda:N"
    precision: Union[str, int] = dataclasses.field(default_factory=_default("precision"))  #: "fp32", "fp16" (CUDA), "bf16" (CUDA; CPUs with avx512_bf16/AMX)
    batch_size: int = dataclasses.field(default_factory=_default("batch_size"))
    num_threads: int = dataclasses.field(default_factory=_default("num_threads"))  #: 0 = libtorch's default
    channels_last: bool = dataclasses.field(default_factory=_default("channels_last"))
    fused: bool = dataclasses.field(default_factory=_default("fused"))
    warm_up: bool = dataclasses.field(default_factory=_default("warm_up"))
    #: Most cells one call takes; more raise AmlmilError with Status.LIMIT.
    max_cells_per_bag: int = dataclasses.field(default_factory=_default("max_cells_per_bag"))
    #: Most bytes of encoder working memory per batch; 0 = half the physical memory.
    max_batch_bytes: int = dataclasses.field(default_factory=_default("max_batch_bytes"))
    #: A Rust preprocessing plugin (``plugins/interface``) loaded by the session, or None.
    plugin_path: Optional[PathLike] = None
    #: Its configuration string (JSON by convention).
    plugin_config: str = ""

    def _to_c(self):
        c = _native.options_defaults()
        device = _cstr(self.device, "options.device")
        c.device = device
        if isinstance(self.precision, str):
            if self.precision not in _PRECISIONS:
                raise ValueError(f"options.precision: expected one of {list(_PRECISIONS)}, got {self.precision!r}")
            c.precision = _PRECISIONS[self.precision]
        else:
            c.precision = _u64(self.precision, "options.precision")
        for name in ("batch_size", "num_threads"):
            v = _u64(getattr(self, name), f"options.{name}")
            if v >= 2**32:
                raise ValueError(f"options.{name}: {v} does not fit in 32 bits")
            setattr(c, name, v)
        for name in ("max_cells_per_bag", "max_batch_bytes"):
            setattr(c, name, _u64(getattr(self, name), f"options.{name}"))
        for name in ("channels_last", "fused", "warm_up"):
            setattr(c, name, 1 if getattr(self, name) else 0)
        keep = [device]
        if self.plugin_path is not None:
            path = _cstr(self.plugin_path, "options.plugin_path")
            config = _cstr(self.plugin_config, "options.plugin_config")
            c.plugin_path, c.plugin_config = path, config
            keep += [path, config]
        return c, keep  # keep the strings alive while `c` is used


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Typed metadata of a session's models (``amlmil_model_info``)."""

    classes: List[str]
    input_size: int  #: side of the square encoder input, px
    feature_dim: int
    feature_map: Tuple[int, int, int]  #: channels, height, width
    pixel_size_um: float  #: NaN when the checkpoint does not record it
    encoder_architecture: str
    encoder_method: str
    encoder_sha256: str  #: "" for checkpoints written before checksums
    mil_method: str
    mil_sha256: str
    mil_tool: str
    device: str
    precision: str  #: the encoder's arithmetic: "fp32", "fp16" or "bf16"
    num_heads: int = 1  #: MIL heads: 1, or K >= 2 for an ensemble (:func:`amlmil.ensemble`)


class Session(_Owner):
    """An encoder and an attention-MIL head loaded on one device (``amlmil_session``).

    A context manager; ``close()`` frees it (refused while calls on it run in other
    threads); garbage collection frees it too. Safe to use from several threads.
    """

    def __init__(self, encoder_path: PathLike, mil_path: PathLike, *, device: Optional[str] = None, options: Optional[SessionOptions] = None):
        if options is None:
            options = SessionOptions()
        elif not isinstance(options, SessionOptions):
            raise TypeError(f"options: expected SessionOptions, got {type(options).__name__}")
        if device is not None:
            options = dataclasses.replace(options, device=device)
        enc = _cstr(encoder_path, "encoder_path")
        mil = _cstr(mil_path, "mil_path")
        c, _keep = options._to_c()
        out = ctypes.c_void_p()
        check(lib().amlmil_session_new(enc, mil, ctypes.byref(c), ctypes.byref(out)), "amlmil_session_new")
        self._h = _Handle(out.value, "amlmil_session_free", "session")
        self.options = options
        with _Using(self._h) as (s,):
            self._feature_dim = int(lib().amlmil_session_feature_dim(s))
            self._feature_map_len = int(lib().amlmil_session_feature_map_len(s))
            j = ctypes.c_void_p()
            check(lib().amlmil_session_info(s, ctypes.byref(j)), "amlmil_session_info")
            self._info = json.loads(_native.take_string(j))

    @property
    def feature_dim(self) -> int:
        """Length of a cell's pooled feature vector (:meth:`embed`)."""
        return self._feature_dim

    @property
    def feature_map_len(self) -> int:
        """Floats per cell that :meth:`classify_features` expects."""
        return self._feature_map_len

    @property
    def info(self) -> Dict[str, Any]:
        """``amlmil_session_info``: device, classes, both manifests."""
        return json.loads(json.dumps(self._info))

    def _bag(self, bag: Union[Bag, Sequence[npt.NDArray[np.uint8]]]):
        if isinstance(bag, Bag):
            return bag, False
        if isinstance(bag, np.ndarray) or not isinstance(bag, Sequence):
            raise TypeError(f"bag: expected a Bag or a list of uint8 image arrays, got {type(bag).__name__}")
        return Bag.from_arrays(bag, "bag"), True

    def classify(self, bag: Union[Bag, Sequence[npt.NDArray[np.uint8]]], progress: Optional[ProgressCallback] = None) -> Result:
        """Classifies a :class:`Bag` (or a list of images, cell ids 0, 1, …)."""
        tramp = _Trampoline(progress)
        b, temporary = self._bag(bag)
        try:
            out = ctypes.c_void_p()
            with _Using(self._h, b._h) as (s, bp):
                status = lib().amlmil_session_classify(s, bp, tramp.c, None, ctypes.byref(out))
                err = _native.error(status, "amlmil_session_classify") if status != Status.OK else None
            result = _take_result(out) if err is None else None
            if tramp.error is not None:
                tramp.finish(status, "amlmil_session_classify")
            if err is not None:
                raise err
            assert result is not None
            return result
        finally:
            if temporary:
                b.close()

    def html(self, bag: Bag, name: str = "bag", top_k: int = 5) -> str:
        """Classifies a plain :class:`Bag` and returns the cytologist's page
        (``amlmil_result_to_html``): one self-contained HTML document with the
        subtype, probability bars, top-attention cell tiles per class, the bag
        sorted by attention, the provenance and the research-software warning."""
        if not isinstance(bag, Bag):
            raise TypeError(f"bag: expected amlmil.Bag, got {type(bag).__name__}")
        k = _u64(top_k, "top_k")
        if k >= 2**32:
            raise ValueError(f"top_k: {k} does not fit in 32 bits")
        c_name = _cstr(name, "name")
        out = ctypes.c_void_p()
        with _Using(self._h, bag._h) as (s, bp):
            check(lib().amlmil_session_classify(s, bp, _native.PROGRESS_CALLBACK(), None, ctypes.byref(out)), "amlmil_session_classify")
            try:
                page = ctypes.c_void_p()
                check(lib().amlmil_result_to_html(s, bp, out.value, c_name, k, ctypes.byref(page)), "amlmil_result_to_html")
                return _native.take_string(page)
            finally:
                lib().amlmil_result_free(out.value)

    def embed(self, bag: Union[Bag, Sequence[npt.NDArray[np.uint8]]], progress: Optional[ProgressCallback] = None) -> npt.NDArray[np.float32]:
        """Pooled encoder features of every cell: an ``(N, feature_dim)`` float32 array."""
        return self._encode_into(bag, progress, self._feature_dim, "amlmil_session_embed")

    def _encode_into(self, bag: Union[Bag, Sequence[npt.NDArray[np.uint8]]], progress: Optional[ProgressCallback], width: int, fn: str) -> npt.NDArray[np.float32]:
        """Runs the C encoder entry point ``fn`` over ``bag`` into a fresh ``(N, width)`` array."""
        tramp = _Trampoline(progress)
        b, temporary = self._bag(bag)
        try:
            with b._mutate:
                out = np.empty((len(b), width), np.float32)
                with _Using(self._h, b._h) as (s, bp):
                    status = getattr(lib(), fn)(s, bp, tramp.c, None, out.ctypes.data, out.size)
                    err = _native.error(status, fn) if status != Status.OK else None
            if tramp.error is not None:
                tramp.finish(status, fn)
            if err is not None:
                raise err
            return out
        finally:
            if temporary:
                b.close()

    def classify_features(self, features: npt.NDArray[np.float32], cell_ids: Optional[Sequence[int]] = None) -> Result:
        """Classifies precomputed encoder feature maps, ``(N, feature_map_len)`` float32."""
        if not isinstance(features, np.ndarray):
            raise TypeError(f"features: expected a numpy float32 array, got {type(features).__name__}")
        if features.dtype != np.float32:
            raise TypeError(f"features: expected dtype float32, got {features.dtype}")
        if features.ndim != 2 or features.shape[1] != self._feature_map_len:
            raise ValueError(f"features: expected shape (N, {self._feature_map_len}) (N cells x feature_map_len), got {features.shape}")
        feats = np.ascontiguousarray(features)
        n = feats.shape[0]
        ids_ptr = None
        ids = None
        if cell_ids is not None:
            ids_list = [_u64(v, f"cell_ids[{i}]") for i, v in enumerate(cell_ids)]
            if len(ids_list) != n:
                raise ValueError(f"cell_ids: {len(ids_list)} ids for {n} rows of features")
            ids = np.array(ids_list, dtype=np.uint64)
            ids_ptr = ids.ctypes.data
        out = ctypes.c_void_p()
        with _Using(self._h) as (s,):
            check(
                lib().amlmil_session_classify_features(s, feats.ctypes.data, feats.size, n, ids_ptr, ctypes.byref(out)),
                "amlmil_session_classify_features",
            )
        return _take_result(out)

    def feature_maps(self, bag: Union[Bag, Sequence[npt.NDArray[np.uint8]]], progress: Optional[ProgressCallback] = None) -> npt.NDArray[np.float32]:
        """Each cell's encoder feature map, ``(N, feature_map_len)`` float32: what
        :meth:`classify_features` takes, so features can be cached and classified later."""
        return self._encode_into(bag, progress, self._feature_map_len, "amlmil_session_feature_maps")

    def model_info(self) -> "ModelInfo":
        """Typed model metadata (``amlmil_session_model_info``)."""
        raw = _native.ModelInfoC()
        with _Using(self._h) as (s,):
            check(lib().amlmil_session_model_info(s, ctypes.byref(raw), ctypes.sizeof(raw)), "amlmil_session_model_info")
            classes = [lib().amlmil_session_class_name(s, i).decode("utf-8") for i in range(raw.num_classes)]
        text = lambda b: b.decode("utf-8") if b else ""  # noqa: E731
        return ModelInfo(
            classes=classes,
            input_size=raw.input_size,
            feature_dim=raw.feature_dim,
            feature_map=(raw.feature_map_channels, raw.feature_map_height, raw.feature_map_width),
            pixel_size_um=raw.pixel_size_um,
            encoder_architecture=text(raw.encoder_architecture),
            encoder_method=text(raw.encoder_method),
            encoder_sha256=text(raw.encoder_sha256),
            mil_method=text(raw.mil_method),
            mil_sha256=text(raw.mil_sha256),
            mil_tool=text(raw.mil_tool),
            device=text(raw.device),
            precision=text(raw.precision),
            num_heads=raw.num_heads,
        )

    def cancel(self) -> None:
        """Cancels the classify/embed calls running on this session now, from any
        thread (they raise :class:`Cancelled`); later calls run normally."""
        with _Using(self._h) as (s,):
            lib().amlmil_session_cancel(s)
