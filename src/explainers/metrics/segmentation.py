"""Segmentation tests (docs/metrics.md): the map as a foreground detector against ground-truth masks.

Per image: R = (v − min v) / (max v − min v) (a constant map gives R = 0), threshold t = mean(R),
foreground prediction R > t. Normalisation and threshold use the whole map (the explanation's own
statistics); pixels in the dataset's ``ignore`` region (Pascal VOC's void boundary with ``void=ignore``)
are left out of every count and of the AP entries.

- ``pixel-accuracy`` = Σ correct pixels / Σ pixels, **pooled** over the dataset, ×100.
- ``miou`` = mean over {background, foreground} of Σ intersection / Σ union, **pooled**, ×100 (a class whose
  pooled union is 0 is left out of the mean).
- ``map`` = mean over images of the average precision on the 2·H·W entries: scores [1 − R, R] against
  one-hot labels [gt = 0, gt = 1], ×100. Computed by :func:`average_precision`, an exact vectorised
  equivalent of ``sklearn.metrics.average_precision_score`` on each image's entries (tested against it);
  an image with no valid entry scores 0, like the reference's ``nan_to_num``.

No metric here reads a class: the maps are expected to explain the **predicted** class (no class labels
exist for these datasets). Per-image pixel accuracy and IoU are kept too (for confidence intervals), but
the reported values of the pooled metrics are the pooled ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from explainers.errors import ExplainersError
from explainers.maps import minmax_normalize
from explainers.metrics.base import BatchContext, Category, Direction, Metric, MetricBatch, register_metric

# Columns of the per-image counts.
COUNT_COLUMNS = ("correct", "total", "inter_bg", "union_bg", "inter_fg", "union_fg")


def foreground_prediction(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, R > mean(R)) per image: the min–max normalised map and the thresholded foreground."""
    r = minmax_normalize(maps.float())
    t = r.flatten(1).mean(dim=1)
    return r, r > t[:, None, None]


def segmentation_counts(maps: torch.Tensor, gt: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image int64 counts, columns :data:`COUNT_COLUMNS`."""
    _, pred = foreground_prediction(maps)
    gt = gt.bool()
    valid = torch.ones_like(gt) if ignore is None else ~ignore.bool()

    def count(x: torch.Tensor) -> torch.Tensor:
        return (x & valid).flatten(1).sum(dim=1)

    return torch.stack(
        [
            count(pred == gt),
            count(torch.ones_like(gt)),
            count(~pred & ~gt),
            count(~pred | ~gt),
            count(pred & gt),
            count(pred | gt),
        ],
        dim=1,
    ).long()


def average_precision(scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Average precision per row, exactly as ``sklearn.metrics.average_precision_score`` (float64).

    AP = Σ_thresholds (recall_n − recall_{n−1}) · precision_n over the distinct score values, i.e. each
    positive entry contributes the precision at the end of its group of tied scores, divided by the number
    of positives. ``valid`` (bool, same shape) drops entries; a row without positives scores 0.
    """
    labels = labels.bool()
    weight = torch.ones_like(labels, dtype=torch.float64) if valid is None else valid.double()
    s, order = torch.sort(scores, dim=1, descending=True)
    y = labels.gather(1, order).double()
    w = weight.gather(1, order)
    tp = torch.cumsum(y * w, dim=1)
    fp = torch.cumsum((1 - y) * w, dim=1)
    n = s.shape[1]
    idx = torch.arange(n, device=s.device).expand_as(s)
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:, :-1] = s[:, :-1] != s[:, 1:]
    # For every entry, the last index of its run of tied scores (a reversed running minimum).
    ends = torch.where(is_end, idx, torch.full_like(idx, n))
    ends = torch.flip(torch.cummin(torch.flip(ends, [1]), dim=1).values, [1])
    tp_end, fp_end = tp.gather(1, ends), fp.gather(1, ends)
    precision = torch.nan_to_num(tp_end / (tp_end + fp_end))
    positives = (y * w).sum(dim=1)
    ap = (y * w * precision).sum(dim=1) / positives
    return torch.where(positives > 0, ap, torch.zeros_like(ap))


def segmentation_ap(maps: torch.Tensor, gt: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image AP on the 2·H·W entries [1 − R, R] vs [gt = 0, gt = 1] (ignored pixels dropped)."""
    r, _ = foreground_prediction(maps)
    r = r.flatten(1)
    g = gt.bool().flatten(1)
    scores = torch.cat([1 - r, r], dim=1)
    labels = torch.cat([~g, g], dim=1)
    valid = None
    if ignore is not None:
        keep = ~ignore.bool().flatten(1)
        valid = torch.cat([keep, keep], dim=1)
    return average_precision(scores, labels, valid)


def _counts(ctx: BatchContext) -> torch.Tensor:
    inp = ctx.inputs
    if inp.gt is None:
        raise ExplainersError("segmentation metrics need ground-truth masks; this dataset has none")
    return ctx.cached("segmentation-counts", lambda: segmentation_counts(inp.maps, inp.gt, inp.ignore))


class _Segmentation(Metric):
    category = Category.SEGMENTATION
    direction = Direction.HIGHER
    classes = ("predicted",)
    needs_gt = True


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


@register_metric
class PixelAccuracy(_Segmentation):
    """Share of correctly classified (foreground/background) pixels, pooled over the dataset."""

    name = "pixel-accuracy"
    unit = "% of pixels, pooled over the dataset, range 0–100"
    aggregation = "pooled"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        counts = _counts(ctx).cpu().numpy()
        return MetricBatch(values=100.0 * _ratio(counts[:, 0], counts[:, 1]), counts=counts)

    def pooled_value(self, counts: np.ndarray) -> float:
        total = counts.sum(axis=0)
        return float(100.0 * total[0] / total[1]) if total[1] > 0 else float("nan")


@register_metric
class MeanIoU(_Segmentation):
    """Mean over background and foreground of the pooled intersection over union."""

    name = "miou"
    unit = "% (mean IoU of background and foreground), pooled over the dataset, range 0–100"
    aggregation = "pooled"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        counts = _counts(ctx).cpu().numpy()
        ious = np.stack([_ratio(counts[:, 2], counts[:, 3]), _ratio(counts[:, 4], counts[:, 5])], axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (nothing valid) stay NaN
            per_image = 100.0 * np.nanmean(ious, axis=1)
        return MetricBatch(values=per_image, counts=counts)

    def pooled_value(self, counts: np.ndarray) -> float:
        total = counts.sum(axis=0).astype(np.float64)
        ious = [total[i] / total[u] for i, u in ((2, 3), (4, 5)) if total[u] > 0]
        return float(100.0 * np.mean(ious)) if ious else float("nan")


@register_metric
class MeanAveragePrecision(_Segmentation):
    """Mean over images of the per-image average precision of [1 − R, R] against the one-hot mask."""

    name = "map"
    unit = "% (mean over images of AP on 2·H·W entries), range 0–100"

    def compute(self, ctx: BatchContext) -> MetricBatch:
        inp = ctx.inputs
        if inp.gt is None:
            raise ExplainersError("segmentation metrics need ground-truth masks; this dataset has none")
        ap = segmentation_ap(inp.maps, inp.gt, inp.ignore)
        return MetricBatch(values=100.0 * ap.cpu().numpy())
