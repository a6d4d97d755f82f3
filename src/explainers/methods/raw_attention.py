"""Raw attention: the last block's attention from the CLS token to the patches, mean over heads."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods.base import Attribution, Cost, register_method
from explainers.models.base import resolve_targets


@register_method("raw-attention")
class RawAttention(AttentionMethod):
    """``mean_heads(A_L)[CLS, patches]`` of the last block ``L`` (no gradients, no class dependence)."""

    summary = "last block's CLS→patch attention, mean over heads"
    cost = Cost.FORWARD
    reference = "baseline in Chefer et al., CVPR 2021"

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        with torch.no_grad():
            out = self.adapter.forward_attentions(self.adapter.normalize(images))
        maps = self.cls_patches(out.attentions[-1].mean(dim=1))
        return Attribution(maps=maps, logits=out.logits, classes=resolve_targets(classes, out.logits))
