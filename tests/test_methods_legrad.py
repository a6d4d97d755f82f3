"""LeGrad: against an independent per-image, per-layer computation on the HF model's own forward
(hidden states and attention maps from the model, one autograd call per layer), an analytic last-layer
case, and batch = per image."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.errors import ExplainersError
from explainers.methods import get_method

pytestmark = pytest.mark.usefixtures("one_thread")
timm_available = importlib.util.find_spec("timm") is not None


def _model(name):
    if name.startswith("hf-"):
        return build_hf_model(name[3:])
    import timm.models.vision_transformer as vt

    torch.manual_seed(0)
    model = vt.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5, reg_tokens=2, init_values=0.5
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _reference(model, pixel_values, target, pool, start_layer, prefix):
    """One image: the model's eager forward with all attentions and hidden states; for each layer l the
    layer score from hidden state l+1 and autograd to attention l in the full graph."""
    base = model.vit if model.config.model_type == "vit" else model.deit
    heads = (
        [(0, model.cls_classifier, 0.5), (1, model.distillation_classifier, 0.5)]
        if hasattr(model, "distillation_classifier")
        else [(0, model.classifier, 1.0)]
    )
    model.set_attn_implementation("eager")
    try:
        out = model(pixel_values=pixel_values, output_attentions=True, output_hidden_states=True)
        maps = []
        for layer in range(start_layer, len(out.attentions)):
            hidden = out.hidden_states[layer + 1]
            if pool == "mean":
                score = sum(w * h(base.layernorm(hidden.mean(1)))[0, target] for _, h, w in heads)
            else:
                normed = base.layernorm(hidden)
                score = sum(w * h(normed[:, i])[0, target] for i, h, w in heads)
            (grad,) = torch.autograd.grad(score, out.attentions[layer], retain_graph=True)
            maps.append(grad.clamp(min=0).mean(dim=(1, 2))[0, prefix:])
    finally:
        model.set_attn_implementation("sdpa")
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_legrad_equals_per_layer_autograd_on_the_models_own_forward(kind, pool, images):
    model = build_hf_model(kind, num_hidden_layers=4)
    adapter = load_explainee(model)
    targets = torch.tensor([2, 0, 4])
    for start_layer in (0, 2):
        method = get_method("legrad", adapter, normalize=False, pool=pool, start_layer=start_layer)
        batched = method.attribute(images, targets).maps  # B×P patch scores
        for i in range(3):
            pixels = adapter.normalize(images[i : i + 1]).requires_grad_(True)
            expected = _reference(model, pixels, int(targets[i]), pool, start_layer, adapter.num_prefix_tokens)
            torch.testing.assert_close(batched[i], expected, rtol=1e-4, atol=1e-7)
            assert expected.abs().max() > 0


@pytest.mark.parametrize("name", ["hf-vit", "hf-deit-distilled"] + (["timm-registers"] if timm_available else []))
def test_last_layer_only_is_relu_of_the_logit_gradient(name, images):
    # Analytic: at the last block with the model's own pooling, s^L is the logit, so the map is
    # relu(∂logit/∂A_L) averaged over heads and query rows (the adapter's attention gradients,
    # captured by hooks on the model's own forward).
    adapter = load_explainee(_model(name), mean=[0.5] * 3, std=[0.5] * 3)  # timm models from configs carry no mean/std
    targets = torch.tensor([1, 1, 3])
    _, _, grads, _ = adapter.attention_gradients(adapter.normalize(images), targets)
    expected = grads[-1].clamp(min=0).mean(dim=(1, 2))[:, adapter.num_prefix_tokens :]
    method = get_method("legrad", adapter, normalize=False, start_layer=adapter.num_blocks - 1)
    torch.testing.assert_close(method.attribute(images, targets).maps, expected)


def test_batch_equals_per_image_and_options(images):
    adapter = load_explainee(build_hf_model("deit"))
    method = get_method("legrad", adapter, normalize=False)
    batch = method(images)
    for i in range(3):
        torch.testing.assert_close(method(images[i : i + 1])[0], batch[i], rtol=1e-5, atol=1e-8)
    assert batch.shape == (3, 32, 32) and (batch >= 0).all()
    with pytest.raises(ExplainersError, match="pool must be one of"):
        get_method("legrad", adapter, pool="max")
    with pytest.raises(ExplainersError, match="start_layer must be an integer block index in 0..2"):
        get_method("legrad", adapter, start_layer=3)
    assert get_method("legrad", adapter, pool="mean", start_layer=1).config() == {
        "normalize": True,
        "start_layer": 1,
        "pool": "mean",
    }
