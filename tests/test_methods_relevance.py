"""Relevance propagation (full LRP, partial LRP, Transformer Attribution): the rules one by one against
direct formulas, then conservation through whole tiny ViTs.

Which conservation holds (and is checked): relevance starts as the one-hot of the target logit (total 1;
DeiT-distilled: 0.5 through each head). α1β0 ignores biases in numerator and denominator, so every
linear layer passes on exactly what it receives, biases or not; gradient × input on the two attention
matmuls gives each operand the full amount and the halving restores it; the residual rule rescales the
branches to the incoming sum. So the relevance reaching the embedding tokens sums to 1 per image on
ordinary random ViTs with biases. Below the embedding the position embedding takes its share at the
addition and the CLS/distillation tokens keep theirs (they have no pixels); zβ at the convolution is
conservative. With zero position embeddings, pixel relevance + prefix-token relevance = 1 exactly.
"""

from __future__ import annotations

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.methods import get_method
from explainers.methods._relevance import (
    alpha1_beta0,
    bilinear_matmul,
    propagate,
    residual,
    safe_divide,
    z_beta_conv,
)

HF_KINDS = ["vit", "deit", "deit-distilled"]


def test_safe_divide_semantics():
    num = torch.tensor([1.0, 1.0, 1.0, 2.0, 3.0])
    den = torch.tensor([0.0, 1e-12, -1e-12, -2.0, 4.0])
    torch.testing.assert_close(safe_divide(num, den), torch.tensor([0.0, 1e9, -1e9, -1.0, 0.75]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha1_beta0_matches_the_direct_formula(dtype):
    # The implementation uses x⁺W⁺ᵀ + x⁻W⁻ᵀ = ½(xWᵀ + |x||W|ᵀ): exact in float64, rounding-level in float32.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, generator=g, dtype=dtype)
    x[0, 1] = 0  # an all-zero input row: zero denominators, zero relevance
    w = torch.randn(7, 6, generator=g, dtype=dtype)
    r = torch.randn(2, 5, 7, generator=g, dtype=dtype)
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    s = safe_divide(r, xp @ wp.T + xn @ wn.T)
    expected = xp * (s @ wp) + xn * (s @ wn)
    mine = alpha1_beta0(x, x @ w.T, w, r)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(mine, expected, **tol)
    assert mine[0, 1].abs().sum() == 0
    # conservative per output unit whatever the bias (the bias is not part of the rule)
    torch.testing.assert_close(mine.sum(-1)[1], r.sum(-1)[1], **tol)


def test_bilinear_rule_is_half_gradient_times_input():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = a @ b
    r = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    ga, gb = torch.autograd.grad(z, (a, b), r / z)
    ra, rb = bilinear_matmul(a.detach(), b.detach(), z.detach(), r)
    torch.testing.assert_close(ra, 0.5 * a.detach() * ga)
    torch.testing.assert_close(rb, 0.5 * b.detach() * gb)
    torch.testing.assert_close(ra.sum() + rb.sum(), r.sum())  # bilinear: each operand gets the full sum


def test_residual_rule_rescales_per_sample():
    g = torch.Generator().manual_seed(2)
    x, y, r = (torch.randn(3, 4, 5, generator=g) for _ in range(3))
    ra, rb = residual(x, y, r)
    torch.testing.assert_close(ra.sum((1, 2)) + rb.sum((1, 2)), r.sum((1, 2)))
    raw_a, raw_b = (x * r / (x + y)).sum((1, 2)), (y * r / (x + y)).sum((1, 2))
    share = raw_a.abs() / (raw_a.abs() + raw_b.abs())
    torch.testing.assert_close(ra.sum((1, 2)), share * r.sum((1, 2)))
    # per sample: the second image's split does not depend on the others (the reference summed the batch)
    ra1, rb1 = residual(x[1:2], y[1:2], r[1:2])
    torch.testing.assert_close(ra1[0], ra[1])
    torch.testing.assert_close(rb1[0], rb[1])


def test_z_beta_conv_is_conservative():
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    x = torch.randn(2, 3, 8, 8, generator=g)
    r = torch.rand(2, 8, 2, 2, generator=g)
    with torch.no_grad():
        out = z_beta_conv(conv, x, r)
    assert out.shape == x.shape
    torch.testing.assert_close(out.sum((1, 2, 3)), r.sum((1, 2, 3)))


@pytest.mark.parametrize("kind", HF_KINDS)
def test_relevance_reaching_the_embedding_sums_to_one(kind, images):
    model = build_hf_model(kind)
    adapter = load_explainee(model)
    x = adapter.normalize(images)
    result = propagate(adapter, x, torch.tensor([0, 3, 1]), depth="input", with_gradients=True)
    # the forward from the parts is the model's forward
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(pixel_values=x).logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.token_relevance.sum((1, 2)), torch.ones(3), rtol=0, atol=1e-4)
    # its gradients are the adapter's
    _, _, grads, _ = adapter.attention_gradients(x, torch.tensor([0, 3, 1]))
    for mine, theirs in zip(result.attention_gradients, grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    # stopping early changes nothing above the stop
    partial = propagate(adapter, x, torch.tensor([0, 3, 1]), depth="last-attention")
    torch.testing.assert_close(partial.attention_relevance[-1], result.attention_relevance[-1])
    assert partial.attention_relevance[0] is None and partial.token_relevance is None


@pytest.mark.parametrize("kind", HF_KINDS)
def test_full_lrp_conserves_relevance_to_the_pixels(kind, images):
    model = build_hf_model(kind)
    base = model.vit if kind == "vit" else model.deit
    with torch.no_grad():  # no position embedding: no relevance leaves at the embedding addition
        base.embeddings.position_embeddings.zero_()
    adapter = load_explainee(model)
    result = propagate(adapter, adapter.normalize(images), None, depth="input")
    prefix = adapter.num_prefix_tokens
    pixels = result.pixel_relevance.sum((1, 2, 3))
    on_prefix = result.token_relevance[:, :prefix].sum((1, 2))
    torch.testing.assert_close(pixels + on_prefix, torch.ones(3), rtol=0, atol=1e-4)
    assert (pixels.abs() > 0.05).all()
    # the map the method returns is that relevance summed over colour channels
    maps = get_method("lrp", adapter, normalize=False)(images)
    torch.testing.assert_close(maps, result.pixel_relevance.sum(1))


def test_distilled_model_starts_from_both_heads(images):
    model = build_hf_model("deit-distilled")
    adapter = load_explainee(model)
    x = adapter.normalize(images)
    both = propagate(adapter, x, torch.tensor([1, 1, 1]), depth="input")
    with torch.no_grad():  # the distillation head reads token 1; silencing it leaves 0.5 to enter
        model.distillation_classifier.weight.zero_()
    one = propagate(adapter, x, torch.tensor([1, 1, 1]), depth="input")
    torch.testing.assert_close(both.token_relevance.sum((1, 2)), torch.ones(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(one.token_relevance.sum((1, 2)), torch.full((3,), 0.5), rtol=0, atol=1e-4)


def test_transformer_attribution_and_partial_lrp_from_the_relevance(images):
    adapter = load_explainee(build_hf_model("vit"))
    targets = torch.tensor([2, 2, 4])
    result = propagate(adapter, adapter.normalize(images), targets, depth="input", with_gradients=True)
    # partial LRP: relu(R_A) of the last block, mean over heads, CLS row, patch columns
    expected = result.attention_relevance[-1].clamp(min=0).mean(1)[:, 0, 1:]
    torch.testing.assert_close(
        get_method("partial-lrp", adapter, normalize=False)(images, targets),
        adapter.patch_map_to_image(expected),
    )
    # Transformer Attribution: product of (I + Ā) without row normalisation
    joint = torch.eye(17).repeat(3, 1, 1)
    for g, r in zip(result.attention_gradients, result.attention_relevance, strict=True):
        joint = torch.bmm(torch.eye(17) + (g * r).clamp(min=0).mean(1), joint)
    torch.testing.assert_close(
        get_method("transformer-attribution", adapter, normalize=False)(images, targets),
        adapter.patch_map_to_image(joint[:, 0, 1:]),
    )
