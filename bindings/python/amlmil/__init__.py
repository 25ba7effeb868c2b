"""Python side of libamlmil.

* :mod:`amlmil.torchfile` reads pickled PyTorch files (``.pth``, ``.pt``,
  ``.pth.tar``, ``.torch``, ``.ckpt``) without running their code, for
  ``amlmil import``.
* :mod:`amlmil.models` opens libamlmil checkpoints as PyTorch modules: the
  encoder as a torchvision ResNet trunk, the attention-MIL head as
  :class:`amlmil.models.AttentionMil`.
* :mod:`amlmil.tool` is the command line the Rust CLI calls
  (``python -m amlmil.tool --help``).

Only ``numpy`` and ``safetensors`` are required to import the package; the
modules above need ``torch`` (and ``torchvision`` for the encoder, ``onnx`` +
``onnxruntime`` for ONNX export).
"""

__version__ = "0.1.0"
