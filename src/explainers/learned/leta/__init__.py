"""LETA: a pre-trained, task-agnostic explainer for one encoder, and the transfer rule
(docs/learned-explainers.md).

``LETAExplainer.from_pretrained(dir, encoder=...)(images, head=linear)`` explains any linear head on the
encoder's embedding; ``pretrain(...)`` (``explainers pretrain leta``) trains one on unlabelled images.
"""

from explainers.learned.leta.config import LETAConfig, PretrainConfig, RunConfig, build_run_config
from explainers.learned.leta.explainer import LETAAttribution, LETAExplainer, pool_patch_scores
from explainers.learned.leta.network import LETANetwork, TokenMixingHead
from explainers.learned.leta.objective import compute_targets, leta_loss
from explainers.learned.leta.pretrain import pretrain
from explainers.learned.leta.windows import mask_pair, pixel_masks, window_masks

__all__ = [
    "LETAAttribution",
    "LETAConfig",
    "LETAExplainer",
    "LETANetwork",
    "PretrainConfig",
    "RunConfig",
    "TokenMixingHead",
    "build_run_config",
    "compute_targets",
    "leta_loss",
    "mask_pair",
    "pixel_masks",
    "pool_patch_scores",
    "pretrain",
    "window_masks",
]
