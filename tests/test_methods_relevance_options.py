"""Options of the LRP family and rollout that reproduce the Transformer Attribution paper's published
rows: ``start_layer`` (TA, rollout), ``rules=benchmark`` (lrp, partial-lrp), ``eps``. Hand-computed
two-block cases, rule-level hand computations, and the benchmark rule set against an explicit per-image
propagation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_hf_model
from explainers import load_explainee
from explainers.errors import ExplainersError
from explainers.methods import get_method
from explainers.methods import transformer_attribution as ta_module
from explainers.methods._relevance import (
    RelevanceResult,
    Rules,
    alpha1_beta0,
    alpha1_beta0_separate,
    propagate,
    residual,
    safe_divide,
    z_beta_conv,
)
from explainers.models import AttentionOutput

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- start_layer


def _two_block_adapter():
    return load_explainee(build_hf_model("vit", num_hidden_layers=2))  # 1 CLS + 16 patches, 4 heads


def test_rollout_start_layer_on_hand_set_two_blocks(images, monkeypatch):
    adapter = _two_block_adapter()
    t = 17
    a1 = torch.eye(t)  # block 1: every token attends to itself
    a2 = torch.zeros(t, t)
    a2[:, 0] = 1.0  # block 2: every token attends to the CLS token …
    a2[0, 0], a2[0, 1] = 0.5, 0.5  # … except the CLS token: half to itself, half to patch 1
    fake = [a1.expand(3, 4, t, t), a2.expand(3, 4, t, t)]
    real = adapter.forward_attentions
    monkeypatch.setattr(adapter, "forward_attentions", lambda x: AttentionOutput(real(x).logits, fake))
    # Â1 = I; Â2 row 0 = ([.5, .5, 0…] + e0)/2 = [.75, .25, 0…]: the CLS row's patch columns are
    # [.25, 0, …] from either start (Â1 = I changes nothing)
    expected = torch.zeros(3, 16)
    expected[:, 0] = 0.25
    for start in (0, 1):
        rollout = get_method("rollout", adapter, start_layer=start)
        torch.testing.assert_close(rollout.attribute(images, None).maps, expected)
    # swap the blocks: from block 0 the product is Â2' Â1' with Â1' = the mixing one; from block 1 only I
    monkeypatch.setattr(adapter, "forward_attentions", lambda x: AttentionOutput(real(x).logits, fake[::-1]))
    # joint row 0 = e0ᵀ (I) · Â1' … = [.75, .25, 0…] from 0; the identity alone from 1
    torch.testing.assert_close(get_method("rollout", adapter, start_layer=0).attribute(images, None).maps, expected)
    torch.testing.assert_close(
        get_method("rollout", adapter, start_layer=1).attribute(images, None).maps, torch.zeros(3, 16)
    )


def test_transformer_attribution_start_layer_on_hand_set_two_blocks(images, monkeypatch):
    adapter = _two_block_adapter()
    t = 17
    grads = [torch.ones(3, 4, t, t), torch.ones(3, 4, t, t)]
    r1, r2 = torch.zeros(3, 4, t, t), torch.zeros(3, 4, t, t)
    r1[:, :, 1, 2] = 2.0  # block 1: token 1 draws on token 2 with weight 2
    r1[:, :, 0, 3] = -5.0  # negative: removed by the relu
    r2[:, :, 0, 1] = 3.0  # block 2: the CLS token draws on token 1 with weight 3
    seen = {}

    def fake_propagate(adapter, pixel_values, targets, **kw):
        seen.update(kw)
        first = kw["first_block"]
        relevance = [None if i < first else r for i, r in enumerate((r1, r2))]
        return RelevanceResult(torch.zeros(3, 5), torch.zeros(3), [], relevance, grads)

    monkeypatch.setattr(ta_module, "propagate", fake_propagate)
    # (I + Ā2)(I + Ā1), CLS row: e0 + 3 e1 + 3·2 e2 → patches [3, 6, 0, …]; from block 1: e0 + 3 e1
    full = get_method("transformer-attribution", adapter).attribute(images, torch.zeros(3, dtype=torch.long)).maps
    expected = torch.zeros(3, 16)
    expected[:, 0], expected[:, 1] = 3.0, 6.0
    torch.testing.assert_close(full, expected)
    late = get_method("transformer-attribution", adapter, start_layer=1).attribute(images, torch.zeros(3).long()).maps
    expected[:, 1] = 0.0
    torch.testing.assert_close(late, expected)
    assert seen["first_block"] == 1  # the propagation stops at the start block


def test_propagation_stops_at_the_start_block(images):
    adapter = _two_block_adapter()
    x = adapter.normalize(images)
    full = propagate(adapter, x, None, depth="attention", with_gradients=True)
    late = propagate(adapter, x, None, depth="attention", with_gradients=True, first_block=1)
    assert late.attention_relevance[0] is None
    torch.testing.assert_close(late.attention_relevance[1], full.attention_relevance[1])


def test_start_layer_is_validated():
    adapter = _two_block_adapter()
    for name in ("rollout", "transformer-attribution"):
        with pytest.raises(ExplainersError, match=r"start_layer must be an integer block index in 0\.\.1"):
            get_method(name, adapter, start_layer=2)
        assert get_method(name, adapter, start_layer=1).config()["start_layer"] == 1


# ---------------------------------------------------------------- rules and eps, rule level


def test_separately_normalised_sign_pairs_by_hand():
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, -1.0], [-3.0, 2.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    # x⁺ = [2, 0], x⁻ = [0, -1]; W⁺ = [[1, 0], [0, 2]], W⁻ = [[0, -1], [-3, 0]]
    # unit 0: Z⁺ = 2, Z⁻ = 1 → input 0 gets 2·1·1/2 = 1, input 1 gets (-1)(-1)·1/1 = 1
    # unit 1: Z⁺ = Z⁻ = 0 → nothing
    torch.testing.assert_close(alpha1_beta0_separate(x, w, r), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    # the published (joint) rule normalises by Z⁺ + Z⁻ = 3 instead: [2/3, 1/3]
    torch.testing.assert_close(alpha1_beta0(x, x @ w.T, w, r), torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64))


def test_residual_without_rescaling_by_hand():
    x = torch.tensor([[1.0, 3.0]])
    y = torch.tensor([[1.0, -1.0]])
    r = torch.tensor([[2.0, 4.0]])
    # out = [2, 2], R/out = [1, 2]: x gets [1, 6], y gets [1, -2] (sums 7 and -1)
    a, b = residual(x, y, r, rescale=False)
    torch.testing.assert_close(a, torch.tensor([[1.0, 6.0]]))
    torch.testing.assert_close(b, torch.tensor([[1.0, -2.0]]))
    # rescaled: shares |7| : |-1| of the total 6 → sums 5.25 and 0.75
    a, b = residual(x, y, r)
    torch.testing.assert_close(torch.stack([a.sum(), b.sum()]), torch.tensor([5.25, 0.75]))


def test_eps_sets_the_division_guard():
    num = torch.tensor([1.0, 1.0, 1.0, 1.0])
    den = torch.tensor([5e-4, -5e-4, 0.0, 2e-3])
    torch.testing.assert_close(safe_divide(num, den, 1e-3), torch.tensor([1e3, -1e3, 0.0, 500.0]))
    torch.testing.assert_close(safe_divide(num, den), 1 / den.masked_fill(den == 0, float("inf")))


def test_rules_options_are_validated_and_recorded():
    adapter = _two_block_adapter()
    for name in ("lrp", "partial-lrp", "transformer-attribution"):
        with pytest.raises(ExplainersError, match="rules must be one of transformer, benchmark"):
            get_method(name, adapter, rules="layers_lrp")
        with pytest.raises(ExplainersError, match="eps"):
            get_method(name, adapter, eps=0)
        config = get_method(name, adapter, rules="benchmark", eps=1e-6).config()
        assert config["rules"] == "benchmark" and config["eps"] == 1e-6


# ---------------------------------------------------------------- rules=benchmark on a two-block model


def _div(r, z):
    return torch.where(z == 0, torch.zeros_like(r), r / torch.where(z == 0, torch.ones_like(z), z))


def _lin(x, w, r):
    """layers_lrp's linear rule, written out: each sign pair by its own sum."""
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    return xp * (_div(r, xp @ wp.T) @ wp) + xn * (_div(r, xn @ wn.T) @ wn)


