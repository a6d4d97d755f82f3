"""AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) on the adapter's parts, as gradient × input of a modified forward.

Relevance starts as the target logit and flows back with the paper's rules:

- linear layers (q/k/v, proj, fc1, fc2, head), residual and position-embedding additions: the ε-rule
  R_i = Σ_j x_i w_ji R_j / z_j (bias kept in z, ε → 0);
- softmax: the paper's Proposition 3.1, R_x = x ⊙ (R_s − s Σ R_s) (x = the scaled scores);
- the two attention matmuls q kᵀ and A v: the uniform rule, each operand gets half of the ε-rule share;
- LayerNorm: the standard deviation is held constant (identity rule on 1/σ), the centring and the
  affine part take the ε-rule;
- GELU (any element-wise activation): the identity rule, R_x = R_y;
- the patch embedding: ε-rule at the convolution, i.e. pixel × gradient; the map is that relevance
  summed over colour channels. Prefix tokens (CLS, distillation, registers) keep their share.

Why gradient × input realises these rules: write every relevance as R = z ⊙ g. The ε-rule through a
linear map is then the plain gradient (g_in = Wᵀ g_out), the softmax rule is the plain softmax
gradient divided by nothing (∂s/∂x applied to R/s gives R − sΣR), the identity rule is a gradient
multiplied by f(x)/x, the uniform rule halves the gradient reaching each matmul operand, and holding σ
constant is a detach. So one backward of the modified forward gives R at the pixels as x ⊙ ∂.
The tests check this against an explicit rule-by-rule propagation written from the equations.

Option ``attention``: ``"attnlrp"`` (default, the softmax rule above) or ``"cp"`` — CP-LRP (Ali et al.,
2022; what the authors' ``lxt`` package uses for torchvision ViTs): no relevance through the softmax
(q and k held constant), so all of A v's relevance goes to v.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explainers.errors import ExplainersError
from explainers.methods._attention import AttentionMethod
from explainers.methods.base import Attribution, Cost, Need, register_method
from explainers.models.base import ExplaineeAdapter, ViTBlockParts, resolve_targets

ATTENTION_RULES = ("attnlrp", "cp")


def scale_gradient(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t`` in the forward; its gradient multiplied by ``factor`` in the backward."""
    return t * factor + (t * (1.0 - factor)).detach()


def identity_rule(act: Any, x: torch.Tensor) -> torch.Tensor:
    """``act(x)`` whose backward gives R_x = R_y: gradient scaled by act(x)/x (0 where x = 0)."""
    y = act(x)
    ratio = torch.where(x == 0, torch.zeros_like(x), y / torch.where(x == 0, torch.ones_like(x), x))
    return y.detach() + (x - x.detach()) * ratio.detach()


def layer_norm_constant_std(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm with σ held constant in the backward (identity rule on the 1/σ factor)."""
    if isinstance(norm, nn.Identity):
        return x
    if not isinstance(norm, nn.LayerNorm):
        raise ExplainersError(f"attnlrp: unsupported normalisation layer {type(norm).__name__} (LayerNorm only)")
    centred = x - x.mean(dim=-1, keepdim=True)
    std = (centred.pow(2).mean(dim=-1, keepdim=True) + norm.eps).sqrt()
    y = centred / std.detach()
    if norm.weight is not None:
        y = y * norm.weight
    if norm.bias is not None:
        y = y + norm.bias
    return y


def _block(blk: ViTBlockParts, x: torch.Tensor, cp: bool) -> torch.Tensor:
    """One block with the AttnLRP backward (see the module docstring)."""
    b, t, _ = x.shape
    h1 = layer_norm_constant_std(blk.norm1, x)

    def heads(w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(h1, w, bias).view(b, t, blk.num_heads, -1).transpose(1, 2)

    q, k, v = heads(blk.q_weight, blk.q_bias), heads(blk.k_weight, blk.k_bias), heads(blk.v_weight, blk.v_bias)
    if cp:  # CP-LRP: the attention probabilities are constants, v takes all of A v's relevance
        q, k = q.detach(), k.detach()
    else:  # uniform rule on q kᵀ
        q, k, v = scale_gradient(q, 0.5), scale_gradient(k, 0.5), scale_gradient(v, 0.5)
    attn = torch.softmax((q @ k.transpose(-1, -2)) * blk.scale, dim=-1)  # plain gradient = the softmax rule
    if not cp:
        attn = scale_gradient(attn, 0.5)  # uniform rule on A v (v's half is applied above)
    out = blk.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))
    x = x + (out * blk.ls1 if blk.ls1 is not None else out)
    h2 = layer_norm_constant_std(blk.norm2, x)
    mlp = blk.fc2(identity_rule(blk.act, blk.fc1(h2)))
    return x + (mlp * blk.ls2 if blk.ls2 is not None else mlp)


def attnlrp_relevance(
    adapter: ExplaineeAdapter, pixel_values: torch.Tensor, targets: torch.Tensor | None, *, attention: str = "attnlrp"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel relevance B×C×H×W, logits, targets). Per image: the batch's target logits are summed,
    and images do not interact, so each image's gradient is its own."""
    parts = adapter.parts()
    cp = attention == "cp"
    with torch.enable_grad():
        pixels = pixel_values.detach().requires_grad_(True)
        x = adapter.embed(pixels)
        for blk in parts.blocks:
            x = _block(blk, x, cp)
        final = layer_norm_constant_std(parts.final_norm, x)
        logits = sum(hd.weight * hd.linear(final[:, hd.token_index]) for hd in parts.heads)
        assert isinstance(logits, torch.Tensor)
        targets_t = resolve_targets(targets, logits.detach())
        (grad,) = torch.autograd.grad(logits.gather(1, targets_t[:, None]).sum(), pixels)
    return pixels.detach() * grad, logits.detach(), targets_t


@register_method("attnlrp")
class AttnLRP(AttentionMethod):
    """Pixel relevance of the target logit summed over colour channels (signed before the min–max)."""

    summary = "AttnLRP: softmax and uniform matmul rules, ε elsewhere, input × relevance summed over channels"
    needs = frozenset({Need.ATTENTION, Need.GRADIENTS})
    cost = Cost.FEW_PASSES
    reference = "Achtibat et al., ICML 2024"

    def __init__(self, adapter: ExplaineeAdapter, *, attention: str = "attnlrp", normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        if attention not in ATTENTION_RULES:
            raise ExplainersError(f"attnlrp: attention must be one of {', '.join(ATTENTION_RULES)}, got {attention!r}")
        self.attention = attention
        parts = adapter.parts()  # fail at construction, not mid-run, on an unsupported norm layer
        for norm in [parts.final_norm] + [n for blk in parts.blocks for n in (blk.norm1, blk.norm2)]:
            if not isinstance(norm, (nn.LayerNorm, nn.Identity)):
                raise ExplainersError(
                    f"attnlrp: unsupported normalisation layer {type(norm).__name__} in {adapter.identifier}"
                )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "attention": self.attention}

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        relevance, logits, classes_t = attnlrp_relevance(
            self.adapter, self.adapter.normalize(images), classes, attention=self.attention
        )
        return Attribution(maps=relevance.sum(dim=1), logits=logits, classes=classes_t)
