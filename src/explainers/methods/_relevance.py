"""Relevance propagation (LRP) through a ViT, written once on the adapter's own weights.

It follows :meth:`ViTAdapterBase.reference_forward` step by step: a hand-written forward over
``adapter.parts()`` keeps the activations each rule needs, then relevance flows back from the target
logit with the rules of Chefer et al. (CVPR 2021), the published rule set (docs/methods.md):

- linear layers (head, q/k/v, proj, fc1, fc2): LRP-αβ with α=1, β=0, bias ignored;
- LayerNorm, GELU, softmax, dropout, layer scale, the attention scale: relevance passes unchanged;
- the two attention matmuls (q kᵀ and A v): gradient × input for both operands, each share halved;
- residual additions: gradient × input for both branches, each branch then rescaled **per sample** so
  the shares are proportional to |sum of its raw relevance| and together equal the incoming sum;
- forks (the block input feeding the residual and the LayerNorm; h feeding q, k and v): summed;
- CLS pooling: relevance only on the pooled token; DeiT-distilled: each head gets its 0.5 share;
- the patch-embedding convolution (full LRP only): zβ with bounds = each image's min/max pixel value.

No hooks and no change to the model: the forward is ours, over views of the model's parameters.

Options (``rules``, ``eps``): ``rules="benchmark"`` switches to the rule set of the reference code's
other implementation (``layers_lrp``), which produced the published LRP and partial-LRP baseline rows:
the two sign pairs of α1β0 are normalised separately (x⁺W⁺ and x⁻W⁻ each by their own sum, so each
linear layer roughly doubles the relevance), and additions (residuals, the position embedding) split
by gradient × input without the per-sample rescaling. ``eps`` is the stabiliser of every division: a
denominator closer to 0 than ``eps`` becomes ±``eps`` (exact 0 gives 0); the reference instead adds
1e-9 to every denominator, which only matters for ill-conditioned entries.

Conservation (what the tests check): α1β0 conserves per output unit whatever the biases (the bias is
left out of both numerator and denominator, and the denominator Σ_i (x_i w_ji)₊ is ≥ 0); gradient ×
input on a bilinear product gives each operand the full output, halving makes the two shares sum to it;
the residual rescaling enforces the sum. So the relevance reaching the embedding tokens sums to the
starting relevance (1 for the one-hot target), except for units whose denominator is exactly 0. The
zβ rule is conservative too; what is lost on the way to the pixels is the share of the position
embedding at the embedding addition and the relevance left on the prefix tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError
from explainers.models.base import ExplaineeAdapter, ViTBlockParts, resolve_targets

EPS = 1e-9

Depth = Literal["last-attention", "attention", "input"]
RuleSet = Literal["transformer", "benchmark"]
RULE_SETS: tuple[str, ...] = ("transformer", "benchmark")


@dataclass(frozen=True)
class Rules:
    """Which variant of the rules to apply (see the module docstring)."""

    name: RuleSet = "transformer"
    eps: float = EPS

    @property
    def separate_signs(self) -> bool:
        return self.name == "benchmark"

    @property
    def rescale_residuals(self) -> bool:
        return self.name == "transformer"


def make_rules(rules: str, eps: float) -> Rules:
    """Validated :class:`Rules` from method options (one clear error for a bad value)."""
    if rules not in RULE_SETS:
        raise ExplainersError(f"rules must be one of {', '.join(RULE_SETS)}, got {rules!r}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ExplainersError(f"eps (the division stabiliser) must be a number > 0, got {eps!r}") from None
    if not eps > 0:
        raise ExplainersError(f"eps (the division stabiliser) must be > 0, got {eps}")
    return Rules(rules, eps)  # type: ignore[arg-type]


def safe_divide(num: torch.Tensor, den: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``num / den`` where a denominator within ``eps`` of 0 becomes ±eps and an exactly-zero one gives 0."""
    out = num / den
    small = den.abs() < eps
    if small.any():  # rare: fix those entries only, instead of guarding every element (saves passes)
        out = torch.where(small, num * den.sign() / eps, out)  # sign(0) = 0: an exact zero gives 0
    return out


