"""What every baseline must do: batch = per image, clear errors, the model left as it was, HF = timm."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from conftest import build_hf_model
from explainers import ExplainersError, load_explainee
from explainers.methods import METHODS, Cost, Need, available_methods, get_method

# The contract applies to every registered baseline: the lists come from the registry, so a new method is
# covered without editing this file (the learned ones need a checkpoint and have their own tests).
_LIBRARY = {name: cls for name, cls in METHODS.items() if cls.__module__.startswith("explainers.")}
ATTENTION = [name for name, cls in _LIBRARY.items() if Need.ATTENTION in cls.needs]
AGNOSTIC = [name for name, cls in _LIBRARY.items() if not cls.needs & {Need.VIT, Need.ATTENTION, Need.CHECKPOINT}]
# small settings keep the model-agnostic methods fast; the defaults are tested elsewhere
FAST = {"integrated-gradients": {"steps": 8}, "rise": {"num_masks": 64}}


def make(name, adapter, **kw):
    return get_method(name, adapter, **{**FAST.get(name, {}), **kw})


def test_all_baselines_are_registered():
    # A floor: none of the published baselines may drop out of the registry (or lose its descriptors).
    baselines = {
        "raw-attention",
        "rollout",
        "attention-gradcam",
        "gae",
        "partial-lrp",
        "transformer-attribution",
        "lrp",
        "attnlrp",
        "legrad",
        "integrated-gradients",
        "rise",
        "random",
    }
    assert baselines <= set(ATTENTION + AGNOSTIC) and set(ATTENTION + AGNOSTIC) <= set(available_methods())
    for name, cls in _LIBRARY.items():
        assert cls.summary and cls.reference and isinstance(cls.cost, Cost), name
        assert all(isinstance(need, Need) for need in cls.needs), name


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
@pytest.mark.parametrize("name", ATTENTION + AGNOSTIC)
def test_batch_equals_per_image(kind, name, images):
    adapter = load_explainee(build_hf_model(kind, num_hidden_layers=2))
    method = make(name, adapter, normalize=False)
    targets = torch.tensor([3, 0, 3])
    batch = method(images, targets)
    assert batch.shape == (3, 32, 32) and torch.isfinite(batch).all()
    for i in range(3 if method.deterministic else 0):  # noise (random) differs per call by design
        single = method(images[i : i + 1], int(targets[i]))
        torch.testing.assert_close(single[0], batch[i], rtol=1e-4, atol=1e-6 * float(batch[i].abs().max()))
    maps = make(name, adapter)(images)  # normalised, predicted class
    assert maps.min() >= 0 and maps.max() <= 1


class _TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_errors_are_one_clear_line(images):
    plain = load_explainee(_TinyCNN().eval(), image_size=32, mean=[0.5] * 3, std=[0.5] * 3)
    for name in ATTENTION:
        with pytest.raises(ExplainersError, match="needs attention maps"):
            make(name, plain)
    for name in AGNOSTIC:  # model-agnostic: fine on a plain module
        assert make(name, plain)(images).shape == (3, 32, 32)
    vit = load_explainee(build_hf_model("vit"))
    for name in ATTENTION + AGNOSTIC:
        method = make(name, vit)
        with pytest.raises(ExplainersError, match="out of range"):
            method(images, 5)
        with pytest.raises(ExplainersError, match="empty batch"):
            method(images[:0])
    with pytest.raises(ExplainersError, match="bad options"):
        get_method("rise", vit, masks=3)
    with pytest.raises(ExplainersError, match="steps"):
        get_method("integrated-gradients", vit, steps=0)


class _Boom(RuntimeError):
    pass


def _hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


@pytest.mark.parametrize("name", ATTENTION + AGNOSTIC)
def test_model_is_left_as_it_was_even_after_an_error(name, images):
    model = build_hf_model("vit")
    adapter = load_explainee(model)
    method = make(name, adapter)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method(images)

    def boom(module, args):
        raise _Boom("inside the explainee")

    # a module the method runs (attnlrp applies LayerNorm's formula itself, with σ held constant)
    layer = adapter.layers[-1]
    handle = (layer.mlp.fc1 if name == "attnlrp" else layer.layernorm_after).register_forward_pre_hook(boom)
    with pytest.raises(_Boom):
        method(images)
    handle.remove()
    assert _hooks(model) == 0, "a method left hooks on the model"
    assert model.config._attn_implementation == "sdpa"
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


timm_available = importlib.util.find_spec("timm") is not None


def _timm_copy_of(hf_model):
    """A timm VisionTransformer with the HF ViT's weights (same math: LayerNorm eps, exact GELU)."""
    import timm.models.vision_transformer as vt

    cfg = hf_model.config
    model = vt.VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.hidden_size,
        depth=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
        num_classes=cfg.num_labels,
        qkv_bias=True,
    ).eval()
    hf = hf_model.vit
    with torch.no_grad():
        emb = hf.embeddings
        model.patch_embed.proj.load_state_dict(emb.patch_embeddings.projection.state_dict())
        model.cls_token.copy_(emb.cls_token)
        model.pos_embed.copy_(emb.position_embeddings)
        for blk, layer in zip(model.blocks, hf.layers, strict=True):
            att = layer.attention
            blk.norm1.load_state_dict(layer.layernorm_before.state_dict())
            blk.attn.qkv.weight.copy_(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]))
            blk.attn.qkv.bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
            blk.attn.proj.load_state_dict(att.o_proj.state_dict())
            blk.norm2.load_state_dict(layer.layernorm_after.state_dict())
            blk.mlp.fc1.load_state_dict(layer.mlp.fc1.state_dict())
            blk.mlp.fc2.load_state_dict(layer.mlp.fc2.state_dict())
        model.norm.load_state_dict(hf.layernorm.state_dict())
        model.head.load_state_dict(hf_model.classifier.state_dict())
    return model


