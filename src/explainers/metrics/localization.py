"""Localisation against a known ground truth: does the map point at, and put its mass on, the evidence?

Both metrics read the dataset's ground-truth mask (the explained object, or in a known-truth scenario the
evidence the model uses by construction) and no class, and both are per-image values averaged over the
dataset, ×100, higher is better. Pixels in the dataset's ``ignore`` region are left out everywhere.

- ``pointing-game``: is the map's maximum inside the ground truth? Ties are common (flat patch maps,
  saturated masks), and counting a hit when *any* maximal pixel lies inside would give a constant map a
  perfect score. So the value is the share of the maximal pixels that lie inside the (optionally dilated)
  ground truth: 1 for a unique maximum inside, 0 outside, and for a constant map the ground truth's area
  share — what pointing at random would score. ``tolerance`` (pixels, default 0) dilates the ground truth
  by a square of that radius, as the original protocol's 15-pixel tolerance at 224.
- ``energy-in-gt``: the share of the map's mass that falls inside the ground truth, on the per-image
  min–max normalised map (so the map's floor carries no mass and a shift of the map changes nothing). A
  constant map is uniform: it scores the ground truth's area share.

An image whose ground truth is empty (after ``ignore``) cannot be scored: it is refused with its id.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError
from explainers.metrics.base import BatchContext, Metric, MetricBatch, register_metric


def _valid_gt(ctx: BatchContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gt, valid) as bool B×H×W; refuses a missing mask or an image without ground-truth pixels."""
    inp = ctx.inputs
    if inp.gt is None:
        raise ExplainersError(f"{name} needs ground-truth masks; this dataset has none")
    gt = inp.gt.bool().to(inp.maps.device)
    valid = torch.ones_like(gt) if inp.ignore is None else ~inp.ignore.bool().to(gt.device)
    empty = ~(gt & valid).flatten(1).any(dim=1)
    if empty.any():
        ids = [inp.ids[i] for i in torch.nonzero(empty).flatten().tolist()]
        raise ExplainersError(
            f"{name} needs a non-empty ground truth in every image; {len(ids)} image(s) have none "
            f"(e.g. {', '.join(ids[:5])}); leave them out of the dataset or drop the metric"
        )
    return gt, valid


def pointing_share(
    maps: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None, tolerance: int = 0
) -> torch.Tensor:
    """Per image, the share of the map's maximal (valid) pixels that lie inside ``gt`` dilated by
    ``tolerance`` pixels (Chebyshev distance)."""
    valid = torch.ones_like(gt, dtype=torch.bool) if valid is None else valid.bool()
    hit_region = gt.bool()
    if tolerance > 0:
        k = 2 * tolerance + 1
        hit_region = F.max_pool2d(hit_region[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    m = maps.float().masked_fill(~valid, float("-inf"))
    peak = m.flatten(1).amax(dim=1)
    at_peak = (m == peak[:, None, None]) & valid
    inside = (at_peak & hit_region).flatten(1).sum(dim=1)
    return inside.double() / at_peak.flatten(1).sum(dim=1).clamp_min(1).double()


def energy_share(maps: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, Σ_gt R / Σ R over the valid pixels, R the min–max normalised map (constant map: uniform)."""
    valid = torch.ones_like(gt, dtype=torch.bool) if valid is None else valid.bool()
    v = maps.double()
    lo = v.masked_fill(~valid, float("inf")).flatten(1).amin(dim=1)[:, None, None]
    hi = v.masked_fill(~valid, float("-inf")).flatten(1).amax(dim=1)[:, None, None]
    span = hi - lo
    r = torch.where(span > 0, (v - lo) / span.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(v))
    r = r * valid
    return (r * gt.bool()).flatten(1).sum(dim=1) / r.flatten(1).sum(dim=1)


class _Localization(Metric):
    category = "localization"
    direction = "higher"
    # No class is read: the ground truth is the evidence for the explained class, whatever the convention.
    classes = ("target", "predicted")
    needs_gt = True


@register_metric
class PointingGame(_Localization):
    """Share of the map's maximal pixels inside the ground truth (ties split), mean over images."""

    name = "pointing-game"
    unit = "% of images whose map peaks inside the ground truth (ties shared), range 0–100"
    defaults: ClassVar[dict[str, Any]] = {"tolerance": 0}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        tol = self.options["tolerance"]
        if isinstance(tol, bool) or not isinstance(tol, int) or tol < 0:
            raise ExplainersError(f"pointing-game tolerance must be a whole number of pixels ≥ 0, got {tol!r}")

    def compute(self, ctx: BatchContext) -> MetricBatch:
        gt, valid = _valid_gt(ctx, self.name)
        share = pointing_share(ctx.inputs.maps, gt, valid, int(self.options["tolerance"]))
        return MetricBatch(values=100.0 * share.cpu().numpy())


@register_metric
class EnergyInGroundTruth(_Localization):
    """Share of the (min–max normalised) map's mass inside the ground truth, mean over images."""

    name = "energy-in-gt"
    unit = "% of the map's mass inside the ground truth, range 0–100"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        gt, valid = _valid_gt(ctx, self.name)
        return MetricBatch(values=100.0 * energy_share(ctx.inputs.maps, gt, valid).cpu().numpy())
