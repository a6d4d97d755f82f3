"""Files: mask files (HDF5) holding attribution maps for the metrics, atomic writes, output locks.

``MaskFile`` and friends load on first use, so that the modules that only write files atomically
(checkpoints, probes) do not import h5py.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MaskFile", "MaskFileError", "MaskFileWriter", "partial_path"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("explainers.io.maskfile"), name)
    raise AttributeError(f"module 'explainers.io' has no attribute {name!r}")
