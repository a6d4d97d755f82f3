"""Attention baselines against hand-set matrices and independent computations from HF's own outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_hf_model
from explainers import load_explainee
from explainers.methods import get_method
from explainers.methods._attention import rollout
from explainers.models import AttentionOutput


def test_rollout_math_on_hand_set_matrices():
    # identity attention: Â = (I + I)/2 = I, the product is I, the CLS row has nothing on the patches
    eye = torch.eye(5).expand(2, 5, 5)
    torch.testing.assert_close(rollout([eye, eye, eye]), eye)
    # uniform attention: every patch column of the CLS row gets the same share
    uniform = torch.full((1, 5, 5), 0.2)
    joint = rollout([uniform, uniform])
    step = (uniform[0] + torch.eye(5)) / 2
    torch.testing.assert_close(joint[0], step @ step)
    assert torch.allclose(joint[0, 0, 1:], joint[0, 0, 1:].mean().expand(4))
    # two tokens, two blocks, worked out by hand; the order (last block applied last) matters
    a1 = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    a2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # Â1 = [[.75, .25], [.125, .875]], Â2 = [[.5, .5], [.5, .5]], joint = Â2 Â1
    torch.testing.assert_close(rollout([a1, a2]), torch.tensor([[[0.4375, 0.5625], [0.4375, 0.5625]]]))
    # without normalisation (GAE / Transformer Attribution): (I + A2)(I + A1)
    expected = (torch.eye(2) + a2[0]) @ (torch.eye(2) + a1[0])
    torch.testing.assert_close(rollout([a1, a2], normalize_rows=False)[0], expected)


def _fake_attentions(adapter, monkeypatch, make):
    """Make ``adapter.forward_attentions`` return hand-set attention maps (logits from the real model)."""
    real = adapter.forward_attentions

    def fake(pixel_values):
        out = real(pixel_values)
        return AttentionOutput(out.logits, [make(a) for a in out.attentions])

    monkeypatch.setattr(adapter, "forward_attentions", fake)


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_rollout_of_identity_attention_is_uniform(kind, images, monkeypatch):
    adapter = load_explainee(build_hf_model(kind))
    _fake_attentions(adapter, monkeypatch, lambda a: torch.eye(a.shape[-1]).expand_as(a).clone())
    maps = get_method("rollout", adapter, normalize=False)(images)
    assert maps.shape == (3, 32, 32)
    torch.testing.assert_close(maps, torch.zeros_like(maps))
    # uniform attention: also a uniform map, now with mass on the patches
    _fake_attentions(adapter, monkeypatch, lambda a: torch.full_like(a, 1 / a.shape[-1]))
    maps = get_method("rollout", adapter, normalize=False)(images)
    assert maps.min() > 0
    torch.testing.assert_close(maps, maps[:, :1, :1].expand_as(maps))


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_raw_attention_on_hand_set_matrix(kind, images, monkeypatch):
    adapter = load_explainee(build_hf_model(kind))
    prefix, heads, t = adapter.num_prefix_tokens, 4, adapter.num_prefix_tokens + 16
    g = torch.Generator().manual_seed(1)
    last = torch.rand(3, heads, t, t, generator=g)
    _fake_attentions(adapter, monkeypatch, lambda a: last)  # every block; raw attention reads the last
    maps = get_method("raw-attention", adapter, normalize=False)(images)
    expected = last[:, :, 0, prefix:].mean(dim=1)  # CLS row, patch columns, mean over heads
    torch.testing.assert_close(maps, adapter.patch_map_to_image(expected))
    assert maps.shape == (3, 32, 32)


def _eager_reference(model, pixel_values, targets):
    """Independent: HF eager attention with output_attentions, autograd on the returned maps."""
    model.set_attn_implementation("eager")
    try:
        out = model(pixel_values=pixel_values, output_attentions=True)
        score = out.logits[torch.arange(len(targets)), targets].sum()
        grads = torch.autograd.grad(score, out.attentions)
    finally:
        model.set_attn_implementation("sdpa")
    return [a.detach() for a in out.attentions], grads


def _upsample(patch_scores, size=32):
    g = int(patch_scores.shape[-1] ** 0.5)
    return F.interpolate(
        patch_scores.reshape(-1, 1, g, g), size=(size, size), mode="bilinear", align_corners=False
    )[:, 0]


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_gae_and_attention_gradcam_match_direct_computation(kind, images):
    model = build_hf_model(kind)
    adapter = load_explainee(model)
    prefix = adapter.num_prefix_tokens
    targets = torch.tensor([4, 0, 2])
    attentions, grads = _eager_reference(model, adapter.normalize(images), targets)

    # GAE written out: R = I; R += mean_h(relu(∇A ⊙ A)) R per block; CLS row, patch columns
    t = attentions[0].shape[-1]
    r = torch.eye(t).repeat(3, 1, 1)
    for a, g in zip(attentions, grads, strict=True):
        r = r + torch.bmm((g * a).clamp(min=0).mean(dim=1), r)
    gae_expected = _upsample(r[:, 0, prefix:])

    # attention Grad-CAM written out on the last block, per image and per head
    a_cls, g_cls = attentions[-1][:, :, 0, prefix:], grads[-1][:, :, 0, prefix:]
    cam = torch.zeros(3, 16)
    for i in range(3):
        for h in range(a_cls.shape[1]):
            cam[i] += g_cls[i, h].mean() * a_cls[i, h] / a_cls.shape[1]
    gradcam_expected = _upsample(cam.clamp(min=0))

    torch.testing.assert_close(get_method("gae", adapter, normalize=False)(images, targets), gae_expected)
    torch.testing.assert_close(
        get_method("attention-gradcam", adapter, normalize=False)(images, targets), gradcam_expected
    )
    # targets=None explains the predicted class
    with torch.no_grad():
        predicted = model(pixel_values=adapter.normalize(images)).logits.argmax(-1)
    gae = get_method("gae", adapter)
    torch.testing.assert_close(gae(images), gae(images, predicted))


def test_gradient_methods_work_on_a_frozen_model(images):
    model = build_hf_model("vit").requires_grad_(False)
    adapter = load_explainee(model)
    for name in ("gae", "attention-gradcam", "transformer-attribution", "attnlrp", "legrad"):
        maps = get_method(name, adapter)(images, 1)
        assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all()
    assert not any(p.requires_grad for p in model.parameters())
