"""LETA: windows, masking, loss, transfer rule, pooling, checkpoints and refusals (docs/learned-explainers.md)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import build_hf_model
from explainers import ExplainersError, load_explainee
from explainers.learned.leta import LETAConfig, LETAExplainer
from explainers.learned.leta.explainer import pool_patch_scores
from explainers.learned.leta.objective import compute_targets, gather_centres, leta_loss
from explainers.learned.leta.windows import mask_pair, pixel_masks, window_masks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


@pytest.fixture(scope="module")
def encoder():
    return load_explainee(build_hf_model(num_labels=4))  # 32×32 input, patch 8 → 4×4 grid, D = 32


@pytest.fixture(scope="module")
def explainer(encoder):
    return LETAExplainer.build(encoder, LETAConfig(radius=1, head_depth=3), seed=0)


# ------------------------------------------------------------------------------------------------ windows


def test_window_is_row_major_and_clipped_at_the_border():
    w = window_masks((3, 5), radius=1)  # 3 rows × 5 columns: not square, so a transpose would show
    assert w.shape == (15, 15)
    # Patch at row 0, column 3 is index 3; its clipped 3×3 window is rows 0–1, columns 2–4.
    assert torch.nonzero(w[3]).flatten().tolist() == [2, 3, 4, 7, 8, 9]
    # Corner: 2×2 patches; interior: 3×3; radius 2 on a 3-row grid covers every row.
    assert int(w[0].sum()) == 4 and int(w[7].sum()) == 9
    assert int(window_masks((3, 5), radius=2)[12].sum()) == 3 * 5  # row 2, column 2: rows 0–2, columns 0–4
    assert torch.equal(w, w.T)  # Chebyshev distance is symmetric


def test_radius_two_window_sizes():
    w = window_masks((8, 8), radius=2)
    sizes = w.sum(1).reshape(8, 8)
    assert sizes[0, 0] == 9 and sizes[0, 4] == 15 and sizes[4, 4] == 25


def test_pixel_masks_cover_the_patch_blocks():
    patch = torch.zeros(4, dtype=torch.bool)
    patch[1] = True  # row 0, column 1 of a 2×2 grid
    m = pixel_masks(patch, (2, 2), (2, 2), (5, 4))  # one extra pixel row that belongs to no patch
    expected = torch.zeros(5, 4)
    expected[0:2, 2:4] = 1
    assert torch.equal(m, expected)


def test_mask_pair_zeroes_in_normalised_space():
    x = torch.randn(2, 3, 4, 4) + 5.0
    windows = window_masks((2, 2), radius=0)
    centres = torch.tensor([[0, 3], [1, 1]])
    keep, drop = mask_pair(x, centres, windows, (2, 2), (2, 2))
    assert keep.shape == drop.shape == (4, 3, 4, 4)
    assert torch.allclose(keep + drop, x.repeat_interleave(2, dim=0))
    # Image 0, centre 3 (row 1, col 1): only the bottom-right block survives in `keep`.
    assert torch.equal(keep[1, :, 2:, 2:], x[0, :, 2:, 2:]) and keep[1, :, :2].abs().sum() == 0
    assert drop[1, :, 2:, 2:].abs().sum() == 0


def test_targets_are_the_encoder_on_the_masked_images(encoder):
    x = encoder.normalize(torch.rand(2, 3, 32, 32))
    windows = window_masks(encoder.grid, 1)
    centres = torch.tensor([[0, 5], [15, 3]])
    t_pos, t_neg = compute_targets(encoder, x, centres, windows, chunk=3)
    keep, drop = mask_pair(x, centres, windows, encoder.grid, encoder.patch_size)
    with torch.no_grad():
        assert torch.allclose(t_pos.reshape(4, -1), encoder.cls_embedding(keep), atol=1e-5)
        assert torch.allclose(t_neg[1, 0], encoder.cls_embedding(drop[2:3])[0], atol=1e-5)


# ------------------------------------------------------------------------------------------------ loss


def test_loss_on_a_hand_built_case():
    psi_pos = torch.zeros(1, 3, 2)
    psi_neg = torch.zeros(1, 3, 2)
    psi_pos[0, 2] = torch.tensor([1.0, 2.0])
    psi_neg[0, 2] = torch.tensor([0.0, -1.0])
    psi_pos[0, 0] = 100.0  # other patches must not matter
    centres = torch.tensor([[2]])
    t_pos = torch.tensor([[[0.0, 0.0]]])
    t_neg = torch.tensor([[[1.0, 1.0]]])
    loss, lp, ln = leta_loss(psi_pos, psi_neg, centres, t_pos, t_neg)
    assert lp.item() == pytest.approx((1 + 4) / 2)
    assert ln.item() == pytest.approx((1 + 4) / 2)
    assert loss.item() == pytest.approx(5.0)


def test_gather_centres_picks_rows_per_image():
    psi = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    got = gather_centres(psi, torch.tensor([[3, 0], [1, 1]]))
    assert got.flatten().tolist() == [3.0, 0.0, 5.0, 5.0]


# ---------------------------------------------------------------------------------------- transfer rule


def test_pooling_does_not_count_padding():
    scores = torch.arange(9, dtype=torch.float32).reshape(1, 3, 3)
    pooled = pool_patch_scores(scores, radius=1)
    assert pooled[0, 0, 0].item() == pytest.approx((0 + 1 + 3 + 4) / 4)  # 4 real patches, not /9
    assert pooled[0, 1, 1].item() == pytest.approx(4.0)
    assert pooled[0, 0, 1].item() == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)


def test_transfer_rule_equals_the_head_applied_to_psi(encoder, explainer):
    torch.manual_seed(0)
    head = nn.Linear(32, 3)
    images = torch.rand(2, 3, 32, 32)
    result = explainer.attribute(images, head=head, lambda_pos=0.7, lambda_neg=0.3)
    psi_pos, psi_neg = explainer.predict(images)
    with torch.no_grad():
        expected_targets = head(encoder.cls_embedding(encoder.normalize(images))).argmax(1)
        by_hand = 0.7 * head(psi_pos) - 0.3 * head(psi_neg)  # B×P×C
    assert torch.equal(result.targets, expected_targets)
    by_hand = by_hand[torch.arange(2), :, expected_targets].reshape(2, 4, 4)
    assert torch.allclose(result.scores, by_hand, atol=1e-5)
    pooled = pool_patch_scores(by_hand, 1)
    lo = pooled.flatten(1).min(1).values[:, None, None]
    hi = pooled.flatten(1).max(1).values[:, None, None]
    assert torch.allclose(result.maps, (pooled - lo) / (hi - lo), atol=1e-5)
    maps = explainer(images, head=head, targets=[1, 2])
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1


def test_pool_radius_zero_keeps_each_patchs_window_score(explainer):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    pooled = explainer.attribute(images)  # the reference: pooled over the 3×3 window (r = 1)
    sharp = explainer.attribute(images, pool_radius=0)
    assert torch.equal(sharp.scores, pooled.scores)
    lo = sharp.scores.flatten(1).min(1).values[:, None, None]
    hi = sharp.scores.flatten(1).max(1).values[:, None, None]
    assert torch.allclose(sharp.maps, (sharp.scores - lo) / (hi - lo), atol=1e-6)
    # An explicit radius equal to the window's is the default.
    assert torch.allclose(explainer.attribute(images, pool_radius=1).maps, pooled.maps)
    # A wider pool: patch (0, 0) of the 4×4 grid averages the 3×3 real patches of its 5×5 window.
    wide = explainer.attribute(images, pool_radius=2)
    raw = sharp.scores.clone()
    raw_corner = raw[:, :3, :3].mean(dim=(1, 2))
    assert torch.allclose(pool_patch_scores(raw, 2)[:, 0, 0], raw_corner, atol=1e-6)
    wide_raw = pool_patch_scores(raw, 2)
    lo = wide_raw.flatten(1).min(1).values[:, None, None]
    hi = wide_raw.flatten(1).max(1).values[:, None, None]
    assert torch.allclose(wide.maps, (wide_raw - lo) / (hi - lo), atol=1e-6)
    assert not torch.allclose(wide.maps, pooled.maps)


@pytest.mark.parametrize("bad", [-1, 1.5, "x", True])
def test_bad_pool_radius_is_refused(explainer, bad):
    from explainers.methods import get_method

    with pytest.raises(ExplainersError, match="pool_radius"):
        explainer.attribute(torch.rand(1, 3, 32, 32), pool_radius=bad)
    with pytest.raises(ExplainersError, match="pool_radius"):
        get_method("leta", explainer.encoder, explainer=explainer, pool_radius=bad)


def test_default_head_is_the_encoders_classifier(encoder, explainer):
    images = torch.rand(2, 3, 32, 32)
    a = explainer.attribute(images)
    b = explainer.attribute(images, head=encoder.parts().heads[0].linear)
    assert torch.allclose(a.scores, b.scores) and torch.equal(a.targets, encoder.predict(images).argmax(1))


def test_head_of_the_wrong_size_is_refused(explainer):
    with pytest.raises(ExplainersError, match=r"takes 16-d inputs.*32-d embedding"):
        explainer(torch.rand(1, 3, 32, 32), head=nn.Linear(16, 3))


def test_non_rgb_images_are_refused(explainer):
    with pytest.raises(ExplainersError, match="RGB"):
        explainer(torch.rand(1, 1, 32, 32))


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("layout", ["shared", "two-branch"])
def test_save_load_round_trip(tmp_path, encoder, layout):
    ex = LETAExplainer.build(encoder, LETAConfig(layout=layout, head_depth=2, radius=2), seed=3)
    ex.save_pretrained(tmp_path / "leta")
    assert sorted(p.name for p in (tmp_path / "leta").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "leta" / "config.json").read_text())
    assert cfg["encoder"]["embed_dim"] == 32 and cfg["encoder"]["grid"] == [4, 4] and cfg["config"]["layout"] == layout
    loaded = LETAExplainer.from_pretrained(tmp_path / "leta", encoder=encoder)
    images = torch.rand(2, 3, 32, 32)
    for a, b in zip(ex.predict(images), loaded.predict(images), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_explainer_for_another_encoder_is_refused(tmp_path, explainer):
    explainer.save_pretrained(tmp_path / "leta")
    other = load_explainee(build_hf_model(num_labels=4, seed=1))  # same architecture, other weights
    with pytest.raises(ExplainersError, match=r"made for other weights than encoder .*allow_other_weights"):
        LETAExplainer.from_pretrained(tmp_path / "leta", encoder=other)
    LETAExplainer.from_pretrained(tmp_path / "leta", encoder=other, allow_other_weights=True)  # explicit
    wider = load_explainee(build_hf_model(num_labels=4, hidden_size=48))
    with pytest.raises(ExplainersError, match="embed_dim"):
        LETAExplainer.from_pretrained(tmp_path / "leta", encoder=wider)


def test_same_encoder_with_another_head_is_accepted(tmp_path, encoder, explainer):
    explainer.save_pretrained(tmp_path / "leta")
    model = build_hf_model(num_labels=4)
    model.classifier = nn.Linear(32, 7)  # a different task on the same backbone
    model.config.num_labels = 7
    LETAExplainer.from_pretrained(tmp_path / "leta", encoder=load_explainee(model))


def test_leta_method_through_the_registry(tmp_path, encoder, explainer):
    from explainers.methods import get_method

    explainer.save_pretrained(tmp_path / "leta")
    method = get_method("leta", encoder, explainer=str(tmp_path / "leta"), lambda_neg="0")
    images = torch.rand(3, 3, 32, 32)
    maps = method(images)
    assert maps.shape == (3, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    direct = explainer.attribute(images, lambda_neg=0.0).maps
    up = torch.nn.functional.interpolate(direct[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.flatten(1).min(1).values, up.flatten(1).max(1).values
    assert torch.allclose(maps, (up - lo[:, None, None]) / (hi - lo)[:, None, None], atol=1e-5)
    assert method.config()["lambda_neg"] == 0.0
    assert "pool_radius" not in method.config()  # the default's recorded config is unchanged
    sharp = get_method("leta", encoder, explainer=str(tmp_path / "leta"), pool_radius="0")
    assert sharp.config()["pool_radius"] == 0
    up = explainer(images, pool_radius=0)  # bilinear upsampling of the unpooled patch map
    lo, hi = up.flatten(1).min(1).values, up.flatten(1).max(1).values
    assert torch.allclose(sharp(images), (up - lo[:, None, None]) / (hi - lo)[:, None, None], atol=1e-5)


# ------------------------------------------------------------------------------------------------ backbones


@pytest.mark.parametrize("decoder", [True, False])
def test_mae_backbone_encoder_decoder_round_trip(tmp_path, encoder, decoder):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=48,
    )
    ViTMAEForPreTraining(cfg).save_pretrained(tmp_path / "mae")
    config = LETAConfig(backbone=f"mae:{tmp_path / 'mae'}", mae_decoder=decoder, layout="two-branch", head_depth=2)
    ex = LETAExplainer.build(encoder, config)
    assert ex.network.backbones[0].dim == (24 if decoder else 32)
    images = torch.rand(2, 3, 32, 32)
    psi_pos, _ = ex.predict(images)
    assert psi_pos.shape == (2, 16, 32)
    ex.save_pretrained(tmp_path / "leta")
    (tmp_path / "mae" / "model.safetensors").unlink()  # the checkpoint alone must rebuild the backbone
    loaded = LETAExplainer.from_pretrained(tmp_path / "leta", encoder=encoder)
    assert torch.allclose(loaded.predict(images)[0], psi_pos, atol=1e-6)


def test_timm_encoder(tmp_path):
    from conftest import build_timm_vit

    enc = load_explainee(build_timm_vit())
    ex = LETAExplainer.build(enc, LETAConfig(head_depth=2, radius=1))
    images = torch.rand(2, 3, 32, 32)
    ex.save_pretrained(tmp_path / "leta")
    loaded = LETAExplainer.from_pretrained(tmp_path / "leta", encoder=enc)
    assert torch.allclose(loaded(images), ex(images), atol=1e-6)


@pytest.mark.parametrize("layout", ["shared", "two-branch"])
def test_timm_backbone_copy_has_no_classifier_head(layout, tmp_path):
    """DDP (find_unused_parameters=False) needs every parameter to get a gradient at every step; the
    unused timm classifier head in the backbone copy broke the second step and bloated checkpoints."""
    from conftest import build_timm_vit

    enc = load_explainee(build_timm_vit())
    ex = LETAExplainer.build(enc, LETAConfig(head_depth=1, radius=1, layout=layout))
    names = [n for n, _ in ex.network.named_parameters()]
    assert not [n for n in names if n.startswith("backbones.") and ".head" in n], names
    psi_pos, psi_neg = ex.network(torch.rand(2, 3, 32, 32))
    (psi_pos.square().mean() + psi_neg.square().mean()).backward()
    no_grad = [n for n, p in ex.network.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    ex.save_pretrained(tmp_path / "leta")
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(tmp_path / "leta" / "model.safetensors")) if ".head." in k]


def test_leta_explains_its_own_head_from_one_forward(tmp_path, encoder, explainer):
    """The explained class, the logits and the class names are the given head's (7 classes on a 4-class
    explainee here), and they come from the encoder forward the transfer rule runs anyway."""
    from explainers.methods import get_method

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 7)  # the encoder's width
    method = get_method("leta", encoder, explainer=explainer, head=head)
    images = torch.rand(3, 3, 32, 32)
    explanation = method.explain(images)
    with torch.no_grad():
        logits = head(encoder.cls_embedding(encoder.normalize(images)))
    torch.testing.assert_close(explanation.logits, logits)
    assert explanation.classes.tolist() == logits.argmax(1).tolist() and method.num_classes == 7
    direct = explainer.attribute(images, head, targets=logits.argmax(1)).maps
    up = encoder.patch_map_to_image(direct)
    lo, hi = up.flatten(1).min(1).values, up.flatten(1).max(1).values
    torch.testing.assert_close(explanation.maps, (up - lo[:, None, None]) / (hi - lo)[:, None, None])
    assert method.explain(images, 6).classes.tolist() == [6, 6, 6]  # a class only the head has
    with pytest.raises(ExplainersError, match="out of range"):
        method.explain(images, 7)
