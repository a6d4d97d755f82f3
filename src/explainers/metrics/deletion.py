"""Deletion / insertion — probability AUC (docs/metrics.md), pixel and patch level.

All read the softmax probability of the class c along a perturbation curve built with the POS/NEG machinery
(:mod:`explainers.metrics.perturbation`: one stable sort per image, ties in a fixed scrambled order,
removed pixels black = 0 in the [0,1] image; the patch variants fill with the explainee's mean colour by
default, ``fill=black`` for black), ×100 trapezoid area.

=============== ======================================= ========================== =========== =========
metric          images                                  points / x-axis            range       better
=============== ======================================= ========================== =========== =========
deletion        remove most relevant pixels first       10: removed 0, 0.1 … 0.9   0–90        lower
neg-deletion    remove least relevant pixels first      10: removed 0, 0.1 … 0.9   0–90        higher
insertion       start black, add most relevant first    steps+1: added 0 … 1       0–100       higher
patch-deletion  remove whole patches, most relevant     g²+1: removed 0 … 1        0–100       lower
patch-insertion start black, add whole patches          g²+1: added 0 … 1          0–100       higher
=============== ======================================= ========================== =========== =========

``neg-deletion`` is what the LTE reference calls "insertion". Patch variants rank the patches of the
explainee's g×g grid by the mean of the map over each patch (ties in the same fixed scrambled order) and
add/remove k = 0…g² whole patches (the LETA evaluation). Removed patches take the explainee's mean colour
(``fill=mean``, the default: 0 in its normalised space, how LETA masks its encoder and how its protocol
scores), or black (``fill=black``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from explainers.errors import ExplainersError
from explainers.metrics.base import Category, Direction, register_metric
from explainers.metrics.perturbation import PERTURBATION_STEPS, CurveMetric, step_counts
from explainers.models.base import ExplaineeAdapter

_PIXEL_UNIT = "probability AUC ×100 over removed fraction 0…0.9 (10 points), range 0–90"


@register_metric
class Deletion(CurveMetric):
    """POS order with the probability of c; lower is better."""

    name = "deletion"
    category = Category.DELETION
    direction = Direction.LOWER
    score = "probability"
    unit = _PIXEL_UNIT


@register_metric
class NegDeletion(CurveMetric):
    """NEG order (least relevant removed first) with the probability of c; higher is better."""

    name = "neg-deletion"
    category = Category.DELETION
    direction = Direction.HIGHER
    score = "probability"
    most_relevant_first = False
    unit = _PIXEL_UNIT


@register_metric
class Insertion(CurveMetric):
    """Classic insertion: from the black image add the most relevant pixels first; points at added
    fraction i/steps for i = 0…steps (``steps`` option, default 10 → 11 points, x in [0, 1])."""

    name = "insertion"
    category = Category.DELETION
    direction = Direction.HIGHER
    score = "probability"
    insert = True
    unit = "probability AUC ×100 over inserted fraction 0…1 (steps+1 points), range 0–100"
    defaults: ClassVar[dict[str, Any]] = {"steps": PERTURBATION_STEPS}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        steps = self.options["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ExplainersError(f"insertion: steps must be a positive integer, got {steps!r}")

    def counts(self, adapter: ExplaineeAdapter) -> tuple[int, ...]:
        h, w = adapter.image_size
        return step_counts(h * w, self.options["steps"], include_end=True)

    def curve_x(self, adapter: ExplaineeAdapter) -> np.ndarray:
        steps = self.options["steps"]
        return np.arange(steps + 1) / steps


class _PatchCurve(CurveMetric):
    needs_grid = True
    score = "probability"
    curve_unit = "patch"
    classes = ("predicted", "target")
    unit = "probability AUC ×100 over patch fraction 0…1 (g²+1 points), range 0–100"
    #: fill: what removed patches become — "mean" (the explainee's normalisation mean, i.e. 0 in its
    #: normalised space: how LETA masks its encoder, the LETA protocol) or "black" (0 in [0,1]).
    defaults: ClassVar[dict[str, Any]] = {"fill": "mean"}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if self.options["fill"] not in ("black", "mean"):
            raise ExplainersError(f"{self.name}: fill must be 'black' or 'mean', got {self.options['fill']!r}")

    def counts(self, adapter: ExplaineeAdapter) -> tuple[int, ...]:
        return tuple(range(adapter.num_patches + 1))

    def curve_x(self, adapter: ExplaineeAdapter) -> np.ndarray:
        return np.arange(adapter.num_patches + 1) / adapter.num_patches


@register_metric
class PatchDeletion(_PatchCurve):
    """Remove whole patches, most relevant (patch-pooled) first; lower is better."""

    name = "patch-deletion"
    category = Category.DELETION
    direction = Direction.LOWER


@register_metric
class PatchInsertion(_PatchCurve):
    """Start from the empty image and add whole patches, most relevant first; higher is better."""

    name = "patch-insertion"
    category = Category.DELETION
    direction = Direction.HIGHER
    insert = True


__all__ = ["PERTURBATION_STEPS", "Deletion", "Insertion", "NegDeletion", "PatchDeletion", "PatchInsertion"]
