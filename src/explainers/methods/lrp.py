"""Full LRP (Chefer et al.'s rule set): relevance of the target logit propagated to the pixels, zβ at
the patch-embedding convolution, summed over colour channels.

Options: ``rules`` — ``"transformer"`` (default, the rules of the Transformer Attribution paper) or
``"benchmark"`` (the reference code's ``layers_lrp`` rules that produced the paper's LRP baseline rows:
sign pairs normalised separately, no residual rescaling); ``eps`` — the division stabiliser (1e-9).
"""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods._relevance import EPS, make_rules, propagate
from explainers.methods.base import Attribution, Cost, register_method
from explainers.models.base import ExplaineeAdapter


class RelevanceOptions(AttentionMethod):
    """Shared ``rules``/``eps`` options of the LRP methods."""

    def __init__(
        self, adapter: ExplaineeAdapter, *, rules: str = "transformer", eps: float = EPS, normalize: bool = True
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        self.rules = make_rules(rules, eps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rules": self.rules.name, "eps": self.rules.eps}


@register_method("lrp")
class FullLRP(RelevanceOptions):
    """Pixel-level relevance (B×H×W, signed before the per-image min–max)."""

    summary = "full LRP: α1β0 on linear layers, gradient×input through attention, zβ at the input"
    cost = Cost.FEW_PASSES
    reference = "Bach et al., PLOS ONE 2015; ViT rules of Chefer et al., CVPR 2021"

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        result = propagate(self.adapter, self.adapter.normalize(images), classes, depth="input", rules=self.rules)
        assert result.pixel_relevance is not None
        return Attribution(maps=result.pixel_relevance.sum(dim=1), logits=result.logits, classes=result.targets)
