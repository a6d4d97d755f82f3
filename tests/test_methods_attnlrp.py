"""AttnLRP: the rules one by one against their formulas, an analytic conservation case, and the batched
gradient × input implementation against an explicit rule-by-rule propagation (per image, float64)
written from the paper's equations."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from conftest import build_hf_model
from explainers import load_explainee
from explainers.errors import ExplainersError
from explainers.methods import get_method
from explainers.methods.attnlrp import attnlrp_relevance, identity_rule, layer_norm_constant_std, scale_gradient

pytestmark = pytest.mark.usefixtures("one_thread")
timm_available = importlib.util.find_spec("timm") is not None


def test_softmax_gradient_times_input_is_the_softmax_rule():
    # R_s = s ⊙ g at the output; x ⊙ ∂ gives the paper's R_x = x ⊙ (R_s − s Σ R_s)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.softmax(x, -1)
    r_s = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(s, x, r_s / s)
    expected = x * (r_s - s * r_s.sum(-1, keepdim=True))
    torch.testing.assert_close(x * grad, expected.detach())


def test_identity_rule_and_gradient_scaling():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], dtype=torch.float64, requires_grad=True)
    y = identity_rule(F.gelu, x)
    torch.testing.assert_close(y, F.gelu(x))  # the forward is unchanged
    r_y = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0], dtype=torch.float64)
    g_y = r_y / y.detach()
    g_y[2] = 1.0  # y = 0 there: any upstream gradient
    (grad,) = torch.autograd.grad(y, x, g_y)
    torch.testing.assert_close((x * grad)[[0, 1, 3, 4]], r_y[[0, 1, 3, 4]])  # R_x = R_y
    assert grad[2] == 0  # x = 0 (GELU(0) = 0): nothing to pass
    z = scale_gradient(x, 0.25)
    torch.testing.assert_close(z, x)
    (grad,) = torch.autograd.grad(z.sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, 0.25))


def test_layer_norm_with_constant_std_is_the_epsilon_rule_on_its_linear_part():
    g = torch.Generator().manual_seed(1)
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, generator=g))
        norm.bias.copy_(torch.randn(6, generator=g))
    x = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = layer_norm_constant_std(norm, x)
    torch.testing.assert_close(y, norm(x))
    r_y = torch.randn(3, 6, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(y, x, r_y / y.detach())
    # y = M x + b with M = diag(w)/σ · (I − 11ᵀ/D); ε-rule: R_x = x ⊙ ((R_y / y) M)
    std = x.detach().var(-1, unbiased=False, keepdim=True).add(norm.eps).sqrt()
    centring = torch.eye(6, dtype=torch.float64) - 1 / 6
    for i in range(3):
        m = torch.diag(norm.weight.detach()) / std[i] @ centring
        torch.testing.assert_close((x * grad)[i], x[i].detach() * ((r_y[i] / y[i].detach()) @ m))


def _zero_biases_and_tokens(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "position_embeddings", "cls_token", "distillation_token")):
                p.zero_()


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_cp_rules_conserve_the_logit_without_biases(kind, images):
    # Hand-derivable: without biases, position embedding and class token, every CP-LRP rule is
    # conservative (ε-rule on bias-free linears and additions, identity on GELU and 1/σ, attention
    # held constant), and the prefix tokens are 0 (x ⊙ ∂ = 0 there): the pixels get the whole logit.
    model = build_hf_model(kind)
    _zero_biases_and_tokens(model)
    adapter = load_explainee(model)
    targets = torch.tensor([0, 3, 1])
    relevance, logits, _ = attnlrp_relevance(adapter, adapter.normalize(images), targets, attention="cp")
    torch.testing.assert_close(relevance.sum((1, 2, 3)), logits[torch.arange(3), targets], rtol=1e-4, atol=1e-5)
    # the AttnLRP softmax rule is not conservative: it leaks (or adds) relevance at the softmax
    full, _, _ = attnlrp_relevance(adapter, adapter.normalize(images), targets)
    assert not torch.allclose(full.sum((1, 2, 3)), logits[torch.arange(3), targets], rtol=1e-3)


# ---------------------------------------------------------------- explicit reference (from the equations)


def _ln_rule(norm, x, y, r_y):
    """ε-rule through LayerNorm's linear part with σ constant: R_x = x ⊙ ((R_y/y) M)."""
    if isinstance(norm, torch.nn.Identity):
        return r_y
    std = x.var(-1, unbiased=False, keepdim=True).add(norm.eps).sqrt()  # T×1
    s = r_y / y * norm.weight / std  # (R/y)_j w_j / σ
    return x * (s - s.mean(-1, keepdim=True))  # … times (I − 11ᵀ/D)


