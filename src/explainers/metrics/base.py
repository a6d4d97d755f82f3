"""Metric interface, the per-batch evaluation context (shared, chunked forwards) and the name registry.

A metric scores one batch of images at a time and returns per-image values (and, for curve metrics, the
per-image curve; for pooled metrics, per-image counts that are summed over the dataset). Forwards the
metrics need are requested through :class:`BatchContext`, which runs them batched and chunked to
``max_batch`` images per forward, and caches them so that metrics reading the same perturbed images
(POS and deletion, NEG and neg-deletion, ADP and PIC) pay for them once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from explainers._compat import StrEnum
from explainers._registry import Registry
from explainers.errors import ExplainersError
from explainers.models.base import ExplaineeAdapter


@dataclass
class MetricInputs:
    """One batch, everything at the explainee's input size and on its device.

    images: B×3×H×W raw images in [0, 1] (what gets masked).
    maps: B×H×W float attribution maps (finite).
    classes: B long, the class each image is scored for (``target`` or ``predicted`` convention).
    clean_logits: B×C logits of the unperturbed images.
    gt: B×H×W bool ground-truth masks, or None.
    ignore: B×H×W bool pixels excluded from segmentation counts, or None.
    counter: B×H×W bool evidence of a competing class in the same image (the other object of a contrast
        scene), or None.
    """

    images: torch.Tensor
    maps: torch.Tensor
    classes: torch.Tensor
    clean_logits: torch.Tensor
    ids: list[str]
    gt: torch.Tensor | None = None
    ignore: torch.Tensor | None = None
    counter: torch.Tensor | None = None


@dataclass
class MetricBatch:
    """Per-image results of one metric on one batch."""

    values: np.ndarray  # [B] float64
    curves: np.ndarray | None = None  # [B, P] the curve behind an AUC
    counts: np.ndarray | None = None  # [B, K] additive counts for pooled metrics


class BatchContext:
    """A batch plus the machinery metrics share: chunked no-grad forwards and a per-batch cache."""

    def __init__(self, adapter: ExplaineeAdapter, inputs: MetricInputs, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ExplainersError(f"max_batch must be at least 1, got {max_batch}")
        self.adapter = adapter
        # Metrics only read these; detached so no metric builds an autograd graph by accident.
        inputs.clean_logits = inputs.clean_logits.detach().float()
        inputs.maps = inputs.maps.detach().float()
        self.inputs = inputs
        self.max_batch = int(max_batch)
        self._cache: dict[Hashable, Any] = {}
        #: Images sent through the explainee for this batch (for cost accounting and tests).
        self.forwarded = 0

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of raw [0,1] images (normalised here), in chunks of at most ``max_batch``."""
        self.forwarded += len(images)
        return chunked_logits(self.adapter, images, self.max_batch)


@torch.no_grad()  # not inference_mode: callers (LTE step selection) may mix the results into autograd code
def chunked_logits(adapter: ExplaineeAdapter, images: torch.Tensor, max_batch: int) -> torch.Tensor:
    """float32 logits of raw [0,1] images, ``max_batch`` images per forward, without autograd."""
    return torch.cat([adapter.predict(images[i : i + max_batch]).float() for i in range(0, len(images), max_batch)])


class Direction(StrEnum):
    """Which way a metric's value is better."""

    HIGHER = "higher"
    LOWER = "lower"


class Category(StrEnum):
    """What a metric measures (docs/metrics.md defines each)."""

    #: The explainee's score on the explained class as pixels are removed or kept in map order (POS, NEG).
    PERTURBATION = "perturbation"
    #: Deletion and insertion curves and patch deletion.
    DELETION = "deletion"
    #: Average drop, increase in confidence and their combinations.
    ADP_PIC = "adp-pic"
    #: Agreement of the binarised map with the ground-truth segmentation.
    SEGMENTATION = "segmentation"
    #: Where the map's mass and peak fall relative to the ground truth.
    LOCALIZATION = "localization"


class Metric:
    """Base class. Subclasses set the class attributes and implement :meth:`compute`.

    ``defaults`` lists the metric's options (knobs) with their default values; unknown options are refused.
    """

    name: ClassVar[str] = "metric"
    category: ClassVar[Category]
    direction: ClassVar[Direction]
    #: Class conventions it supports: ("target", "predicted"), or ("predicted",) when it reads no class
    #: and the maps are expected to explain the predicted class (segmentation).
    classes: ClassVar[tuple[str, ...]] = ("target", "predicted")
    needs_gt: ClassVar[bool] = False
    needs_grid: ClassVar[bool] = False
    #: How the value is scaled and its range.
    unit: ClassVar[str] = ""
    #: Dataset value: "mean" of per-image values, or "pooled" from summed counts.
    aggregation: ClassVar[str] = "mean"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise ExplainersError(f"metric {self.name!r} has no option(s) {', '.join(unknown)}; valid: {valid}")
        self.options = {**self.defaults, **options}

    def config(self) -> dict[str, Any]:
        return dict(self.options)

    def curve_x(self, adapter: ExplaineeAdapter) -> np.ndarray | None:
        """x positions of the curve points (None for metrics without a curve)."""
        return None

    def check_maps(self, info: dict[str, Any]) -> None:
        """Called once per mask file before evaluation with ``path``, ``min``, ``max`` and
        ``minmax_normalized`` of its maps; raise if the metric cannot use them."""

    def compute(self, ctx: BatchContext) -> MetricBatch:  # pragma: no cover - abstract
        raise NotImplementedError

    def pooled_value(self, counts: np.ndarray) -> float:  # pragma: no cover - pooled metrics only
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "direction": self.direction,
            "classes": list(self.classes),
            "unit": self.unit,
            "aggregation": self.aggregation,
            "options": self.config(),
        }


def summary_stats(values: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation and a 95% confidence interval of the mean (Student t) of finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "n": 1, "ci95": [mean, mean]}
    from scipy.stats import t

    std = float(v.std(ddof=1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


#: Every registered metric, by name, in registration order (the order of ``--metrics all``).
METRICS: Registry[type[Metric]] = Registry(
    "metric",
    builtins=(
        "explainers.metrics.perturbation",
        "explainers.metrics.deletion",
        "explainers.metrics.adp_pic",
        "explainers.metrics.segmentation",
        "explainers.metrics.localization",
    ),
    unknown="unknown metric {name!r}; valid metrics: {names}",
)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: make a metric available by its ``name``."""
    return METRICS.register(cls.name, cls)


def available_metrics() -> list[str]:
    """Names of every registered metric."""
    return METRICS.names()


def metric_class(name: str) -> type[Metric]:
    return METRICS.get(name)


def get_metric(name: str, **options: Any) -> Metric:
    """Build the metric registered as ``name`` (unknown name → an error listing the valid ones)."""
    return metric_class(name)(**options)