def alpha1_beta0(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    relevance: torch.Tensor,
    w_abs: torch.Tensor | None = None,
    eps: float = EPS,
) -> torch.Tensor:
    """LRP-α1β0 through ``z = x Wᵀ`` (``z`` given without bias): R_in = x⁺⊙(W⁺ᵀS) + x⁻⊙(W⁻ᵀS),
    S = R / (x⁺W⁺ᵀ + x⁻W⁻ᵀ).

    With x± = (x ± |x|)/2 and W± = (W ± |W|)/2 the denominator is ½(x Wᵀ + |x| |W|ᵀ) and the numerator
    ½(x ⊙ SW + |x| ⊙ S|W|): three matmuls instead of four, and x Wᵀ is already known from the forward.
    Both halves cancel, so the code uses the doubled denominator (with the doubled 1e-9 threshold).
    The denominator is Σ_i (x_i w_ji)₊ ≥ 0: an exact 0 (every product ≤ 0, e.g. an all-zero input) or
    negative rounding noise gives no relevance (no product would contribute); a positive value below
    the threshold is raised to it, as everywhere.
    """
    if w_abs is None:
        w_abs = weight.abs()
    x_abs = x.abs()
    den = torch.addmm(z.reshape(-1, z.shape[-1]), x_abs.reshape(-1, x.shape[-1]), w_abs.t()).view_as(z)
    s = relevance / den
    small = den < 2 * eps
    if small.any():
        s = torch.where(small, torch.where(den > 0, relevance / (2 * eps), 0.0), s)
    return torch.addcmul(x * (s @ weight), x_abs, s @ w_abs)


