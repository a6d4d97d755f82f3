"""Perturbation tests (docs/metrics.md): POS / NEG accuracy AUC, and the batched curve machinery they share with
deletion / insertion (:mod:`explainers.metrics.deletion`).

Protocol. Raw image x in [0,1] at the explainee's size, map v at the same size, class c. Points at
p = 0, 0.1, …, 0.9 (10 points, none at 1.0): at point i the k = ⌊H·W·i/10⌋ (exact integer arithmetic)
most relevant pixels (POS; top-k of v) or least relevant pixels (NEG; top-k of −v) are set to 0 in all
channels of the [0,1] image, which is then normalised and classified; y_i = 1 if argmax = c. AUC = 100 ×
trapezoid area over x = 0…0.9, range [0, 90]. POS: lower is better; NEG: higher is better.

Ties. Among equal values the order is a fixed pseudo-random permutation of the units (pixels, or patches
for the patch variants): :func:`tie_order`, the same for every image and every run, drawn from a seeded
generator for the number of units. Breaking ties in reading order instead (top row first) would give a map
with large flat regions — an all-zero map above all — a systematic bias that depends on where the evidence
sits in the image (a corner cue, an object in the top half); with a scrambled order an uninformative map
scores what a random map scores, in expectation, in every scenario.

Batching. One sort per image gives every pixel's rank; the keep-mask of point i is ``rank >= k_i`` for
removal and ``rank < k_i`` for insertion, so the masks for all points come from that one sort. The
(image, point) pairs of a whole batch go through the explainee together, chunked to ``max_batch`` images
per forward. Points whose image is the clean image (p = 0) reuse the clean forward, and points where
nothing is left (insertion's start, patch deletion's end) share one forward of the empty image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from explainers.errors import ExplainersError
from explainers.metrics.base import (
    BatchContext,
    Category,
    Direction,
    Metric,
    MetricBatch,
    MetricInputs,
    register_metric,
)
from explainers.models.base import ExplaineeAdapter, Targets, resolve_targets

#: Points of the POS/NEG and (neg-)deletion curves: p = 0, 0.1, …, 0.9.
PERTURBATION_STEPS = 10


def step_counts(num_units: int, steps: int, *, include_end: bool) -> tuple[int, ...]:
    """k_i = ⌊num_units · i / steps⌋ for i = 0…steps−1 (…steps with ``include_end``), in exact integers
    (``num_units * 0.3`` in floating point could round the wrong way)."""
    last = steps + 1 if include_end else steps
    return tuple(num_units * i // steps for i in range(last))


#: Seed of the tie order (changing it changes the scores of maps with ties; recorded here, not an option).
TIE_ORDER_SEED = 0


@functools.lru_cache(maxsize=8)
def tie_order(num_units: int) -> torch.Tensor:
    """The order in which tied units are taken: a permutation of 0…num_units−1, fixed by
    ``TIE_ORDER_SEED`` and ``num_units`` (CPU int64). Drawn once per size (every batch's sort reads it);
    the cached tensor is shared, so callers must not modify it."""
    return torch.randperm(num_units, generator=torch.Generator().manual_seed(TIE_ORDER_SEED))


def order_ranks(scores: torch.Tensor, *, most_relevant_first: bool) -> torch.Tensor:
    """rank[b, u] = position of unit u (pixel or patch, row-major) in the order of removal/insertion.

    One stable sort per row of the units laid out in :func:`tie_order`, so that among equal values the unit
    that comes earlier in the tie order goes first.
    """
    shuffle = tie_order(scores.shape[1]).to(scores.device)
    order = shuffle[torch.sort(scores[:, shuffle], dim=1, descending=most_relevant_first, stable=True).indices]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def patch_index(image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """For every pixel (row-major), the row-major index of its patch; rows/columns left over when the size
    is not a multiple of the grid join the last patch."""
    (h, w), (gh, gw) = image_size, grid
    rows = (torch.arange(h) * gh // h).clamp_max(gh - 1)
    cols = (torch.arange(w) * gw // w).clamp_max(gw - 1)
    return (rows[:, None] * gw + cols[None, :]).reshape(-1)


def patch_scores(maps: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch-pooled maps (mean over each patch's pixels), B×P, and the pixel→patch index (H·W)."""
    b, h, w = maps.shape
    index = patch_index((h, w), grid).to(maps.device)
    num = grid[0] * grid[1]
    sums = torch.zeros(b, num, dtype=maps.dtype, device=maps.device).index_add_(1, index, maps.reshape(b, -1))
    sizes = torch.bincount(index, minlength=num).to(maps.dtype)
    return sums / sizes, index


@dataclass(frozen=True)
class CurveSpec:
    """Which perturbed images a curve needs (also the cache key shared between metrics)."""

    most_relevant_first: bool
    insert: bool  # False: remove the first k units; True: start empty and add the first k
    counts: tuple[int, ...]
    unit: str = "pixel"  # or "patch" (the adapter's patch grid)
    fill: str = "black"  # what removed pixels become: black (0 in [0,1]) or mean (the explainee's mean colour)


def _fill_value(adapter: ExplaineeAdapter, fill: str, like: torch.Tensor) -> torch.Tensor:
    if fill == "black":
        return torch.zeros(1, 3, 1, 1, dtype=like.dtype, device=like.device)
    if fill == "mean":
        return adapter.mean.to(like.device, like.dtype).reshape(1, -1, 1, 1)
    raise ExplainersError(f"fill must be 'black' or 'mean', got {fill!r}")


def curve_scores(ctx: BatchContext, spec: CurveSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct B×P bool, probability of the class B×P float) along the curve; cached per batch."""
    return ctx.cached(("curve", spec), lambda: _run_curve(ctx, spec))


def _run_curve(ctx: BatchContext, spec: CurveSpec) -> tuple[torch.Tensor, torch.Tensor]:
    inp = ctx.inputs
    images, classes = inp.images, inp.classes
    b, _, h, w = images.shape
    if spec.unit == "pixel":
        scores, unit_of_pixel = inp.maps.reshape(b, -1), None
    elif spec.unit == "patch":
        scores, unit_of_pixel = patch_scores(inp.maps, ctx.adapter.grid)
    else:
        raise ExplainersError(f"unknown curve unit {spec.unit!r}")
    num_units = scores.shape[1]
    ranks = order_ranks(scores, most_relevant_first=spec.most_relevant_first)
    counts = torch.tensor(spec.counts, dtype=torch.long, device=images.device)
    present = counts if spec.insert else num_units - counts
    num_points = len(spec.counts)
    fill = _fill_value(ctx.adapter, spec.fill, images)
    correct = torch.empty(b, num_points, dtype=torch.bool, device=images.device)
    prob = torch.empty(b, num_points, dtype=torch.float32, device=images.device)

    def score(logits: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(logits.float(), dim=-1).gather(-1, cls[..., None])[..., 0]
        return logits.argmax(dim=-1) == cls, p

    full = (present == num_units).nonzero().flatten()
    if len(full):
        c, p = score(inp.clean_logits, classes)
        correct[:, full], prob[:, full] = c[:, None], p[:, None]
    empty = (present == 0).nonzero().flatten()
    if len(empty):
        blank = ctx.cached(("empty", spec.fill), lambda: ctx.forward(fill.expand(1, 3, h, w)))
        c, p = score(blank.expand(b, -1), classes)
        correct[:, empty], prob[:, empty] = c[:, None], p[:, None]
    middle = ((present != num_units) & (present != 0)).nonzero().flatten()
    bi = torch.arange(b, device=images.device).repeat_interleave(len(middle))
    pi = middle.repeat(b)
    for start in range(0, len(bi), ctx.max_batch):
        bs, ps = bi[start : start + ctx.max_batch], pi[start : start + ctx.max_batch]
        r = ranks[bs]
        k = counts[ps][:, None]
        keep = r < k if spec.insert else r >= k
        if unit_of_pixel is not None:
            keep = keep[:, unit_of_pixel]
        keep = keep.reshape(-1, 1, h, w)
        x = torch.where(keep, images[bs], fill)
        c, p = score(ctx.forward(x), classes[bs])
        correct[bs, ps], prob[bs, ps] = c, p
    return correct, prob


def trapezoid_auc(y: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    """100 × trapezoid area under each row of ``y`` over ``x``."""
    return 100.0 * torch.trapezoid(y.double(), torch.as_tensor(x, dtype=torch.float64, device=y.device), dim=-1)


class CurveMetric(Metric):
    """A metric read off one perturbation curve: subclasses fix the order, removal vs insertion, the score
    (``accuracy``: argmax = c, or ``probability``: softmax of c) and the points."""

    most_relevant_first: ClassVar[bool] = True
    insert: ClassVar[bool] = False
    score: ClassVar[str] = "accuracy"
    curve_unit: ClassVar[str] = "pixel"

    def counts(self, adapter: ExplaineeAdapter) -> tuple[int, ...]:
        h, w = adapter.image_size
        return step_counts(h * w, PERTURBATION_STEPS, include_end=False)

    def curve_x(self, adapter: ExplaineeAdapter) -> np.ndarray:
        return np.arange(PERTURBATION_STEPS) / PERTURBATION_STEPS

    def spec(self, adapter: ExplaineeAdapter) -> CurveSpec:
        return CurveSpec(
            most_relevant_first=self.most_relevant_first,
            insert=self.insert,
            counts=self.counts(adapter),
            unit=self.curve_unit,
            fill=self.options.get("fill", "black"),
        )

    def compute(self, ctx: BatchContext) -> MetricBatch:
        correct, prob = curve_scores(ctx, self.spec(ctx.adapter))
        y = correct.double() if self.score == "accuracy" else prob.double()
        auc = trapezoid_auc(y, self.curve_x(ctx.adapter))
        return MetricBatch(values=auc.cpu().numpy(), curves=y.cpu().numpy())


@register_metric
class PositivePerturbation(CurveMetric):
    """POS: remove the most relevant pixels first; accuracy AUC ×100 over p = 0…0.9 (10 points), 0–90."""

    name = "pos"
    category = Category.PERTURBATION
    direction = Direction.LOWER
    unit = "accuracy AUC ×100 over removed fraction 0…0.9 (10 points), range 0–90"


@register_metric
class NegativePerturbation(CurveMetric):
    """NEG: remove the least relevant pixels first; accuracy AUC ×100 over p = 0…0.9 (10 points), 0–90."""

    name = "neg"
    category = Category.PERTURBATION
    direction = Direction.HIGHER
    most_relevant_first = False
    unit = "accuracy AUC ×100 over removed fraction 0…0.9 (10 points), range 0–90"


# ---------------------------------------------------------------------- functional API
def perturbation_curves(
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    order: str = "pos",
    max_batch: int = 64,
    clean_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The POS/NEG curves for a batch: (correct B×10 bool, probability of the class B×10).

    ``images``: B×3×H×W in [0,1] at the explainee's size; ``maps``: B×H×W; ``targets``: None (the
    predicted class), an int or one class per image; ``order``: ``pos`` (most relevant removed first) or
    ``neg``. Meant for training loops (pLTE model selection, LTE step selection) as well as the metrics.
    """
    if order not in ("pos", "neg"):
        raise ExplainersError(f"order must be 'pos' or 'neg', got {order!r}")
    device = adapter.device
    images = images.to(device, torch.float32)
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = adapter.predict(images).float()
    classes = resolve_targets(targets, clean_logits)
    inputs = MetricInputs(
        images=images,
        maps=maps.to(device, torch.float32),
        classes=classes,
        clean_logits=clean_logits,
        ids=[str(i) for i in range(len(images))],
    )
    ctx = BatchContext(adapter, inputs, max_batch=max_batch)
    h, w = adapter.image_size
    spec = CurveSpec(
        most_relevant_first=order == "pos",
        insert=False,
        counts=step_counts(h * w, PERTURBATION_STEPS, include_end=False),
    )
    return curve_scores(ctx, spec)


def perturbation_auc(
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    order: str = "pos",
    max_batch: int = 64,
    clean_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """POS (``order="pos"``) or NEG accuracy AUC per image (float64, 0–90), as defined in docs/metrics.md."""
    correct, _ = perturbation_curves(
        adapter, images, maps, targets, order=order, max_batch=max_batch, clean_logits=clean_logits
    )
    return trapezoid_auc(correct.double(), np.arange(PERTURBATION_STEPS) / PERTURBATION_STEPS)


__all__ = [
    "PERTURBATION_STEPS",
    "CurveMetric",
    "CurveSpec",
    "curve_scores",
    "order_ranks",
    "patch_scores",
    "perturbation_auc",
    "perturbation_curves",
    "step_counts",
    "tie_order",
    "trapezoid_auc",
]
