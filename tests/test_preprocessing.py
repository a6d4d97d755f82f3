"""Inputs as the published processors make them: the input size from the crop, resize-then-centre-crop for
images of other sizes, PIL-equivalent resizing of images and masks, no guessed normalisation, and the raw
(``predict``) versus normalised (``logits``) entry points."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_hf_model
from explainers.cli import main
from explainers.data import InputGeometry, Sample, collate
from explainers.data.base import resize_images
from explainers.errors import ModelError
from explainers.models import load_explainee
from explainers.models.loading import processor_geometry
from explainers.models.timm import timm_geometry

timm_available = importlib.util.find_spec("timm") is not None

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# preprocessor_config.json as published with facebook/deit-base-patch16-224, facebook/deit-base-patch16-384
# and google/vit-base-patch16-224 (legacy feature-extractor format: integer sizes).
DEIT_B16_224 = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "DeiTFeatureExtractor",
    "image_mean": IMAGENET_MEAN,
    "image_std": IMAGENET_STD,
    "resample": 3,
    "size": 256,
}
DEIT_B16_384 = {**DEIT_B16_224, "crop_size": 384, "size": 438}
VIT_B16_224 = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}
# The same DeiT processor written with a shorter-side resize (torchvision's Resize(256) + CenterCrop(224)).
DEIT_B16_224_SHORTEST = {**DEIT_B16_224, "size": {"shortest_edge": 256}}
# timm vit_base_patch16_224.augreg2_in21k_ft_in1k's pretrained_cfg (the preprocessing part).
TIMM_VIT_B16_224 = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.9,
    "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}


def make_test_image():
    """A 375×501 RGB test image (uint8) with smooth gradients and sharp edges (which expose a shifted crop)."""
    h, w = 375, 501
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    rng = np.random.default_rng(0)
    img = np.stack(
        [0.5 + 0.4 * np.sin(6 * xx + 3 * yy), 0.5 + 0.4 * np.cos(9 * yy * xx + 1), (xx > 0.4) & (yy < 0.6)], -1
    )
    img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    return (img * 255).round().astype(np.uint8)


def as_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(u8)).permute(2, 0, 1).float()[None] / 255


# ----------------------------------------------------------------------------------------------- 1: geometry
def test_published_processors_give_the_crop_size_at_real_size():
    deit = processor_geometry(DEIT_B16_224, (224, 224), "deit")
    assert (deit.size, deit.resize, deit.interpolation, deit.crops) == ((224, 224), (256, 256), "bicubic", True)
    # Hugging Face's DeiT processor reads the integer size as 256×256 (its default_to_square), then crops.
    assert deit.resized_shape(375, 500) == (256, 256) and deit.crop_box(256, 256) == (16, 16)

    shortest = processor_geometry(DEIT_B16_224_SHORTEST, (224, 224), "deit")
    assert (shortest.size, shortest.resize) == ((224, 224), 256)
    assert shortest.resized_shape(375, 500) == (256, 341)  # 256 · 500 / 375 = 341.3, truncated
    assert shortest.resized_shape(500, 375) == (341, 256)
    assert shortest.crop_box(256, 341) == (16, 58)

    deit384 = processor_geometry(DEIT_B16_384, (384, 384), "deit")
    assert (deit384.size, deit384.resize, deit384.interpolation) == ((384, 384), (438, 438), "bicubic")
    assert deit384.crop_box(438, 438) == (27, 27)  # ⌊54 / 2⌋

    vit = processor_geometry(VIT_B16_224, (224, 224), "vit")
    assert (vit.size, vit.resize, vit.interpolation, vit.crops) == ((224, 224), None, "bilinear", False)

    # keys left out (or null) take the processor class's defaults: DeiT resizes to 256×256, crops 224, bicubic
    bare = {"image_processor_type": "DeiTImageProcessor", "resample": None, "image_mean": IMAGENET_MEAN}
    assert processor_geometry(bare, (224, 224), "deit") == deit

    timm_geo = timm_geometry((224, 224), TIMM_VIT_B16_224)
    assert (timm_geo.size, timm_geo.resize, timm_geo.interpolation) == ((224, 224), 248, "bicubic")  # ⌊224/0.9⌋
    assert timm_geo.resized_shape(375, 501) == (248, 331)
    # a margin of 107: torchvision rounds 53.5 to even (54), Hugging Face floors (53)
    assert timm_geo.crop_box(248, 331) == (12, 54)
    assert InputGeometry((224, 224), resize=248).crop_box(248, 331) == (12, 53)


@pytest.mark.parametrize("config", [DEIT_B16_224, DEIT_B16_224_SHORTEST, DEIT_B16_384, VIT_B16_224])
def test_geometry_reproduces_the_hugging_face_processor(config):
    """Our torch resize + crop against the processor itself (an independent implementation), at real size."""
    from transformers import DeiTImageProcessor, ViTImageProcessor

    kind = "deit" if config["feature_extractor_type"].startswith("DeiT") else "vit"
    processor_cls = DeiTImageProcessor if kind == "deit" else ViTImageProcessor
    processor = processor_cls(**{k: v for k, v in config.items() if k != "feature_extractor_type"})
    u8 = make_test_image()
    ref = processor(Image.fromarray(u8), return_tensors="pt")["pixel_values"]
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("image_mean", "image_std"))
    ref_raw = ref * std + mean
    crop = config.get("crop_size", config["size"])
    geometry = processor_geometry(config, (crop, crop), kind)
    ours = geometry.images(as_tensor(u8))
    assert ours.shape == ref_raw.shape == (1, 3, crop, crop)
    diff = (ours - ref_raw).abs()
    # The processor resizes 8-bit images (rounding) and clips bicubic overshoots per pass (up to 0.05 at
    # the sharp edges); a crop one pixel off would differ by ~0.5–1 along those edges.
    assert float(diff.mean()) < 0.002 and float(diff.max()) < 0.1


@pytest.mark.skipif(not timm_available, reason="timm extra not installed")
@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_geometry_reproduces_timm_eval_transform(crop_mode):
    from timm.data import create_transform, resolve_data_config

    cfg = {**TIMM_VIT_B16_224, "crop_mode": crop_mode}
    u8 = make_test_image()
    ref = create_transform(**resolve_data_config(pretrained_cfg=cfg))(Image.fromarray(u8))[None] * 0.5 + 0.5
    ours = timm_geometry((224, 224), cfg).images(as_tensor(u8))
    diff = (ours - ref).abs()
    assert float(diff.mean()) < 0.002 and float(diff.max()) < 0.1


@pytest.mark.skipif(not timm_available, reason="timm extra not installed")
def test_timm_model_uses_its_pretrained_cfg():
    import timm
    import timm.models.vision_transformer as vt

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4
    )
    adapter = load_explainee(model.eval())
    assert adapter.image_size == (32, 32)
    assert adapter.input_geometry == InputGeometry((32, 32), resize=35, interpolation="bicubic", crop_rounding="round")
    torch.testing.assert_close(adapter.mean, torch.full((3,), 0.5))  # from pretrained_cfg
    plain = vt.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=3)
    with pytest.raises(ModelError, match="mean= and std="):
        load_explainee(plain)


def _deit_dir(path, processor: dict, **model_kw):
    model = build_hf_model("deit", **model_kw)
    del model.config.image_mean, model.config.image_std  # only the processor says how to normalise
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def test_cropping_directory_small_model_matches_the_processor(tmp_path):
    """DeiT's 256 → 224 ratio at 64 → 56 (patch 8): input size, grid and logits as the processor makes them."""
    from transformers import DeiTImageProcessor

    processor = {**DEIT_B16_224, "size": 64, "crop_size": 56}
    model = _deit_dir(tmp_path / "deit", processor, image_size=56, patch_size=8)
    adapter = load_explainee(tmp_path / "deit")
    assert adapter.image_size == (56, 56) and adapter.grid == (7, 7)
    torch.testing.assert_close(adapter.mean, torch.tensor(IMAGENET_MEAN))
    assert adapter.describe()["preprocessing"]["crop"] == [56, 56]

    u8 = np.asarray(Image.fromarray(make_test_image()).resize((100, 75), Image.BILINEAR))
    pixel_values = DeiTImageProcessor(**{k: v for k, v in processor.items() if k != "feature_extractor_type"})(
        Image.fromarray(u8), return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        ours = adapter.predict(adapter.resize(as_tensor(u8)))
        torch.testing.assert_close(adapter.logits(adapter.preprocess(as_tensor(u8))), ours)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0.02)


