"""LTE / pLTE: a ViT explainer trained to mask what justifies a frozen explainee's prediction
(docs/learned-explainers.md)."""

from explainers.learned.lte.config import LTEConfig, LTEConfigError
from explainers.learned.lte.explainer import CheckpointMismatchError, ExplainerNet, LTEExplainer
from explainers.learned.lte.loss import LossTerms, lte_loss, mask_term, masked_input, prediction_term
from explainers.learned.lte.refine import RefineResult, refine_images
from explainers.learned.lte.scoring import perturbation_auc

__all__ = [
    "CheckpointMismatchError",
    "ExplainerNet",
    "LTEConfig",
    "LTEConfigError",
    "LTEExplainer",
    "LossTerms",
    "RefineResult",
    "lte_loss",
    "mask_term",
    "masked_input",
    "perturbation_auc",
    "prediction_term",
    "refine_images",
]