@pytest.mark.skipif(not timm_available, reason="timm extra not installed")
def test_timm_and_hf_give_the_same_maps(images):
    hf_model = build_hf_model("vit", num_hidden_layers=2, layer_norm_eps=1e-6)
    hf = load_explainee(hf_model)
    tm = load_explainee(_timm_copy_of(hf_model), mean=[0.5] * 3, std=[0.5] * 3)
    with torch.no_grad():
        torch.testing.assert_close(tm.predict(images), hf.predict(images), rtol=1e-4, atol=1e-5)
    targets = torch.tensor([1, 4, 0])
    for name in ATTENTION + AGNOSTIC:
        torch.testing.assert_close(
            make(name, tm, normalize=False)(images, targets),
            make(name, hf, normalize=False)(images, targets),
            rtol=1e-3,
            atol=1e-5,
            msg=lambda m, name=name: f"{name}: {m}",
        )


@pytest.mark.skipif(not timm_available, reason="timm extra not installed")
@pytest.mark.parametrize("variant", ["registers+layerscale+no-qkv-bias", "distilled"])
def test_timm_variants(variant, images):
    import timm.models.deit as deit
    import timm.models.vision_transformer as vt

    from explainers.methods._relevance import propagate

    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    if variant == "distilled":
        model = deit.VisionTransformerDistilled(**common)
    else:
        model = vt.VisionTransformer(reg_tokens=2, init_values=0.5, qkv_bias=False, **common)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    adapter = load_explainee(model, mean=[0.5] * 3, std=[0.5] * 3)  # built directly: no pretrained_cfg
    result = propagate(adapter, adapter.normalize(images), None, depth="input")
    torch.testing.assert_close(result.token_relevance.sum((1, 2)), torch.ones(3), rtol=0, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(adapter.normalize(images)), rtol=1e-4, atol=1e-5)
    for name in ATTENTION:
        method = make(name, adapter, normalize=False)
        batch = method(images, 2)
        torch.testing.assert_close(method(images[1:2], 2)[0], batch[1], rtol=1e-4, atol=1e-6)


def test_non_square_patch_grid():
    model = build_hf_model("deit-distilled", image_size=(24, 40), patch_size=4, num_hidden_layers=2)
    adapter = load_explainee(model)
    assert adapter.grid == (6, 10)
    images = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(5))
    for name in ATTENTION + AGNOSTIC:
        maps = make(name, adapter)(images)
        assert maps.shape == (2, 24, 40) and torch.isfinite(maps).all(), name
    # row-major patch order: the raw-attention map is the CLS row laid out as 6 rows of 10 patches
    with torch.no_grad():
        model.set_attn_implementation("eager")
        last = model(pixel_values=adapter.normalize(images), output_attentions=True).attentions[-1]
        model.set_attn_implementation("sdpa")
    expected = last[:, :, 0, 2:].mean(1).reshape(2, 1, 6, 10)
    expected = torch.nn.functional.interpolate(expected, size=(24, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(make("raw-attention", adapter, normalize=False)(images), expected[:, 0])
