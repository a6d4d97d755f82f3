"""Workarounds for the environment: a CPU-only torch next to a CUDA-built torchvision, and Python 3.10."""

from __future__ import annotations

import enum
import importlib.util
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    StrEnum = enum.StrEnum
else:  # pragma: no cover - Python 3.10 has no enum.StrEnum

    class StrEnum(str, enum.Enum):
        """Members are their string values: equal to, hashed, printed and JSON-encoded as those."""

        def __str__(self) -> str:
            return self.value

        __format__ = str.__format__

_torchvision_shim = None  # keeps the op library alive


def patch_torchvision() -> None:
    """Let a CPU-only torch import a CUDA-built torchvision (and so timm and transformers).

    PyPI's torchvision is built for CUDA; with a CPU torch its compiled ``_C`` extension fails to load
    and importing it raises ``operator torchvision::nms does not exist``. transformers imports
    torchvision when present, so this would break every import. Defining the two operator schemas
    that torchvision registers fake kernels for lets the pure-Python parts import; we never use
    ``torchvision.ops`` or ``torchvision.io``.
    """
    global _torchvision_shim
    if _torchvision_shim is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    for so in sorted(Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(so))
            return  # a working build: nothing to patch
        except (OSError, RuntimeError):
            break
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        return  # already defined (e.g. torchvision imported earlier and worked)
    _torchvision_shim = lib
