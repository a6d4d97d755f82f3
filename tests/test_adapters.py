"""Adapter parity: the adapter must report exactly what the wrapped model computes."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from torch import nn

from conftest import build_hf_model
from explainers import ExplaineeAdapter, ModelError, load_explainee

HF_KINDS = ["vit", "deit", "deit-distilled"]


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_logits_equal_model(kind, images):
    model = build_hf_model(kind)
    adapter = load_explainee(model, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    x = adapter.normalize(images)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
        assert torch.equal(adapter.logits(x), expected)
        assert torch.allclose(adapter.predict(images), expected)
    manual = (images - torch.tensor([0.4, 0.5, 0.6])[:, None, None]) / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    assert torch.allclose(x, manual)


@pytest.mark.parametrize("kind,prefix", [("vit", 1), ("deit", 2), ("deit-distilled", 2)])
def test_hf_layout(kind, prefix):
    adapter = load_explainee(build_hf_model(kind, image_size=48, patch_size=8))
    assert adapter.num_prefix_tokens == prefix
    assert adapter.grid == (6, 6)
    assert adapter.patch_size == (8, 8)
    assert adapter.image_size == (48, 48)
    assert adapter.num_blocks == 3 and adapter.num_heads == 4 and adapter.embed_dim == 32
    with torch.no_grad():
        feats = adapter.features(adapter.normalize(torch.rand(2, 3, 48, 48)))
    assert feats.shape == (2, prefix + 36, 32)


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_attentions_equal_eager_output_attentions(kind, images):
    model = build_hf_model(kind)
    adapter = load_explainee(model)
    x = adapter.normalize(images)
    with torch.no_grad():
        out = adapter.forward_attentions(x)
        assert model.config._attn_implementation == "sdpa", "adapter must restore the fast path"
        model.set_attn_implementation("eager")
        ref = model(pixel_values=x, output_attentions=True)
        model.set_attn_implementation("sdpa")
    assert len(out.attentions) == len(ref.attentions) == 3
    for mine, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert mine.shape == (3, 4, adapter.num_prefix_tokens + 16, adapter.num_prefix_tokens + 16)
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, out.attentions[0].shape[-1]))


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_attention_gradients_match_autograd(kind, images):
    model = build_hf_model(kind)
    adapter = load_explainee(model)
    x = adapter.normalize(images)
    targets = torch.tensor([0, 3, 1])
    _, _, grads, used = adapter.attention_gradients(x, targets)
    assert torch.equal(used, targets)
    # Independent computation: eager model, output_attentions, autograd on the returned maps.
    model.set_attn_implementation("eager")
    ref = model(pixel_values=x, output_attentions=True)
    model.set_attn_implementation("sdpa")
    ref_grads = torch.autograd.grad(ref.logits[torch.arange(3), targets].sum(), ref.attentions)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg)
    assert any(g.abs().sum() > 0 for g in grads)
    # Per image: image 1's gradient does not depend on image 0's target.
    _, _, grads_single, _ = adapter.attention_gradients(x[1:2], 3)
    torch.testing.assert_close(grads_single[-1], grads[-1][1:2])


@pytest.mark.parametrize("kind", HF_KINDS)
def test_parts_reproduce_the_model(kind, images):
    adapter = load_explainee(build_hf_model(kind))
    x = adapter.normalize(images)
    with torch.no_grad():
        ref = adapter.forward_attentions(x)
        mine = adapter.reference_forward(x)
        torch.testing.assert_close(mine.logits, ref.logits, rtol=1e-4, atol=1e-5)
        for a, b in zip(mine.attentions, ref.attentions, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(adapter.forward_head(adapter.features(x)), ref.logits, rtol=1e-4, atol=1e-5)


def test_targets_validation(images):
    adapter = load_explainee(build_hf_model("vit"))
    with pytest.raises(ModelError, match="out of range"):
        adapter.attention_gradients(adapter.normalize(images), 7)
    with pytest.raises(ModelError, match="targets for a batch"):
        adapter.attention_gradients(adapter.normalize(images), [1, 2])


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_plain_module_adapter(images):
    model = _TinyCNN().eval()
    with pytest.raises(ModelError, match="pass image_size, mean, std"):
        load_explainee(model)
    adapter = load_explainee(model, image_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    assert type(adapter) is ExplaineeAdapter and adapter.num_classes == 6
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict(images), model((images - 0.5) / 0.5))
    with pytest.raises(ModelError, match="plain module"):
        adapter.forward_attentions(images)


def test_hf_directory_roundtrip_and_errors(tmp_path, images):
    from transformers import ViTImageProcessor

    model = build_hf_model("vit")
    model.save_pretrained(tmp_path / "m")
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.3, 0.3]
    ).save_pretrained(tmp_path / "m")
    adapter = load_explainee(tmp_path / "m")
    assert adapter.image_size == (32, 32)
    torch.testing.assert_close(adapter.mean, torch.tensor([0.1, 0.2, 0.3]))
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict(images), model(pixel_values=adapter.normalize(images)).logits)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights"):
        load_explainee(tmp_path / "m")
    with pytest.raises(ModelError, match="not found"):
        load_explainee(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_explainee(tmp_path / "empty")


def test_unsupported_hf_architecture(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    ResNetForImageClassification(
        ResNetConfig(num_labels=3, hidden_sizes=[8, 8, 8, 8], embedding_size=8)
    ).save_pretrained(tmp_path / "r")
    with pytest.raises(ModelError, match="'resnet' model"):
        load_explainee(tmp_path / "r")


timm_available = importlib.util.find_spec("timm") is not None


@pytest.mark.skipif(not timm_available, reason="timm extra not installed")
@pytest.mark.parametrize("distilled", [False, True])
def test_timm_vit_adapter(distilled, images):
    import timm.models.deit as deit
    import timm.models.vision_transformer as vt

    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    model = (
        deit.VisionTransformerDistilled(**common) if distilled else vt.VisionTransformer(reg_tokens=2, **common)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter = load_explainee(model, mean=[0.5] * 3, std=[0.5] * 3)  # built directly: no pretrained_cfg
    assert adapter.num_prefix_tokens == (2 if distilled else 3)
    assert adapter.grid == (4, 4)
    x = adapter.normalize(images)
    with torch.no_grad():
        ref_logits = model(x)
        torch.testing.assert_close(adapter.logits(x), ref_logits)
        out = adapter.forward_attentions(x)
        torch.testing.assert_close(out.logits, ref_logits, rtol=1e-4, atol=1e-5)
        assert all(a.fused_attn == vt.use_fused_attn() for a in (b.attn for b in model.blocks))
        mine = adapter.reference_forward(x)
        torch.testing.assert_close(mine.logits, ref_logits, rtol=1e-4, atol=1e-5)
        for a, b in zip(mine.attentions, out.attentions, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    _, attns, grads, _ = adapter.attention_gradients(x, 2)
    assert len(grads) == 2 and grads[0].shape == attns[0].shape and grads[0].abs().sum() > 0


def test_normalisation_from_model_config():
    model = build_hf_model("vit")
    assert torch.equal(load_explainee(model).mean, torch.full((3,), 0.5))  # what build_hf_model records
    model.config.image_mean, model.config.image_std = [0.1, 0.2, 0.3], [0.2, 0.2, 0.2]
    adapter = load_explainee(model)
    torch.testing.assert_close(adapter.mean, torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(load_explainee(model, std=[1.0, 1.0, 1.0]).std, torch.ones(3))


def test_weights_fingerprint_tracks_every_weight():
    adapter = load_explainee("embedded")
    twin = load_explainee(copy.deepcopy(adapter.model), mean=adapter.mean.tolist(), std=adapter.std.tolist())
    assert adapter.weights_fingerprint() == twin.weights_fingerprint()
    with torch.no_grad():
        next(twin.model.parameters()).view(-1)[0] += 1e-3
    assert adapter.weights_fingerprint() != twin.weights_fingerprint()


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_trainable_backbone_is_an_independent_headless_copy(kind, images):
    adapter = load_explainee(build_hf_model(kind))
    backbone = adapter.trainable_backbone()
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), adapter.features(images))
    own = {id(p) for p in adapter.model.parameters()}
    assert not own & {id(p) for p in backbone.parameters()}
    assert len(backbone.blocks) == 3
    head_params = {n for n, _ in adapter.model.named_parameters() if "classifier" in n}
    assert head_params and not [n for n, _ in backbone.named_parameters() if "classifier" in n]
    with backbone.eager_attention():
        assert backbone.attention_mode() == "eager"
    assert backbone.attention_mode() == adapter.model.config._attn_implementation
    with pytest.raises(ModelError, match="ViT"):
        load_explainee(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))).trainable_backbone()
