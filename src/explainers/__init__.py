"""explainers: learned explainers (LTE/pLTE, LETA) for image classifiers, baselines and evaluation."""

from explainers._compat import patch_torchvision

patch_torchvision()  # before anything imports transformers (it imports torchvision when present)

from explainers._version import __version__  # noqa: E402
from explainers.data import open_dataset  # noqa: E402
from explainers.errors import DatasetError, ExplainersError, ModelError  # noqa: E402
from explainers.models import ExplaineeAdapter, load_explainee  # noqa: E402

_LAZY = {
    "LTEExplainer": "explainers.learned",
    "LETAExplainer": "explainers.learned",
    "get_method": "explainers.methods",
}


# Subpackages reachable as attributes (``explainers.metrics``) without importing them all up front.
_SUBMODULES = frozenset(
    {
        "benchmark", "cli", "data", "demo", "devices", "distributed", "errors", "explain", "heatmap", "io",
        "learned", "maps", "methods", "metrics", "models", "provenance", "training",
    }
)


def __getattr__(name: str):  # the learned explainers, methods and subpackages load on first use
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"explainers.{name}")
    raise AttributeError(f"module 'explainers' has no attribute {name!r}")


__all__ = [
    "DatasetError",
    "ExplaineeAdapter",
    "ExplainersError",
    "LETAExplainer",
    "LTEExplainer",
    "ModelError",
    "__version__",
    "get_method",
    "load_explainee",
    "open_dataset",
]