def test_processor_crop_must_fit_the_model(tmp_path):
    _deit_dir(tmp_path / "deit", {**DEIT_B16_224, "size": 64, "crop_size": 48}, image_size=56, patch_size=8)
    with pytest.raises(ModelError, match="48×48 inputs but the model takes 56×56"):
        load_explainee(tmp_path / "deit")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_info_and_explain_on_a_deit_directory(tmp_path, capsys):
    """A DeiT-B/16-224-style directory (resize 256, crop 224): info says 224×224 and an image explains."""
    _deit_dir(
        tmp_path / "deit", DEIT_B16_224, image_size=224, patch_size=16, hidden_size=32, num_hidden_layers=1
    )
    code, out, err = run_cli(["info", "--explainee", str(tmp_path / "deit")], capsys)
    assert code in (0, None), err
    desc = json.loads(out)
    assert desc["image_size"] == [224, 224] and desc["grid"] == [14, 14]
    assert desc["mean"] == IMAGENET_MEAN and desc["std"] == IMAGENET_STD
    assert desc["preprocessing"]["resize"] == [256, 256] and desc["preprocessing"]["crop"] == [224, 224]
    assert desc["preprocessing"]["interpolation"] == "bicubic"

    (tmp_path / "images").mkdir()
    Image.fromarray(make_test_image()).save(tmp_path / "images" / "photo.png")
    code, out, err = run_cli(
        ["explain", "--method", "rollout", "--explainee", str(tmp_path / "deit"), "--data",
         f"folder:{tmp_path / 'images'}", "--out", str(tmp_path / "maps.h5"), "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code in (0, None), err
    from explainers.io.maskfile import MaskFile

    with MaskFile(tmp_path / "maps.h5") as mf:
        assert mf.maps().shape == (1, 224, 224) and np.isfinite(mf.maps()).all()
        # the normalisation and preprocessing used are recorded with the maps
        assert mf.explainee["mean"] == IMAGENET_MEAN and mf.explainee["std"] == IMAGENET_STD
        assert mf.explainee["preprocessing"] == desc["preprocessing"]


# ----------------------------------------------------------------------------------------------- 2: resizing
def test_image_resize_is_pil_equivalent():
    """500×375 → 224×224: within 0.002 of PIL's 8-bit bilinear resize, and PIL's float resize exactly."""
    u8 = make_test_image()[:, :500]
    x = as_tensor(u8)
    ours = resize_images(x, (224, 224))[0].numpy()
    pil_u8 = np.asarray(Image.fromarray(u8).resize((224, 224), Image.BILINEAR)).transpose(2, 0, 1) / 255
    assert np.abs(ours - pil_u8).mean() < 0.002
    pil_float = np.stack(
        [np.asarray(Image.fromarray(x[0, c].numpy(), mode="F").resize((224, 224), Image.BILINEAR)) for c in range(3)]
    )
    assert np.abs(ours - pil_float).max() < 1e-4
    # collate (every dataset batch) resizes the same way
    batch = collate([Sample(image=x[0], label=0, mask=None, id="a")], (224, 224))
    torch.testing.assert_close(batch.images[0], torch.from_numpy(ours))


def test_bicubic_resize_is_pil_equivalent_both_ways():
    x = as_tensor(make_test_image())
    for size in ((224, 224), (600, 802)):  # shrinking and enlarging
        ours = InputGeometry(size, interpolation="bicubic").images(x)[0].numpy()
        pil = np.stack(
            [np.asarray(Image.fromarray(x[0, c].numpy(), mode="F").resize(size[::-1], Image.BICUBIC)) for c in range(3)]
        )
        # equal where PIL's float result stays in [0, 1] (we clamp, as an 8-bit image would be)
        assert np.abs(ours - np.clip(pil, 0, 1)).max() < 1e-4


@pytest.mark.parametrize("size", [(17, 29), (100, 61), (224, 224), (41, 41)])
def test_mask_resize_is_pil_nearest(size):
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.5
    ignore = rng.random((37, 53)) > 0.8
    sample = Sample(
        image=torch.rand(3, 37, 53), label=0, mask=torch.from_numpy(mask), id="a", ignore=torch.from_numpy(ignore)
    )
    batch = collate([sample], size)

    def pil_nearest(m, shape):
        return np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 0

    assert np.array_equal(batch.masks[0].numpy(), pil_nearest(mask, size))
    assert np.array_equal(batch.ignore[0].numpy(), pil_nearest(ignore, size))


def test_masks_follow_the_images_resize_and_crop():
    """With a cropping geometry, masks go through the same resize (PIL NEAREST) and the same crop."""
    rng = np.random.default_rng(2)
    mask = rng.random((75, 101)) > 0.5
    geometry = InputGeometry((56, 56), resize=64)
    out = collate([Sample(image=torch.rand(3, 75, 101), label=0, mask=torch.from_numpy(mask), id="a")], geometry)
    h, w = geometry.resized_shape(75, 101)
    assert (h, w) == (64, 86)
    top, left = geometry.crop_box(h, w)
    pil = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    assert np.array_equal(out.masks[0].numpy(), pil[top : top + 56, left : left + 56])
    # an image whose content is the mask lands on the mask
    img = torch.from_numpy(mask).float().expand(3, -1, -1)
    resized = geometry.images(img[None])[0, 0]
    agree = ((resized > 0.5) == out.masks[0]).float().mean()
    assert float(agree) > 0.8  # edges blur, the interior agrees


# ----------------------------------------------------------------------------------------------- 3: normalisation
def test_no_normalisation_is_refused(tmp_path, capsys):
    model = build_hf_model("vit")
    del model.config.image_mean, model.config.image_std
    with pytest.raises(ModelError, match=r"pass mean= and std="):
        load_explainee(model)
    adapter = load_explainee(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(adapter.std, torch.tensor(IMAGENET_STD))

    model.save_pretrained(tmp_path / "bare")  # no preprocessor_config.json, no image_mean in config.json
    capsys.readouterr()
    with pytest.raises(ModelError, match="--mean"):
        load_explainee(tmp_path / "bare")
    code, _, err = run_cli(["info", "--explainee", str(tmp_path / "bare")], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "--mean" in err and "--std" in err
    code, out, err = run_cli(
        ["info", "--explainee", str(tmp_path / "bare"), "--mean", "0.485,0.456,0.406", "--std", "0.229 0.224 0.225"],
        capsys,
    )
    assert code in (0, None), err
    desc = json.loads(out)
    assert desc["mean"] == IMAGENET_MEAN and desc["std"] == IMAGENET_STD
    code, _, err = run_cli(["info", "--explainee", str(tmp_path / "bare"), "--mean", "0.5,0.5"], capsys)
    assert code == 2 and "--mean" in err


def test_bad_normalisation_values_are_refused():
    with pytest.raises(ModelError, match="std must be positive"):
        load_explainee(build_hf_model("vit"), std=[0.5, 0.0, 0.5])
    with pytest.raises(ModelError, match="3 values"):
        load_explainee(build_hf_model("vit"), mean=[0.5, 0.5])


def test_embedded_explainee_keeps_its_processor():
    adapter = load_explainee("embedded")
    assert adapter.image_size == (64, 64)
    assert adapter.describe()["preprocessing"] == {
        "resize": [64, 64],
        "crop": None,
        "crop_rounding": None,
        "interpolation": "bilinear",
        "antialias": True,
    }
    torch.testing.assert_close(adapter.mean, torch.tensor([0.4361, 0.4413, 0.4094]))


# ----------------------------------------------------------------------------------------------- 10: entry points
def test_raw_and_normalised_entry_points_cannot_be_confused(images):
    adapter = load_explainee(build_hf_model("vit"))
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict(images), adapter.logits(adapter.normalize(images)))
        with pytest.raises(ModelError, match=r"adapter.logits\(pixel_values\)"):
            adapter.predict(adapter.normalize(images))  # normalised input given to the raw entry point
        with pytest.raises(ModelError, match=r"adapter.predict\(images\)"):
            adapter(images)  # ambiguous: not callable
