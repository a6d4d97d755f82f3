"""The package version, in a leaf module that any layer may import.

The version is declared once, in ``pyproject.toml``; installing the package records it in the
distribution's metadata, which is read here. Modules that write it into files (mask files, checkpoints,
reports) import it from here rather than from the package root.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("explainers")
except PackageNotFoundError:  # a source tree on sys.path that was never installed: say so in what we write
    __version__ = "0+unknown"

__all__ = ["__version__"]