def _eps(x, z, weight, r):
    """ε-rule through z = x Wᵀ + b: R_x = x ⊙ ((R/z) W)."""
    return x * ((r / z) @ weight)


def explicit_attnlrp(adapter, pixels, target, attention="attnlrp"):
    """One image (1×3×H×W, float64 model): every rule written out, no autograd."""
    parts = adapter.parts()
    with torch.no_grad():
        tokens = adapter.embed(pixels)[0]
        x, cache = tokens, []
        for blk in parts.blocks:
            c = {"x": x, "h1": blk.norm1(x)}
            t = x.shape[0]
            for n in "qkv":
                w, b = getattr(blk, f"{n}_weight"), getattr(blk, f"{n}_bias")
                c["z" + n] = F.linear(c["h1"], w, b)
                c[n] = c["z" + n].view(t, blk.num_heads, -1).transpose(0, 1)
            c["xs"] = blk.scale * c["q"] @ c["k"].transpose(-1, -2)
            c["A"] = torch.softmax(c["xs"], -1)
            c["ctx_h"] = c["A"] @ c["v"]
            c["ctx"] = c["ctx_h"].transpose(0, 1).reshape(t, -1)
            c["o"] = blk.proj(c["ctx"])
            c["b1"] = c["o"] * blk.ls1 if blk.ls1 is not None else c["o"]
            c["xm"] = x + c["b1"]
            c["h2"] = blk.norm2(c["xm"])
            c["f1"] = blk.fc1(c["h2"])
            c["g"] = blk.act(c["f1"])
            c["m"] = blk.fc2(c["g"])
            c["b2"] = c["m"] * blk.ls2 if blk.ls2 is not None else c["m"]
            x = c["xm"] + c["b2"]
            c["out"] = x
            cache.append(c)
        final = parts.final_norm(x)
        # head(s): logit = Σ_h w_h z_h, ε-rule over the sum gives each z_h the share w_h z_h
        r_final = torch.zeros_like(final)
        for hd in parts.heads:
            p = final[hd.token_index]
            r_final[hd.token_index] += hd.weight * p * hd.linear.weight[target]
        r = _ln_rule(parts.final_norm, x, final, r_final)
        for blk, c in zip(reversed(parts.blocks), reversed(cache), strict=True):
            r_xm = c["xm"] * r / c["out"]
            r_m = c["b2"] * r / c["out"]  # layer scale: a constant factor keeps R
            r_f1 = _eps(c["g"], c["m"], blk.fc2.weight, r_m)  # identity rule at the activation
            r_xm = r_xm + _ln_rule(blk.norm2, c["xm"], c["h2"], _eps(c["h2"], c["f1"], blk.fc1.weight, r_f1))
            r_x = c["x"] * r_xm / c["xm"]
            r_o = c["b1"] * r_xm / c["xm"]
            r_ctx = _eps(c["ctx"], c["o"], blk.proj.weight, r_o)
            t = r_ctx.shape[0]
            s = r_ctx.view(t, blk.num_heads, -1).transpose(0, 1) / c["ctx_h"]
            if attention == "cp":
                r_v = c["v"] * (c["A"].transpose(-1, -2) @ s)
                r_q = r_k = torch.zeros_like(r_v)
            else:  # uniform rule on A v, softmax rule, uniform rule on q kᵀ
                r_a = c["A"] * ((s / 2) @ c["v"].transpose(-1, -2))
                r_v = c["v"] * (c["A"].transpose(-1, -2) @ (s / 2))
                r_xs = c["xs"] * (r_a - c["A"] * r_a.sum(-1, keepdim=True))
                s2 = r_xs / (2 * c["xs"]) * blk.scale
                r_q = c["q"] * (s2 @ c["k"])
                r_k = c["k"] * (s2.transpose(-1, -2) @ c["q"])

            def merge(h, t=t):
                return h.transpose(0, 1).reshape(t, -1)

            r_h1 = (
                _eps(c["h1"], c["zq"], blk.q_weight, merge(r_q))
                + _eps(c["h1"], c["zk"], blk.k_weight, merge(r_k))
                + _eps(c["h1"], c["zv"], blk.v_weight, merge(r_v))
            )
            r = r_x + _ln_rule(blk.norm1, c["x"], c["h1"], r_h1)
        # patch embedding: token = W u + (bias, position): ε-rule with the token as denominator
        conv = parts.patch_embed
        prefix = adapter.num_prefix_tokens
        ph, pw = conv.kernel_size
        u = F.unfold(pixels, (ph, pw), stride=(ph, pw))[0].T  # P×(C·ph·pw), same order as the conv weight
        r_u = u * ((r[prefix:] / tokens[prefix:]) @ conv.weight.flatten(1))
        r_pix = F.fold(r_u.T[None], pixels.shape[-2:], (ph, pw), stride=(ph, pw))
    return r_pix[0].sum(0)


