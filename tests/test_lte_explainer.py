"""LTE explainer: mask shapes and ranges, frozen parts, checkpoints and their explainee check."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.explainer import CheckpointMismatchError
from explainers.learned.lte.loss import lte_loss
from explainers.learned.lte.pretrain import frozen

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def _explainer(kind="vit", **cfg):
    adapter = load_explainee(build_hf_model(kind))
    return LTEExplainer(adapter, LTEConfig(**cfg))


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_initial_mask_is_half_and_shapes(kind, images):
    ex = _explainer(kind)
    patch, mask = ex.masks(images)
    assert patch.shape == (3, 4, 4) and mask.shape == (3, 32, 32)
    # Small head init, zero bias: sigmoid(≈0) ≈ 0.5 everywhere.
    assert (patch - 0.5).abs().max() < 0.02
    maps = ex(images)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1


def test_maps_resize_inputs_of_other_sizes():
    ex = _explainer()
    assert ex(torch.rand(2, 3, 40, 40)).shape == (2, 32, 32)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "softmax", "none"])
def test_activation_ranges(activation, images):
    ex = _explainer(activation=activation, mask_loss="entropy" if activation == "softmax" else "softplus")
    with torch.no_grad():  # push the scores far out of [0, 1] to check the clamping
        ex.net.head.fc2.weight.mul_(500)
        ex.net.head.fc2.bias.fill_(0.3)
    patch, mask = ex.masks(images)
    assert mask.min() >= 0 and mask.max() <= 1
    if activation == "softmax":
        torch.testing.assert_close(patch.flatten(1).sum(1), torch.ones(3))
    if activation == "relu":
        assert patch.min() >= 0
    if activation == "none":
        assert patch.min() < 0 or patch.max() > 1  # raw scores; only the mask is clamped


def test_upsampling_is_bilinear_align_corners_false(images):
    ex = _explainer()
    patch, mask = ex.masks(images)
    ref = torch.nn.functional.interpolate(
        patch[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(mask, ref)


def test_explainer_starts_from_explainee_weights_but_is_a_copy():
    adapter = load_explainee(build_hf_model())
    ex = LTEExplainer(adapter)
    theirs = dict(adapter.backbone().named_parameters())
    for name, p in ex.net.backbone.named_parameters():
        assert torch.equal(p, theirs[name]) and p.data_ptr() != theirs[name].data_ptr()


@pytest.mark.parametrize("freeze_blocks", [0, 1])
def test_frozen_parts_stay_frozen_after_a_training_step(freeze_blocks, images):
    ex = _explainer(freeze_blocks=freeze_blocks, lambda_mask=1.0)
    net, adapter = ex.net, ex.adapter
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    explainee_before = {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}
    opt = torch.optim.AdamW(ex.trainable_parameters(), lr=1e-2)
    net.train()
    with frozen(adapter.model):
        patch, mask = ex.masks(images)
        lte_loss(adapter, images, patch, mask, torch.tensor([0, 1, 2]), ex.config).total.mean().backward()
    opt.step()
    after = net.state_dict()
    embeddings = [k for k in before if ".embeddings." in k]
    assert embeddings and all(torch.equal(before[k], after[k]) for k in embeddings)
    assert not any(p.requires_grad for n, p in net.named_parameters() if ".embeddings." in n)
    block0 = [k for k in before if ".layer.0." in k or ".layers.0." in k]
    assert block0
    assert all(torch.equal(before[k], after[k]) for k in block0) == (freeze_blocks == 1)
    for k in [k for k in before if "layernorm." in k and "layer." not in k and "layers." not in k] + [
        "head.fc1.weight"
    ]:
        assert not torch.equal(before[k], after[k]), k
    # the explainee itself never changes, and its requires_grad flags are restored
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in explainee_before.items())
    assert all(p.requires_grad for p in adapter.model.parameters())


def test_save_and_load_round_trip(tmp_path, images):
    ex = _explainer(lambda_mask=7.0)
    with torch.no_grad():
        ex.net.head.fc2.weight.normal_()
    ex.save_pretrained(tmp_path / "ckpt", extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["explainee"]["grid"] == [4, 4] and meta["config"]["lambda_mask"] == 7.0
    assert meta["training"]["note"] == "x"
    again = LTEExplainer.from_pretrained(tmp_path / "ckpt", explainee=ex.adapter)
    assert again.config == ex.config
    torch.testing.assert_close(again(images), ex(images), rtol=0, atol=0)
    # no pickle anywhere: the weights are safetensors
    with open(tmp_path / "ckpt" / "model.safetensors", "rb") as fh:
        assert not fh.read(64).startswith(b"\x80")


@pytest.mark.parametrize("other", [dict(num_labels=7), dict(image_size=48), dict(num_hidden_layers=2)])
def test_checkpoint_for_another_explainee_is_refused(tmp_path, other):
    ex = _explainer()
    ex.adapter.identifier = "explainee-A"
    ex.save_pretrained(tmp_path / "ckpt")
    adapter_b = load_explainee(build_hf_model(**other))
    adapter_b.identifier = "explainee-B"
    with pytest.raises(CheckpointMismatchError) as info:
        LTEExplainer.from_pretrained(tmp_path / "ckpt", explainee=adapter_b)
    msg = str(info.value)
    assert "explainee-A" in msg and "explainee-B" in msg


def test_not_a_checkpoint(tmp_path):
    from explainers.errors import ModelError

    with pytest.raises(ModelError, match="not an LTE explainer checkpoint"):
        LTEExplainer.from_pretrained(tmp_path, explainee=load_explainee(build_hf_model()))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm extra not installed")
def test_timm_explainee(images):
    import timm.models.vision_transformer as vt

    torch.manual_seed(0)
    model = vt.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, reg_tokens=2
    ).eval()
    ex = LTEExplainer(load_explainee(model, mean=[0.5] * 3, std=[0.5] * 3))
    patch, mask = ex.masks(images)
    assert patch.shape == (3, 4, 4) and mask.shape == (3, 32, 32)
    frozen_names = [n for n, p in ex.net.named_parameters() if not p.requires_grad]
    assert {"backbone.model.cls_token", "backbone.model.reg_token", "backbone.model.pos_embed"} <= set(
        frozen_names
    )
    assert not any(n.startswith("backbone.model.head") for n, _ in ex.net.named_parameters())
    out = ex.refine(images[:2], steps=2, lr=1e-3, return_details=True)
    assert out.maps.shape == (2, 32, 32)
    # per-image (vmap) and one-by-one agree for timm blocks too
    seq = ex.refine(images[:2], steps=2, lr=1e-3, parallel=False)
    torch.testing.assert_close(out.maps, seq, rtol=1e-4, atol=1e-5)


def test_a_checkpoint_for_other_weights_is_refused_unless_allowed(tmp_path):
    from explainers.models.signature import WeightsMismatchError

    adapter = load_explainee(build_hf_model())
    LTEExplainer(adapter).save_pretrained(tmp_path / "plte")
    meta = json.loads((tmp_path / "plte" / "config.json").read_text())
    assert meta["explainee_weights_fingerprint"] == adapter.weights_fingerprint()
    LTEExplainer.from_pretrained(tmp_path / "plte", explainee=adapter)
    other = load_explainee(build_hf_model(seed=7))  # same architecture, other weights
    with pytest.raises(WeightsMismatchError, match="other weights than explainee .*allow_other_weights"):
        LTEExplainer.from_pretrained(tmp_path / "plte", explainee=other)
    LTEExplainer.from_pretrained(tmp_path / "plte", explainee=other, allow_other_weights=True)
