"""Evaluation metrics, one file per family, registered by name (``get_metric("pos")``); the definitions
and their sources are in docs/metrics.md.

==================  ============  ======  =================================================  ==========
metric              family        better  curve / value                                      range
==================  ============  ======  =================================================  ==========
pos                 perturbation  lower   accuracy; removed fraction 0, 0.1 … 0.9 (10 pts)    0–90
neg                 perturbation  higher  accuracy; removed fraction 0 … 0.9 (10 pts)         0–90
deletion            deletion      lower   probability; POS order, 0 … 0.9 (10 pts)            0–90
neg-deletion        deletion      higher  probability; NEG order, 0 … 0.9 (10 pts)            0–90
insertion           deletion      higher  probability; inserted fraction 0 … 1 (steps+1)      0–100
patch-deletion      deletion      lower   probability; removed patches k/g², k = 0 … g²       0–100
patch-insertion     deletion      higher  probability; inserted patches k/g², k = 0 … g²      0–100
adp                 adp-pic       lower   mean % drop of the class probability on x ⊙ v      0–100
pic                 adp-pic       higher  % of images whose probability rises on x ⊙ v       0–100
pixel-accuracy      segmentation  higher  % correct pixels, pooled over the dataset          0–100
miou                segmentation  higher  % mean IoU (bg, fg), pooled over the dataset       0–100
map                 segmentation  higher  % mean over images of AP on [1 − R, R]             0–100
pointing-game       localization  higher  % share of the map's maximal pixels inside the GT  0–100
energy-in-gt        localization  higher  % of the min–max normalised map's mass in the GT   0–100
class-sensitivity   localization  higher  % of maps favouring the asked class's object       0–100
==================  ============  ======  =================================================  ==========

AUCs are 100 × the trapezoid area over the x-axis shown. Removed pixels are black (0 in the [0,1] image)
before normalisation, except for the patch metrics, which by default fill with the explainee's mean colour
(the LETA protocol); pixel order comes from one stable sort per map, and tied values go in a fixed
pseudo-random order (``perturbation.tie_order``), so that a flat map is not biased towards the top rows.
Class convention (evaluation ``classes``): ``target`` (ground truth) or ``predicted`` (the clean-image
argmax) for every metric that reads a class, by default the one the mask files were made with; the
segmentation metrics read none and expect maps of the predicted class.

Options (``get_metric(name, **options)``; CLI ``--metric-option NAME.KEY=VALUE``):
``insertion.steps`` (10: points at i/steps), ``patch-*.fill`` (``mean``, the default: removed patches
become the explainee's mean colour | ``black``), ``adp.normalize`` / ``pic.normalize`` (``none`` | ``minmax``). The
evaluation knobs are :func:`evaluate_maskfiles`'s ``batch_size`` (images loaded per step), ``max_batch``
(most perturbed images per explainee forward: the memory knob), ``classes``, ``nonfinite`` and
``allow_mismatch``.
"""

from explainers.metrics import adp_pic, deletion, localization, perturbation, segmentation  # noqa: F401  (registers)
from explainers.metrics.base import (
    METRICS,
    BatchContext,
    Category,
    Direction,
    Metric,
    MetricBatch,
    MetricInputs,
    available_metrics,
    get_metric,
    register_metric,
    summary_stats,
)
from explainers.metrics.evaluate import DEFAULT_METRICS, EvaluationResult, evaluate_maskfiles
from explainers.metrics.perturbation import perturbation_auc, perturbation_curves
from explainers.metrics.segmentation import average_precision, segmentation_ap, segmentation_counts

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "BatchContext",
    "Category",
    "Direction",
    "EvaluationResult",
    "Metric",
    "MetricBatch",
    "MetricInputs",
    "available_metrics",
    "average_precision",
    "evaluate_maskfiles",
    "get_metric",
    "perturbation_auc",
    "perturbation_curves",
    "register_metric",
    "segmentation_ap",
    "segmentation_counts",
    "summary_stats",
]