def _timm_model(distilled: bool):
    import timm.models.deit as deit
    import timm.models.vision_transformer as vt

    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    model = (
        deit.VisionTransformerDistilled(**common)
        if distilled
        else vt.VisionTransformer(reg_tokens=2, init_values=0.5, **common)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


MODELS = ["hf-vit", "hf-deit-distilled"] + (["timm-registers", "timm-distilled"] if timm_available else [])


def _model(name):
    if name.startswith("hf-"):
        return build_hf_model(name[3:])
    return _timm_model(name == "timm-distilled")


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", MODELS)
def test_batched_attnlrp_equals_the_explicit_rules_per_image(name, attention, images):
    # timm models built from configs carry no mean/std
    adapter = load_explainee(_model(name).double(), mean=[0.5] * 3, std=[0.5] * 3)
    pixels = adapter.normalize(images.double())
    targets = torch.tensor([0, 3, 1])
    method = get_method("attnlrp", adapter, normalize=False, attention=attention)
    batched = method.attribute(images.double(), targets).maps
    for i in range(3):
        expected = explicit_attnlrp(adapter, pixels[i : i + 1], int(targets[i]), attention)
        torch.testing.assert_close(batched[i], expected, rtol=1e-7, atol=1e-10)
        assert expected.abs().max() > 1e-3


def test_float32_batch_equals_per_image_and_predicted_target(images):
    adapter = load_explainee(build_hf_model("deit-distilled"))
    method = get_method("attnlrp", adapter, normalize=False)
    batch = method(images)
    for i in range(3):
        torch.testing.assert_close(method(images[i : i + 1])[0], batch[i], rtol=1e-4, atol=1e-7)
    predicted = adapter.predict(images).argmax(1)
    torch.testing.assert_close(batch, method(images, predicted))
    assert batch.shape == (3, 32, 32)


def test_bad_options_are_one_clear_error():
    adapter = load_explainee(build_hf_model("vit"))
    with pytest.raises(ExplainersError, match="attention must be one of"):
        get_method("attnlrp", adapter, attention="softmax")
    assert get_method("attnlrp", adapter, attention="cp").config()["attention"] == "cp"