def explicit_benchmark_lrp(adapter, pixels, target):
    """One image, float64: full LRP with the benchmark rules, block by block without the batched code."""
    parts = adapter.parts()
    with torch.no_grad():
        tokens = adapter.embed(pixels)[0]
        x, cache = tokens, []
        for blk in parts.blocks:
            t = x.shape[0]
            h1 = blk.norm1(x)
            q, k, v = (
                F.linear(h1, getattr(blk, f"{n}_weight"), getattr(blk, f"{n}_bias")).view(t, blk.num_heads, -1)
                for n in "qkv"
            )
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            scores = q @ k.transpose(-1, -2)
            attn = torch.softmax(scores * blk.scale, -1)
            ctx_h = attn @ v
            ctx = ctx_h.transpose(0, 1).reshape(t, -1)
            b1 = blk.proj(ctx)
            xm = x + b1
            h2 = blk.norm2(xm)
            g = blk.act(blk.fc1(h2))
            b2 = blk.fc2(g)
            cache.append((x, h1, q, k, v, scores, attn, ctx_h, ctx, b1, xm, h2, g, b2, xm + b2))
            x = xm + b2
        final = parts.final_norm(x)
        r = torch.zeros_like(final)
        r[0] = _lin(final[0:1], parts.heads[0].linear.weight[target : target + 1], torch.ones(1, 1).double())[0]
        for blk, (x, h1, q, k, v, scores, attn, ctx_h, ctx, b1, xm, h2, g, b2, out) in zip(
            reversed(parts.blocks), reversed(cache), strict=True
        ):
            r_xm, r_b2 = xm * _div(r, out), b2 * _div(r, out)  # no rescaling
            r_xm = r_xm + _lin(h2, blk.fc1.weight, _lin(g, blk.fc2.weight, r_b2))
            r_x, r_b1 = x * _div(r_xm, xm), b1 * _div(r_xm, xm)
            t = x.shape[0]
            s = _div(_lin(ctx, blk.proj.weight, r_b1).view(t, blk.num_heads, -1).transpose(0, 1), ctx_h) / 2
            r_attn, r_v = attn * (s @ v.transpose(-1, -2)), v * (attn.transpose(-1, -2) @ s)
            s2 = _div(r_attn, scores) / 2
            r_q, r_k = q * (s2 @ k), k * (s2.transpose(-1, -2) @ q)
            r_qkv = torch.cat([h.transpose(0, 1).reshape(t, -1) for h in (r_q, r_k, r_v)], -1)
            w_qkv = torch.cat([blk.q_weight, blk.k_weight, blk.v_weight])
            r = r_x + _lin(h1, w_qkv, r_qkv)
        prefix = adapter.num_prefix_tokens
        conv = parts.patch_embed
        conv_tokens = conv(pixels)[0].flatten(1).T
        r_conv = conv_tokens * _div(r[prefix:], tokens[prefix:])  # the position embedding's share leaves
        gh, gw = adapter.grid
        return z_beta_conv(conv, pixels, r_conv.T.reshape(1, -1, gh, gw))[0], cache[-1][6], r


