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

- ``class-sensitivity`` (contrast scenes, where each image also carries the *counter-evidence*: the object
  of the competing class): does the map for a class favour that class's object over the other one? Per
  map, 100 when the mean of the min–max normalised map over the explained object's pixels exceeds its mean
  over the other object's, 0 when it is below, 50 on a tie. Means rather than total mass, so that a map
  that treats both objects alike scores 50 whatever their sizes. Over a contrast dataset (each scene
  explained for both of its classes) the value says how often the explanation follows the asked class.

An image whose ground truth is empty (after ``ignore``) cannot be scored: it is refused with its id.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError
from explainers.metrics.base import BatchContext, Category, Direction, Metric, MetricBatch, register_metric


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
    r = _minmax_valid(maps, valid) * valid
    return (r * gt.bool()).flatten(1).sum(dim=1) / r.flatten(1).sum(dim=1)


def _minmax_valid(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image min–max normalisation over the valid pixels (a constant map becomes all ones)."""
    v = maps.double()
    lo = v.masked_fill(~valid, float("inf")).flatten(1).amin(dim=1)[:, None, None]
    hi = v.masked_fill(~valid, float("-inf")).flatten(1).amax(dim=1)[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (v - lo) / span.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(v))


def sensitivity(
    maps: torch.Tensor, gt: torch.Tensor, counter: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image 1, 0 or ½: is the normalised map's mean over ``gt`` above (below, equal to) its mean over
    ``counter``?"""
    valid = torch.ones_like(gt, dtype=torch.bool) if valid is None else valid.bool()
    r = _minmax_valid(maps, valid)
    own, other = gt.bool() & valid, counter.bool() & valid
    mean_own = (r * own).flatten(1).sum(1) / own.flatten(1).sum(1).clamp_min(1)
    mean_other = (r * other).flatten(1).sum(1) / other.flatten(1).sum(1).clamp_min(1)
    return (mean_own > mean_other).double() + 0.5 * (mean_own == mean_other).double()


class _Localization(Metric):
    category = Category.LOCALIZATION
    direction = Direction.HIGHER
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


@register_metric
class ClassSensitivity(_Localization):
    """Share of maps whose mean over the explained class's object exceeds their mean over the competing
    class's object (contrast scenes), ties counted half."""

    name = "class-sensitivity"
    unit = "% of maps favouring the explained class's object over the other class's (ties half), range 0–100"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        gt, valid = _valid_gt(ctx, self.name)
        counter = ctx.inputs.counter
        if counter is None:
            raise ExplainersError(
                "class-sensitivity needs each image's counter-evidence (the competing class's object), which "
                "only contrast scenes carry; use a synthetic contrast dataset or drop the metric"
            )
        counter = counter.bool().to(gt.device)
        empty = ~(counter & valid).flatten(1).any(dim=1)
        if empty.any():
            ids = [ctx.inputs.ids[i] for i in torch.nonzero(empty).flatten().tolist()]
            raise ExplainersError(
                f"class-sensitivity needs counter-evidence in every image; {len(ids)} image(s) have none "
                f"(e.g. {', '.join(ids[:5])})"
            )
        return MetricBatch(values=100.0 * sensitivity(ctx.inputs.maps, gt, counter, valid).cpu().numpy())
