"""Generic attention explainability (GAE, Chefer et al., ICCV 2021) for self-attention ViTs.

R = I; for each block (first to last) Ā = mean_heads(relu(∇A ⊙ A)), R ← R + Ā R; the CLS row's patch
columns. The recursion is the product (I + Ā_L) ⋯ (I + Ā_1), computed by :func:`rollout` without row
normalisation.
"""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod, rollout
from explainers.methods.attention_gradcam import attention_gradients
from explainers.methods.base import Attribution, Cost, Need, register_method


@register_method("gae")
class GenericAttentionExplainability(AttentionMethod):
    summary = "generic attention explainability: R ← R + mean_h(relu(∇A⊙A))·R over blocks, CLS row"
    needs = frozenset({Need.ATTENTION, Need.GRADIENTS})
    cost = Cost.FEW_PASSES
    reference = "Chefer et al., ICCV 2021"

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        result = attention_gradients(self.adapter, images, classes)
        cams = [(g * a).clamp_min(0).mean(dim=1) for a, g in zip(result.attentions, result.gradients, strict=True)]
        maps = self.cls_patches(rollout(cams, add_identity=True, normalize_rows=False))
        return Attribution(maps=maps, logits=result.logits, classes=result.classes)
