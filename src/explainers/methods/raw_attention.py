"""Raw attention: the last block's attention from the CLS token to the patches, mean over heads."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods.base import register_method


@register_method("raw-attention")
class RawAttention(AttentionMethod):
    """``mean_heads(A_L)[CLS, patches]`` of the last block ``L`` (no gradients, no class dependence)."""

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            attentions = self.adapter.forward_attentions(self.adapter.normalize(images)).attentions
        return self.cls_patches(attentions[-1].mean(dim=1))
