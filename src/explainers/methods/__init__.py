"""Attribution methods, one file each, registered by name (``get_method("gae", adapter)``)."""

# Importing a method's module registers it: the baselines, then the learned explainers.
from explainers.methods import (  # noqa: F401
    attention_gradcam,
    attnlrp,
    gae,
    integrated_gradients,
    legrad,
    leta,
    lrp,
    lte,
    partial_lrp,
    plte,
    random,
    raw_attention,
    rise,
    rollout,
    transformer_attribution,
)
from explainers.methods.base import (
    METHODS,
    Attribution,
    BatchInputs,
    Cost,
    Explanation,
    Method,
    Need,
    available_methods,
    get_method,
    minmax_normalize,
    register_method,
)

__all__ = [
    "METHODS",
    "Attribution",
    "BatchInputs",
    "Cost",
    "Explanation",
    "Method",
    "Need",
    "available_methods",
    "get_method",
    "minmax_normalize",
    "register_method",
]