def alpha1_beta0_separate(
    x: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """The reference's ``layers_lrp`` variant of α1β0: R_in = x⁺⊙(W⁺ᵀ R/Z⁺) + x⁻⊙(W⁻ᵀ R/Z⁻) with
    Z⁺ = x⁺W⁺ᵀ and Z⁻ = x⁻W⁻ᵀ normalised separately (each pair gets the full relevance)."""
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    s_pos = safe_divide(relevance, F.linear(x_pos, w_pos), eps)
    s_neg = safe_divide(relevance, F.linear(x_neg, w_neg), eps)
    return x_pos * (s_pos @ w_pos) + x_neg * (s_neg @ w_neg)


def linear_rule(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, rules: Rules
) -> torch.Tensor:
    """α1β0 through ``z = x Wᵀ`` in the variant ``rules`` selects."""
    if rules.separate_signs:
        return alpha1_beta0_separate(x, weight, relevance, rules.eps)
    return alpha1_beta0(x, z, weight, relevance, eps=rules.eps)


def residual(
    x: torch.Tensor,
    y: torch.Tensor,
    relevance: torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    eps: float = EPS,
    rescale: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``out = x + y`` split between the two branches, rescaled per sample (dim 0) unless
    ``rescale`` is False (plain gradient × input, the reference's ``layers_lrp``)."""
    s = safe_divide(relevance, x + y if out is None else out, eps)
    a, b = x * s, y * s
    if not rescale:
        return a, b
    dims = tuple(range(1, relevance.dim()))
    a_sum, b_sum, total = a.sum(dims), b.sum(dims), relevance.sum(dims)
    norm = a_sum.abs() + b_sum.abs()
    a_target = safe_divide(a_sum.abs(), norm, eps) * total
    b_target = safe_divide(b_sum.abs(), norm, eps) * total
    shape = (-1,) + (1,) * (relevance.dim() - 1)
    a_scale, b_scale = safe_divide(a_target, a_sum, eps), safe_divide(b_target, b_sum, eps)
    return a.mul_(a_scale.view(shape)), b.mul_(b_scale.view(shape))


def bilinear_matmul(
    a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient × input through ``z = a @ b`` for both operands, each share halved."""
    s = safe_divide(relevance, z, eps).mul_(0.5)
    return a * (s @ b.transpose(-1, -2)), b * (a.transpose(-1, -2) @ s)


def z_beta_conv(
    conv: torch.nn.Conv2d, x: torch.Tensor, relevance: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """zβ rule through the (bias-free) convolution, bounds L/H = each image's min/max input value."""
    w = conv.weight
    w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
    low = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x)
    high = x.amax(dim=(1, 2, 3), keepdim=True).expand_as(x)
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    den = F.conv2d(x, w, **kw) - F.conv2d(low, w_pos, **kw) - F.conv2d(high, w_neg, **kw)
    s = safe_divide(relevance, den, eps)

    def back(weight: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input(x.shape, weight, s, **kw)

    return x * back(w) - low * back(w_pos) - high * back(w_neg)


@dataclass
class _BlockCache:
    """What the relevance rules of one block need from the forward (detached for the backward rules)."""

    w_qkv: torch.Tensor  # [Wq; Wk; Wv], 3D×D
    x: torch.Tensor  # block input, B×T×D
    h1: torch.Tensor  # norm1(x)
    z_qkv: torch.Tensor  # h1 [Wq;Wk;Wv]ᵀ without bias, B×T×3D
    qkv: torch.Tensor  # with bias, B×T×3×heads×d
    scores: torch.Tensor  # q kᵀ (before the scale), B×heads×T×T
    attn: torch.Tensor  # softmax(scale · scores)
    ctx: torch.Tensor  # A v with heads merged, B×T×D
    z_proj: torch.Tensor  # proj(ctx) without bias
    branch1: torch.Tensor  # attention branch as added to the residual (after layer scale)
    x_mid: torch.Tensor
    h2: torch.Tensor
    z_fc1: torch.Tensor
    g: torch.Tensor  # act(fc1(h2))
    z_fc2: torch.Tensor
    branch2: torch.Tensor
    x_out: torch.Tensor


@dataclass
class RelevanceResult:
    """Output of :func:`propagate`. Lists are per block, first block first; ``None`` where not reached."""

    logits: torch.Tensor
    targets: torch.Tensor
    attentions: list[torch.Tensor]
    attention_relevance: list[torch.Tensor | None] = field(default_factory=list)
    attention_gradients: list[torch.Tensor] | None = None
    token_relevance: torch.Tensor | None = None  # at the embedding output, B×T×D ("input" only)
    pixel_relevance: torch.Tensor | None = None  # B×C×H×W, before the channel sum ("input" only)


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    z = F.linear(x, weight)
    return z, (z if bias is None else z + bias)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """B×T×D → B×heads×T×d (a view)."""
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def _forward_block(
    blk: ViTBlockParts, x: torch.Tensor, keep: bool
) -> tuple[torch.Tensor, torch.Tensor, _BlockCache | None]:
    """One block exactly as :meth:`ViTAdapterBase.reference_forward` computes it, keeping activations."""
    b, t, _ = x.shape
    weights = (blk.q_weight, blk.k_weight, blk.v_weight)
    biases = (blk.q_bias, blk.k_bias, blk.v_bias)
    w_qkv = torch.cat(weights)
    b_qkv = None
    if any(bias is not None for bias in biases):  # some models have a q bias but no k bias
        pieces = zip(biases, weights, strict=True)
        b_qkv = torch.cat([x.new_zeros(w.shape[0]) if bias is None else bias for bias, w in pieces])
    h1 = blk.norm1(x)
    z_qkv, qkv = _linear(h1, w_qkv, b_qkv)
    qkv = qkv.view(b, t, 3, blk.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2)
    attn = torch.softmax(scores * blk.scale, dim=-1)
    ctx = (attn @ v).transpose(1, 2).reshape(b, t, -1)
    z_proj, out = _linear(ctx, blk.proj.weight, blk.proj.bias)
    branch1 = out * blk.ls1 if blk.ls1 is not None else out
    x_mid = x + branch1
    h2 = blk.norm2(x_mid)
    z_fc1, f1 = _linear(h2, blk.fc1.weight, blk.fc1.bias)
    g = blk.act(f1)
    z_fc2, mlp = _linear(g, blk.fc2.weight, blk.fc2.bias)
    branch2 = mlp * blk.ls2 if blk.ls2 is not None else mlp
    x_out = x_mid + branch2
    cache = None
    if keep:  # field order of _BlockCache
        kept = (w_qkv, x, h1, z_qkv, qkv, scores, attn, ctx, z_proj, branch1, x_mid, h2, z_fc1, g, z_fc2)
        cache = _BlockCache(*kept, branch2, x_out)
    return x_out, attn, cache


def _detach(cache: _BlockCache) -> _BlockCache:
    return _BlockCache(*(getattr(cache, f).detach() for f in cache.__dataclass_fields__))


def _block_relevance(
    blk: ViTBlockParts, c: _BlockCache, relevance: torch.Tensor, need_input: bool, rules: Rules
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Relevance at the block output → (relevance at the block input or None, relevance at A)."""
    heads, eps, rescale = blk.num_heads, rules.eps, rules.rescale_residuals
    # MLP half: x_out = x_mid + ls2 · fc2(act(fc1(norm2(x_mid))))
    r_mid, r_mlp = residual(c.x_mid, c.branch2, relevance, c.x_out, eps=eps, rescale=rescale)
    r_g = linear_rule(c.g, c.z_fc2, blk.fc2.weight, r_mlp, rules)  # layer scale and act pass through
    r_mid += linear_rule(c.h2, c.z_fc1, blk.fc1.weight, r_g, rules)  # norm2 passes through; the fork sums
    # attention half: x_mid = x + ls1 · proj(A v)
    r_x, r_attn_out = residual(c.x, c.branch1, r_mid, c.x_mid, eps=eps, rescale=rescale)
    r_ctx = linear_rule(c.ctx, c.z_proj, blk.proj.weight, r_attn_out, rules)
    q, k, v = c.qkv.permute(2, 0, 3, 1, 4)
    r_a, r_v = bilinear_matmul(c.attn, v, _heads(c.ctx, heads), _heads(r_ctx, heads), eps)
    if not need_input:
        return None, r_a
    # softmax and the attention scale pass through: r_a is the relevance of q kᵀ
    r_q, r_kt = bilinear_matmul(q, k.transpose(-1, -2), c.scores, r_a, eps)
    r_qkv = torch.empty_like(c.qkv)  # B×T×3×heads×d, the layout of z_qkv
    r_qkv[:, :, 0] = r_q.transpose(1, 2)
    r_qkv[:, :, 1] = r_kt.permute(0, 3, 1, 2)
    r_qkv[:, :, 2] = r_v.transpose(1, 2)
    # q, k and v as one linear: α1β0 is per output unit, so this equals three separate linears
    r_h1 = linear_rule(c.h1, c.z_qkv, c.w_qkv, r_qkv.flatten(2), rules)
    return r_x.add_(r_h1), r_a  # norm1 passes through; the fork sums


def propagate(
    adapter: ExplaineeAdapter,
    pixel_values: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    depth: Depth,
    with_gradients: bool = False,
    rules: Rules | None = None,
    first_block: int = 0,
) -> RelevanceResult:
    """Run the explainee's forward from its parts and propagate the target's relevance back.

    ``targets``: class per image, or None for the predicted class. ``depth``: ``"last-attention"``
    stops at the last block's attention (partial LRP), ``"attention"`` at the first block's attention
    (Transformer Attribution), ``"input"`` goes to the pixels (full LRP). ``with_gradients`` also
    returns d(target logit)/dA per block. ``rules``: the rule variant (default: the published rule set,
    stabiliser 1e-9). ``first_block`` (``"attention"`` only): stop at that block's attention, leaving
    earlier blocks' relevance None (Transformer Attribution's ``start_layer``). All of it is per image:
    images in a batch do not interact.
    """
    if not adapter.supports_attention:
        raise ExplainersError("relevance propagation needs a ViT explainee")
    rules = Rules() if rules is None else rules
    parts = adapter.parts()
    n_blocks = len(parts.blocks)
    first_kept = {"last-attention": n_blocks - 1, "attention": first_block, "input": 0}[depth]
    with torch.set_grad_enabled(with_gradients):
        pixels = pixel_values.detach().requires_grad_(with_gradients)
        tokens = adapter.embed(pixels)
        x = tokens
        attentions, caches = [], []
        for i, blk in enumerate(parts.blocks):
            x, attn, cache = _forward_block(blk, x, keep=i >= first_kept)
            attentions.append(attn)
            caches.append(cache)
        final = parts.final_norm(x)
        pooled = [final[:, hd.token_index] for hd in parts.heads]
        logits = sum(hd.weight * hd.linear(p) for hd, p in zip(parts.heads, pooled, strict=True))
        assert isinstance(logits, torch.Tensor)
        targets = resolve_targets(targets, logits.detach())
        grads = None
        if with_gradients:
            score = logits.gather(1, targets[:, None]).sum()
            grads = [g.detach() for g in torch.autograd.grad(score, attentions)]

    with torch.no_grad():
        # The head: α1β0 on the target unit only (the one-hot start), each head with its weight.
        r_final = torch.zeros_like(final.detach())
        for hd, p in zip(parts.heads, pooled, strict=True):
            p = p.detach()
            w_t = hd.linear.weight[targets]  # B×D: the target row
            start = torch.full((p.shape[0], 1), hd.weight, dtype=p.dtype, device=p.device)
            if rules.separate_signs:  # the layers_lrp head: each sign pair normalised by its own sum
                pos = p.clamp(min=0) * w_t.clamp(min=0)
                neg = p.clamp(max=0) * w_t.clamp(max=0)
                r_final[:, hd.token_index] += pos * safe_divide(start, pos.sum(-1, keepdim=True), rules.eps)
                r_final[:, hd.token_index] += neg * safe_divide(start, neg.sum(-1, keepdim=True), rules.eps)
                continue
            den = 0.5 * ((p * w_t).sum(-1) + (p.abs() * w_t.abs()).sum(-1)).clamp_min(0)
            s = safe_divide(start[:, 0], den, rules.eps)[:, None]
            r_final[:, hd.token_index] += 0.5 * s * (p * w_t + p.abs() * w_t.abs())
        relevance: torch.Tensor | None = r_final  # the final LayerNorm passes relevance through
        attention_relevance: list[torch.Tensor | None] = [None] * n_blocks
        for i in range(n_blocks - 1, first_kept - 1, -1):
            cache = caches[i]
            assert cache is not None and relevance is not None
            need_input = depth == "input" or (depth == "attention" and i > first_kept)
            relevance, attention_relevance[i] = _block_relevance(
                parts.blocks[i], _detach(cache), relevance, need_input, rules
            )

        result = RelevanceResult(
            logits=logits.detach(),
            targets=targets,
            attentions=[a.detach() for a in attentions],
            attention_relevance=attention_relevance,
            attention_gradients=grads,
        )
        if depth == "input":
            assert relevance is not None
            result.token_relevance = relevance
            result.pixel_relevance = _embedding_relevance(
                adapter, pixels.detach(), tokens.detach(), relevance, rules
            )
    return result


def _embedding_relevance(
    adapter: ExplaineeAdapter, pixels: torch.Tensor, tokens: torch.Tensor, relevance: torch.Tensor, rules: Rules
) -> torch.Tensor:
    """Embedding tokens' relevance → pixels: the position-embedding addition, then zβ at the conv.

    The adapter exposes the embedding as a whole, so the addition is split over the patch tokens only:
    branch one = the convolution's tokens, branch two = everything else the embedding added (the
    position embedding). Prefix-token relevance is dropped (it has no pixels), as in the reference.
    """
    conv = adapter.parts().patch_embed
    prefix = adapter.num_prefix_tokens
    conv_out = conv(pixels)  # B×D×gh×gw
    b, d, gh, gw = conv_out.shape
    conv_tokens = conv_out.flatten(2).transpose(1, 2)
    rest = tokens[:, prefix:] - conv_tokens
    r_conv, _ = residual(conv_tokens, rest, relevance[:, prefix:], eps=rules.eps, rescale=rules.rescale_residuals)
    return z_beta_conv(conv, pixels, r_conv.transpose(1, 2).reshape(b, d, gh, gw), rules.eps)
