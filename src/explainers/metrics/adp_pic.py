"""ADP / PIC (docs/metrics.md): the image multiplied by the map, against the clean image.

p_full = softmax(f(norm(x)))_c and p_mask = softmax(f(norm(x ⊙ v)))_c with v the map in [0,1]
(broadcast over channels). Per image: ADP = 100 · max(0, p_full − p_mask) / p_full (lower is better),
PIC = 100 · 1[p_full < p_mask] (higher is better); dataset value = mean over images.

Values depend on the map's scale. Option ``normalize``: ``none`` (default: use the stored maps, which
must lie in [0,1] — the explain pipeline's maps are min–max normalised per image unless a method was
built with ``normalize=False``) or ``minmax`` (min–max normalise each map first; a constant map becomes 0).
The evaluation records both this option and whether the stored maps were already min–max normalised.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from explainers.errors import ExplainersError
from explainers.maps import minmax_normalize
from explainers.metrics.base import BatchContext, Category, Direction, Metric, MetricBatch, register_metric


def masked_probabilities(ctx: BatchContext, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_full, p_mask) of the class per image; one forward of x ⊙ v per image, shared by ADP and PIC."""

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        inp = ctx.inputs
        v = minmax_normalize(inp.maps) if normalize == "minmax" else inp.maps
        logits = ctx.forward(inp.images * v[:, None])
        cls = inp.classes[:, None]
        p_full = torch.softmax(inp.clean_logits.float(), dim=-1).gather(1, cls)[:, 0]
        p_mask = torch.softmax(logits, dim=-1).gather(1, cls)[:, 0]
        return p_full.double(), p_mask.double()

    return ctx.cached(("masked-by-map", normalize), run)


class _AdpPic(Metric):
    category = Category.ADP_PIC
    #: normalize: "none" (maps as stored, must be in [0,1]) or "minmax" (per-image min–max first).
    defaults: ClassVar[dict[str, Any]] = {"normalize": "none"}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["normalize"] not in ("none", "minmax"):
            raise ExplainersError(
                f"{self.name}: normalize must be 'none' or 'minmax', got {self.options['normalize']!r}"
            )

    def check_maps(self, info: dict[str, Any]) -> None:
        """Refuse maps outside [0,1] unless they are normalised here."""
        if self.options["normalize"] == "none" and (info["min"] < -1e-6 or info["max"] > 1 + 1e-6):
            raise ExplainersError(
                f"{self.name} needs maps in [0,1] but {info['path']} holds values in "
                f"[{info['min']:.3g}, {info['max']:.3g}]; pass --metric-option {self.name}.normalize=minmax"
            )


@register_metric
class ADP(_AdpPic):
    """Average drop % of the class probability when the image is multiplied by the map."""

    name = "adp"
    direction = Direction.LOWER
    unit = "average drop %, range 0–100"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        p_full, p_mask = masked_probabilities(ctx, self.options["normalize"])
        drop = 100.0 * (p_full - p_mask).clamp_min(0) / p_full
        return MetricBatch(values=drop.cpu().numpy().astype(np.float64))


@register_metric
class PIC(_AdpPic):
    """Percentage of images whose class probability increases when multiplied by the map."""

    name = "pic"
    direction = Direction.HIGHER
    unit = "% of images with increased confidence, range 0–100"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        p_full, p_mask = masked_probabilities(ctx, self.options["normalize"])
        return MetricBatch(values=(100.0 * (p_full < p_mask).double()).cpu().numpy())
