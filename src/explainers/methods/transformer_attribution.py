"""Transformer Attribution (Chefer et al., CVPR 2021): per block Ā = mean_heads(relu(∇A ⊙ R_A)) with
R_A the LRP relevance at the attention probabilities and ∇A the target logit's gradient; the product
of (I + Ā) over blocks, first block first, **without** row normalisation; CLS row, patch columns."""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod, rollout
from explainers.methods._relevance import propagate
from explainers.methods.base import register_method


@register_method("transformer-attribution")
class TransformerAttribution(AttentionMethod):
    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = propagate(
            self.adapter,
            self.adapter.normalize(images),
            self.targets_or_none(targets),
            depth="attention",
            with_gradients=True,
        )
        assert result.attention_gradients is not None
        cams = []
        for grad, relevance in zip(result.attention_gradients, result.attention_relevance, strict=True):
            assert relevance is not None
            cams.append((grad * relevance).clamp_min(0).mean(dim=1))
        return self.cls_patches(rollout(cams, add_identity=True, normalize_rows=False))
