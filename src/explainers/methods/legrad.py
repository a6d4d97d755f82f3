"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via Feature
Formation Sensitivity", 2024).

For every block l (from ``start_layer`` on): the block's output tokens z^l are mapped to class scores
with the model's own final norm and head, s^l = head(norm(pool(z^l))); the gradient of the target score
s^l_c with respect to that block's attention probabilities A^l (B×heads×T×T) is taken, negative entries
are set to 0, and it is averaged over heads and over all query rows; the patch columns (after the
prefix tokens) are that layer's map. The map is the mean over layers. Attention values are not
multiplied in.

Pooling (``pool``): ``"cls"`` (default) reads the tokens the explainee's head reads — the CLS token,
and for DeiT-distilled both the CLS and the distillation token through their heads, each with weight
0.5 — so s^L is the model's own logit. ``"mean"`` averages all tokens before the norm, as the authors'
``legrad-torch`` (OpenCLIP) and torchcam's LeGrad for torchvision ViTs do.

Batched and per image; one gradient call for all layers: s^l depends on A^l only through block l, so
block l's attention-to-output part is recomputed from A^l as a leaf (everything else held fixed), and
the gradients of Σ_l s^l with respect to the leaves are the per-layer gradients ∂s^l/∂A^l.
"""

from __future__ import annotations

from typing import Any

import torch

from explainers.errors import ExplainersError
from explainers.methods._attention import AttentionMethod, check_start_layer
from explainers.methods._relevance import _forward_block
from explainers.methods.base import Attribution, Cost, Need, register_method
from explainers.models.base import ExplaineeAdapter, ViTBlockParts, ViTParts, resolve_targets

POOLS = ("cls", "mean")


def _block_from_attention(blk: ViTBlockParts, x: torch.Tensor, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Block output from its input ``x``, attention ``attn`` and values ``v`` (B×heads×T×d)."""
    b, t, _ = x.shape
    out = blk.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))
    x = x + (out * blk.ls1 if blk.ls1 is not None else out)
    mlp = blk.fc2(blk.act(blk.fc1(blk.norm2(x))))
    return x + (mlp * blk.ls2 if blk.ls2 is not None else mlp)


def layer_scores(parts: ViTParts, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """Class scores B×C from one block's output tokens, through the model's final norm and head(s)."""
    if pool == "mean":
        pooled = parts.final_norm(tokens.mean(dim=1))
        return sum(hd.weight * hd.linear(pooled) for hd in parts.heads)  # type: ignore[return-value]
    final = parts.final_norm(tokens)
    return sum(hd.weight * hd.linear(final[:, hd.token_index]) for hd in parts.heads)  # type: ignore[return-value]


def legrad_layer_maps(
    adapter: ExplaineeAdapter,
    pixel_values: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    start_layer: int = 0,
    pool: str = "cls",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-layer maps L'×B×T over all key tokens, logits of the forward, targets); L' = blocks from
    ``start_layer`` on."""
    parts = adapter.parts()
    with torch.no_grad():
        x = adapter.embed(pixel_values)
        kept = []
        for i, blk in enumerate(parts.blocks):
            x_in = x
            x, attn, cache = _forward_block(blk, x, keep=True)
            if i >= start_layer:
                assert cache is not None
                kept.append((blk, x_in, attn, cache.qkv[:, :, 2].transpose(1, 2)))
        logits = layer_scores(parts, x, "cls")
    targets_t = resolve_targets(targets, logits)
    with torch.enable_grad():
        leaves, total = [], 0.0
        for blk, x_in, attn, v in kept:
            leaf = attn.detach().requires_grad_(True)
            scores = layer_scores(parts, _block_from_attention(blk, x_in, leaf, v), pool)
            total = total + scores.gather(1, targets_t[:, None]).sum()
            leaves.append(leaf)
        grads = torch.autograd.grad(total, leaves)
    return torch.stack([g.clamp_min(0).mean(dim=(1, 2)) for g in grads]), logits, targets_t


@register_method("legrad")
class LeGrad(AttentionMethod):
    """Options: ``start_layer`` (first block used, 0 = all), ``pool`` (``cls`` or ``mean``)."""

    summary = (
        "LeGrad: per block relu(∂s^l/∂A^l) through the model's own norm and head, mean over heads, queries "
        "and blocks"
    )
    needs = frozenset({Need.ATTENTION, Need.GRADIENTS})
    cost = Cost.FEW_PASSES
    reference = "Bousselham et al., 2024"

    def __init__(
        self, adapter: ExplaineeAdapter, *, start_layer: int = 0, pool: str = "cls", normalize: bool = True
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        if pool not in POOLS:
            raise ExplainersError(f"legrad: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.start_layer = check_start_layer(adapter, start_layer, self.name)
        self.pool = pool

    def config(self) -> dict[str, Any]:
        return {**super().config(), "start_layer": self.start_layer, "pool": self.pool}

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        maps, logits, classes_t = legrad_layer_maps(
            self.adapter, self.adapter.normalize(images), classes, start_layer=self.start_layer, pool=self.pool
        )
        return Attribution(
            maps=maps.mean(dim=0)[:, self.adapter.num_prefix_tokens :], logits=logits, classes=classes_t
        )
