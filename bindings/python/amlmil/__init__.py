"""Python side of libamlmil.

* :mod:`amlmil.torchfile` reads pickled PyTorch files (``.pth``, ``.pt``,
  ``.pth.tar``, ``.torch``, ``.ckpt``) without running their code, for
  ``amlmil import``.
* :mod:`amlmil.models` opens libamlmil checkpoints as PyTorch modules: the
  encoder as a torchvision ResNet trunk, the attention-MIL head as
  :class:`amlmil.models.AttentionMil`.
* :mod:`amlmil.tool` is the command line the Rust CLI calls
  (``python -m amlmil.tool --help``).

* :mod:`amlmil.core` and :mod:`amlmil.functions` (both re-exported here)
  wrap the C ABI of ``libamlmil.so`` with ctypes: :class:`Session`,
  :class:`Bag`, :class:`Result` in the first; versions, the training and data
  entry points and log routing in the second (their shared machinery in
  ``amlmil._plumbing``). The library is loaded on first use, from
  ``$AMLMIL_LIBRARY``, else a ``libamlmil.so*`` next to this package, else the
  system loader.

Only ``numpy`` (and ``safetensors`` for :mod:`amlmil.models`) is needed to
import the package; :mod:`amlmil.torchfile`, :mod:`amlmil.models` and
:mod:`amlmil.tool` need ``torch`` (and ``torchvision`` for the encoder,
``onnx`` + ``onnxruntime`` for ONNX export). ``import amlmil`` imports no torch.
"""

from .errors import AbiMismatchError, AmlmilError, Cancelled, LibraryNotFoundError, Status
from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all
from .functions import *  # noqa: F401,F403
from .functions import __all__ as _functions_all
from ._native import ABI_VERSION, library_path

__all__ = ["AmlmilError", "Cancelled", "LibraryNotFoundError", "AbiMismatchError", "Status", "ABI_VERSION", "library_path", *_core_all, *_functions_all]

__version__ = "0.1.0"