def test_benchmark_rules_equal_the_explicit_propagation(images):
    model = build_hf_model("vit", num_hidden_layers=2).double()
    adapter = load_explainee(model)
    pixels = adapter.normalize(images.double())
    targets = torch.tensor([1, 4, 2])
    result = propagate(adapter, pixels, targets, depth="input", rules=Rules("benchmark"))
    lrp = get_method("lrp", adapter, rules="benchmark", normalize=False).attribute(images.double(), targets).maps
    partial_lrp = get_method("partial-lrp", adapter, rules="benchmark", normalize=False)
    partial = partial_lrp.attribute(images.double(), targets).maps
    for i in range(3):
        expected, _, r_tokens = explicit_benchmark_lrp(adapter, pixels[i : i + 1], int(targets[i]))
        torch.testing.assert_close(result.token_relevance[i], r_tokens, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(result.pixel_relevance[i], expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(lrp[i], expected.sum(0), rtol=1e-6, atol=1e-9)
    # partial LRP reads the last block's attention relevance, which the benchmark rules change too
    transformer = get_method("partial-lrp", adapter, normalize=False).attribute(images.double(), targets).maps
    assert not torch.allclose(partial, transformer)
    # not conservative (sign pairs each get the full relevance, additions are not rescaled): the total at
    # the embedding is far from the 1 the published rules keep
    assert ((result.token_relevance.sum((1, 2)) - 1).abs() > 1).all()
