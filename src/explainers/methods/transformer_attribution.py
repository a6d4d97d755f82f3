"""Transformer Attribution (Chefer et al., CVPR 2021): per block Ā = mean_heads(relu(∇A ⊙ R_A)) with
R_A the LRP relevance at the attention probabilities and ∇A the target logit's gradient; the product
of (I + Ā) over blocks, first block first, **without** row normalisation; CLS row, patch columns.

Options: ``start_layer`` — the block the product starts at (0, all blocks; the reference's benchmark
scripts use 1, which skips the first block); ``rules`` and ``eps`` as for ``lrp``.
"""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods._attention import check_start_layer, rollout
from explainers.methods._relevance import EPS, propagate
from explainers.methods.base import Attribution, Cost, Need, register_method
from explainers.methods.lrp import RelevanceOptions
from explainers.models.base import ExplaineeAdapter


@register_method("transformer-attribution")
class TransformerAttribution(RelevanceOptions):
    summary = "per block mean_h(relu(∇A⊙R_A)) with R_A the LRP relevance, product of (I + Ā), CLS row"
    needs = frozenset({Need.ATTENTION, Need.GRADIENTS})
    cost = Cost.FEW_PASSES
    reference = "Chefer et al., CVPR 2021"

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        start_layer: int = 0,
        rules: str = "transformer",
        eps: float = EPS,
        normalize: bool = True,
    ) -> None:
        super().__init__(adapter, rules=rules, eps=eps, normalize=normalize)
        self.start_layer = check_start_layer(adapter, start_layer, self.name)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "start_layer": self.start_layer}

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        result = propagate(
            self.adapter,
            self.adapter.normalize(images),
            classes,
            depth="attention",
            with_gradients=True,
            rules=self.rules,
            first_block=self.start_layer,
        )
        assert result.attention_gradients is not None
        cams = []
        pairs = zip(result.attention_gradients, result.attention_relevance, strict=True)
        for grad, relevance in list(pairs)[self.start_layer :]:
            assert relevance is not None
            cams.append((grad * relevance).clamp_min(0).mean(dim=1))
        maps = self.cls_patches(rollout(cams, add_identity=True, normalize_rows=False))
        return Attribution(maps=maps, logits=result.logits, classes=result.targets)
