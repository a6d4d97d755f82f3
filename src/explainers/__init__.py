"""explainers: learned explainers (LTE/pLTE, LETA) for image classifiers, baselines and evaluation."""

from explainers._compat import patch_torchvision

patch_torchvision()  # before anything imports transformers (it imports torchvision when present)

from explainers.data import open_dataset  # noqa: E402
from explainers.errors import DatasetError, ExplainersError, ModelError  # noqa: E402
from explainers.models import ExplaineeAdapter, load_explainee  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DatasetError",
    "ExplaineeAdapter",
    "ExplainersError",
    "ModelError",
    "__version__",
    "load_explainee",
    "open_dataset",
]
