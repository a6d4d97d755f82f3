"""explainers: learned explainers (LTE/pLTE, LETA) for image classifiers, baselines and evaluation."""

from explainers._compat import patch_torchvision

patch_torchvision()  # before anything imports transformers (it imports torchvision when present)

from explainers.data import open_dataset  # noqa: E402
from explainers.errors import DatasetError, ExplainersError, ModelError  # noqa: E402
from explainers.models import ExplaineeAdapter, load_explainee  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "LTEExplainer": "explainers.learned",
    "LETAExplainer": "explainers.learned",
    "get_method": "explainers.methods",
}


def __getattr__(name: str):  # the learned explainers and methods load on first use, not on import
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
