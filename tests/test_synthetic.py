"""The procedural benchmark: determinism, exact masks, labels, the on-disk format and its errors."""

from __future__ import annotations

import colorsys
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainers.data import open_dataset
from explainers.data import synthetic as synth
from explainers.data.synthetic import (
    COLOR_FAMILIES,
    SHAPES,
    SyntheticConfig,
    SyntheticDataset,
    generate_synthetic,
    render_scenes,
)
from explainers.errors import DatasetError

SMALL = SyntheticConfig(image_size=48, train_size=10, val_size=6, test_size=4, seed=3)


@pytest.fixture(scope="module")
def scenes() -> dict:
    # Every shape, so each membership rule is exercised.
    return render_scenes(SyntheticConfig(shapes=SHAPES, seed=11), "train", 0, 96)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synth") / "data", SMALL, progress=False)


def _erode(masks: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion with a k×k square (pixels whose whole k×k neighbourhood is set)."""
    x = torch.from_numpy(~masks).float()[:, None]
    return (F.max_pool2d(x, k, stride=1) == 0)[:, 0].numpy()


def _dilate(masks: np.ndarray) -> np.ndarray:
    return (F.max_pool2d(torch.from_numpy(masks).float()[:, None], 3, stride=1, padding=1) > 0)[:, 0].numpy()


# ---------------------------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_independent_of_batching(scenes: dict) -> None:
    config = SyntheticConfig(shapes=SHAPES, seed=11)
    again = render_scenes(config, "train", 0, 96)
    for key in ("images", "masks", "clutter"):
        assert np.array_equal(again[key], scenes[key])
    # The same images rendered alone and in odd-sized batches starting elsewhere.
    for start, count in ((0, 1), (5, 1), (7, 13), (95, 1), (40, 37)):
        part = render_scenes(config, "train", start, count)
        assert part["ids"] == scenes["ids"][start : start + count]
        for key in ("images", "masks", "clutter"):
            assert np.array_equal(part[key], scenes[key][start : start + count]), (key, start, count)
        for task, labels in part["labels"].items():
            assert np.array_equal(labels, scenes["labels"][task][start : start + count])


def test_empty_render() -> None:
    out = render_scenes(SMALL, "train", 3, 0)
    assert out["images"].shape == (0, 48, 48, 3) and out["masks"].shape == (0, 48, 48) and out["ids"] == []


def test_seed_and_split_change_the_scenes() -> None:
    a = render_scenes(SMALL, "train", 0, 4)["images"]
    assert not np.array_equal(a, render_scenes(SMALL, "val", 0, 4)["images"])
    other_seed = SyntheticConfig(**{**SMALL.to_dict(), "seed": 4})
    assert not np.array_equal(a, render_scenes(other_seed, "train", 0, 4)["images"])


def test_outputs_have_the_documented_types(scenes: dict) -> None:
    n = 96
    assert scenes["images"].shape == (n, 64, 64, 3) and scenes["images"].dtype == np.uint8
    assert scenes["masks"].shape == (n, 64, 64) and scenes["masks"].dtype == np.bool_
    assert set(scenes["labels"]) == {"shape", "color", "size", "quadrant"}
    assert all(v.dtype == np.int64 and v.shape == (n,) for v in scenes["labels"].values())
    # Classes are balanced: the shape cycles with the index.
    assert np.array_equal(scenes["labels"]["shape"], np.arange(n) % len(SHAPES))


def test_mask_is_exactly_the_object(scenes: dict) -> None:
    images, masks, attrs = scenes["images"], scenes["masks"], scenes["attributes"]
    object_rgb = np.stack([attrs["object_r"], attrs["object_g"], attrs["object_b"]], -1)
    for i in range(len(images)):
        mask = masks[i]
        assert mask.sum() > 40
        # Inside: one flat colour, the object's (nothing is drawn over it).
        assert (images[i][mask] == object_rgb[i]).all()
    # Outside: clutter-free renders of the same scenes have the same masks, and no pixel next to the mask
    # has the object's colour, so the mask covers the whole object and nothing else.
    bare = render_scenes(
        SyntheticConfig(shapes=SHAPES, seed=11, lines=(0, 0), arcs=(0, 0), dots=(0, 0)), "train", 0, 96
    )
    assert np.array_equal(bare["masks"], masks)
    assert not bare["clutter"].any()
    ring = _dilate(masks) & ~masks
    for i in range(len(images)):
        assert not (bare["images"][i][ring[i]] == object_rgb[i]).all(-1).any()


def test_mask_area_matches_the_shape_geometry(scenes: dict) -> None:
    # Unit-size areas of each shape (size parameter 1), from their definitions.
    unit_area = {
        "disk": np.pi,
        "ring": np.pi * (1 - 0.55**2),
        "semidisk": np.pi / 2,
        "square": 1.7**2,
        "cross": 2 * (2.1 * 0.68) - 0.68**2,
        "triangle": 3 * np.sqrt(3) * 0.625**2,
        "hexagon": 2 * np.sqrt(3) * 0.92**2,
    }
    sizes = scenes["attributes"]["size"]
    for i, s in enumerate(scenes["labels"]["shape"]):
        name = SHAPES[s]
        if name in unit_area:
            expected = unit_area[name] * sizes[i] ** 2
            assert abs(scenes["masks"][i].sum() - expected) <= 0.12 * expected + 6, name


def test_attributes_agree_with_the_mask(scenes: dict) -> None:
    masks, labels, attrs = scenes["masks"], scenes["labels"], scenes["attributes"]
    for i in range(len(masks)):
        ys, xs = np.nonzero(masks[i])
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        assert labels["quadrant"][i] == 2 * int(cy >= 32) + int(cx >= 32)
        # Default object_size (0.2, 0.3) of 64 px: size parameters 12.8–19.2 px, "large" above 16.
        assert labels["size"][i] == int(attrs["size"][i] > 16.0)
        assert attrs["centroid_x"][i] == pytest.approx(cx) and attrs["centroid_y"][i] == pytest.approx(cy)
        assert attrs["area"][i] == masks[i].sum()
        # The whole object lies inside the image with a margin, around its centre.
        assert xs.min() <= attrs["centre_x"][i] <= xs.max() + 1
        assert ys.min() <= attrs["centre_y"][i] <= ys.max() + 1
        # The object's colour belongs to its colour family (hue within the jitter).
        r, g, b = (attrs[f"object_{c}"][i] / 255 for c in "rgb")
        hue = colorsys.rgb_to_hsv(r, g, b)[0] * 360
        family = list(COLOR_FAMILIES)[labels["color"][i]]
        diff = abs((hue - COLOR_FAMILIES[family] + 180) % 360 - 180)
        assert diff <= 12 + 2, (family, hue)


def test_clutter_never_forms_a_class_object(scenes: dict) -> None:
    masks, clutter = scenes["masks"], scenes["clutter"]
    assert clutter.any(axis=(1, 2)).all()
    assert not (clutter & masks).any()
    # Clutter is thin everywhere (no 4×4 block of it), while every filled class object holds a 5×5 one
    # (the ring's band is thinner by design, so it is not compared).
    assert not _erode(clutter, 4).any()
    filled = np.array([SHAPES[s] != "ring" for s in scenes["labels"]["shape"]])
    assert _erode(masks[filled], 5).any(axis=(1, 2)).all()


def test_rendering_uses_the_whole_colour_size_and_quadrant_ranges() -> None:
    out = render_scenes(SyntheticConfig(), "val", 0, 200)
    assert set(out["labels"]["color"]) == {0, 1, 2, 3}
    assert 0.35 < out["labels"]["size"].mean() < 0.65  # the middle of a uniform range: about half large
    assert set(out["labels"]["quadrant"]) == {0, 1, 2, 3}


def test_config_round_trips_through_json() -> None:
    config = SyntheticConfig(shapes=("ring", "star", "disk"), object_size=(0.2, 0.25), seed=9)
    back = SyntheticConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert back.class_names("shape") == ["ring", "star", "disk"]
    assert SyntheticConfig().class_names("size") == ["small", "large"]
    assert SyntheticConfig().class_names("quadrant") == [
        "top-left",
        "top-right",
        "bottom-left",
        "bottom-right",
    ]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"shapes": ("disk", "blob")}, "shapes must be"),
        ({"color_families": ("purple",)}, "color_families"),
        ({"object_size": (0.3, 0.45)}, "object_size"),
        ({"lines": (3, 99)}, "lines"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        SyntheticConfig(**kwargs)
    with pytest.raises(DatasetError, match="unknown synthetic config keys"):
        SyntheticConfig.from_dict({"colour": 1})


def test_unknown_split_and_task_in_rendering() -> None:
    with pytest.raises(DatasetError, match="valid splits: train, val, test"):
        render_scenes(SMALL, "training", 0, 1)
    with pytest.raises(DatasetError, match="valid tasks"):
        SMALL.class_names("area")


# -------------------------------------------------------------------------------------------- on disk


def test_writer_and_reader_round_trip(written: Path) -> None:
    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["format"] == "explainers-synthetic" and manifest["version"] == 1
    assert manifest["splits"] == {"train": 10, "val": 6, "test": 4}
    assert SyntheticConfig.from_dict(manifest["config"]) == SMALL
    assert manifest["tasks"]["shape"] == list(SMALL.shapes)

    for split in ("train", "val", "test"):
        rendered = render_scenes(SMALL, split)
        for task in ("shape", "color", "size", "quadrant"):
            ds = SyntheticDataset(written, split=split, task=task)
            assert len(ds) == SMALL.split_size(split)
            assert ds.class_names == SMALL.class_names(task)
            assert np.array_equal(ds.labels, rendered["labels"][task])
        images, masks, labels = ds.load_arrays()
        assert np.array_equal(images, rendered["images"]) and np.array_equal(masks, rendered["masks"])
        assert np.array_equal(labels, rendered["labels"]["quadrant"])
        for i in range(len(ds)):
            sample = ds[i]
            assert sample.id == rendered["ids"][i] == f"{split}_{i:06d}"
            assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 48, 48)
            assert torch.equal(
                (sample.image * 255).round().byte().permute(1, 2, 0), torch.from_numpy(images[i])
            )
            assert sample.mask is not None and sample.mask.dtype == torch.bool
            assert torch.equal(sample.mask, torch.from_numpy(rendered["masks"][i]))
            assert sample.label == rendered["labels"]["quadrant"][i]
    # Masks are stored as 0/255 PNGs.
    from PIL import Image

    with Image.open(written / "masks" / "val" / "val_000000.png") as img:
        assert img.mode == "L" and set(np.unique(np.asarray(img))) <= {0, 255}


def test_attributes_and_open_dataset(written: Path) -> None:
    ds = open_dataset(f"synthetic:{written}", split="val", task="color")
    assert isinstance(ds, SyntheticDataset) and ds.name.startswith("synthetic:")
    rendered = render_scenes(SMALL, "val", 2, 1)
    attrs = ds.attributes(2)
    assert attrs["id"] == "val_000002"
    assert attrs["color"] == ds[2].label == rendered["labels"]["color"][0]
    assert attrs["shape_name"] == SMALL.shapes[attrs["shape"]]
    assert attrs["quadrant_name"] in synth.QUADRANTS
    assert attrs["area"] == int(rendered["masks"][0].sum())
    assert attrs["size"] == pytest.approx(rendered["attributes"]["size"][0], abs=1e-3)
    # Default split and task: test / shape.
    default = SyntheticDataset(written)
    assert default.split == "test" and default.class_names == list(SMALL.shapes)


def test_generate_refuses_to_overwrite_and_writes_atomically(written: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not empty"):
        generate_synthetic(written, SMALL, progress=False)
    out = tmp_path / "again"
    out.mkdir()  # an empty folder is fine
    tiny = SyntheticConfig(image_size=32, train_size=2, val_size=1, test_size=1)
    generate_synthetic(out, tiny, progress=False)
    assert SyntheticDataset(out, split="train").config == tiny
    generate_synthetic(out, SMALL, progress=False, overwrite=True)
    assert SyntheticDataset(out, split="train").config == SMALL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary folders left


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = synth._write_mask

    def failing(path, mask):  # fail after a few files: the folder must not appear
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return original(path, mask)

    monkeypatch.setattr(synth, "_write_mask", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "data", SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_reader_errors(written: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not a synthetic dataset.*explainers data synth --out DIR"):
        SyntheticDataset(tmp_path)
    with pytest.raises(DatasetError, match="valid splits: train, val, test"):
        SyntheticDataset(written, split="validation")
    with pytest.raises(DatasetError, match="valid tasks: shape, color, size, quadrant"):
        SyntheticDataset(written, task="colour")
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        SyntheticDataset(tmp_path)


def test_missing_image_file_is_a_dataset_error(tmp_path: Path) -> None:
    out = generate_synthetic(
        tmp_path / "d", SyntheticConfig(image_size=32, train_size=1, val_size=1, test_size=2)
    )
    os.remove(out / "images" / "test" / "test_000001.png")
    ds = SyntheticDataset(out)
    ds[0]
    with pytest.raises(DatasetError, match=r"test_000001\.png"):
        ds[1]
    with pytest.raises(DatasetError, match=r"test_000001\.png"):
        ds.load_arrays()
