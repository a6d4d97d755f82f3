"""Known-truth scenarios of the synthetic generator: each is a controlled change of the same scenes."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest

from explainers.data.synthetic import (
    COLOR_FAMILIES,
    SyntheticConfig,
    SyntheticDataset,
    generate_synthetic,
    render_scenes,
)
from explainers.errors import DatasetError

SMALL_OBJECTS = {"object_size": (0.12, 0.17)}
N = 48


def config(scenario: str, **kwargs) -> SyntheticConfig:
    base = {} if scenario == "cue" else SMALL_OBJECTS
    return SyntheticConfig(scenario=scenario, seed=5, **{**base, **kwargs})


@pytest.mark.parametrize("scenario", ["distractors", "contrast", "cue"])
def test_scenarios_are_deterministic_and_independent_of_batching(scenario: str) -> None:
    cfg = config(scenario)
    whole = render_scenes(cfg, "val", 0, 16)
    part = render_scenes(cfg, "val", 5, 3)
    for key in ("images", "masks", "masks_b", "distractor_masks", "cue_masks"):
        assert np.array_equal(whole[key][5:8], part[key]), key
    for task, labels in whole["labels"].items():
        assert np.array_equal(labels[5:8], part["labels"][task])


def test_distractors_add_non_class_shapes_to_the_same_scene() -> None:
    single = render_scenes(config("single"), "test", 0, N)
    scenes = render_scenes(config("distractors"), "test", 0, N)
    distractors = scenes["distractor_masks"]
    # Same class object, background and clutter: only the distractors' pixels differ.
    assert np.array_equal(scenes["masks"], single["masks"])
    assert np.array_equal(scenes["images"][~distractors], single["images"][~distractors])
    assert not (distractors & scenes["masks"]).any()
    # The ground truth is the class object only; 2–3 distractors almost always find a place.
    count = scenes["attributes"]["n_distractors"]
    assert count.max() <= 3 and (count >= 2).mean() > 0.8
    assert (distractors.reshape(N, -1).sum(1) > 0).mean() > 0.95
    for task in ("shape", "color", "size", "quadrant"):
        assert np.array_equal(scenes["labels"][task], single["labels"][task])


def test_contrast_places_two_classes_in_opposite_halves() -> None:
    scenes = render_scenes(config("contrast"), "test", 0, N)
    a, b = scenes["masks"], scenes["masks_b"]
    assert (a.reshape(N, -1).sum(1) > 0).all() and (b.reshape(N, -1).sum(1) > 0).all()
    assert not (a & b).any()
    assert (scenes["labels"]["shape"] != scenes["labels"]["shape_b"]).all()
    half = a.shape[1] // 2
    for i in range(N):
        ya, xa = np.nonzero(a[i])
        yb, xb = np.nonzero(b[i])
        # Separated by one of the two mid-lines: each object entirely on its own side.
        by_x = xa.max() < half <= xb.min() or xb.max() < half <= xa.min()
        by_y = ya.max() < half <= yb.min() or yb.max() < half <= ya.min()
        assert by_x or by_y, i
    # Each object's pixels are drawn in one flat colour: the object is visible, not covered.
    for masks in (a, b):
        colours = [np.unique(scenes["images"][i][masks[i]], axis=0) for i in range(N)]
        assert all(len(c) == 1 for c in colours)


def test_cue_is_a_corner_square_whose_colour_is_the_label() -> None:
    cfg = config("cue")
    scenes = render_scenes(cfg, "test", 0, N)
    cue, obj = scenes["cue_masks"], scenes["masks"]
    side = round(cfg.cue_size * cfg.image_size)
    assert (cue.reshape(N, -1).sum(1) == side * side).all()
    assert not (cue & obj).any()
    families = list(cfg.color_families)
    for i in range(N):
        ys, xs = np.nonzero(cue[i])
        assert ys.max() - ys.min() == side - 1 and xs.max() - xs.min() == side - 1
        assert min(ys.min(), xs.min()) == 1 or max(ys.max(), xs.max()) == cfg.image_size - 2
        (rgb,) = np.unique(scenes["images"][i][cue[i]], axis=0)
        hue = 360 * colorsys.rgb_to_hsv(*(rgb / 255))[0]
        nearest = min(families, key=lambda f: min(abs(hue - COLOR_FAMILIES[f]), 360 - abs(hue - COLOR_FAMILIES[f])))
        assert families.index(nearest) == scenes["labels"]["cue"][i]
    # The cue's label is independent of the object's colour and shape (they carry no label information).
    assert len(set(zip(scenes["labels"]["cue"], scenes["labels"]["color"], strict=True))) > 8


def test_omitting_a_part_changes_only_its_pixels() -> None:
    cfg = config("cue")
    full = render_scenes(cfg, "test", 0, N)
    for part, mask_key in (("cue", "cue_masks"), ("object", "masks")):
        without = render_scenes(cfg, "test", 0, N, omit=(part,))
        changed = (without["images"] != full["images"]).any(-1)
        assert not (changed & ~full[mask_key]).any()
        assert changed.sum() > 0.5 * full[mask_key].sum()  # what shows instead is background, not the part
        assert np.array_equal(without["masks"], full["masks"])  # masks still describe the full scene
    with pytest.raises(DatasetError, match="cannot omit"):
        render_scenes(cfg, "test", 0, 1, omit=("sky",))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"scenario": "crowd"}, "unknown scenario"),
        ({"scenario": "distractors", "distractor_shapes": ("disk", "star")}, "distractor_shapes"),
        ({"scenario": "contrast", "object_size": (0.2, 0.3)}, "too large for the contrast"),
        ({"scenario": "cue", "cue_size": 0.01}, "cue_size"),
        ({"distractors": (2, 9)}, "distractors must be"),
    ],
)
def test_bad_scenario_configs_are_refused(kwargs: dict, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        SyntheticConfig(**kwargs)


def _write(tmp: Path, cfg: SyntheticConfig) -> Path:
    sized = SyntheticConfig(**{**cfg.to_dict(), "train_size": 4, "val_size": 4, "test_size": 6, "image_size": 48})
    return generate_synthetic(tmp / sized.scenario, sized, progress=False)


def test_contrast_dataset_explains_each_object_in_turn(tmp_path: Path) -> None:
    root = _write(tmp_path, config("contrast"))
    data = SyntheticDataset(root, split="test")
    scenes = render_scenes(data.config, "test", 0, 6)
    assert len(data) == 12 and data.ids[:2] == ["test_000000-a", "test_000000-b"]
    for i in range(6):
        a, b = data[2 * i], data[2 * i + 1]
        assert a.label == scenes["labels"]["shape"][i] and b.label == scenes["labels"]["shape_b"][i]
        assert np.array_equal(a.image.numpy(), b.image.numpy())
        assert np.array_equal(a.mask.numpy(), scenes["masks"][i]) and np.array_equal(
            b.mask.numpy(), scenes["masks_b"][i]
        )
        assert np.array_equal(a.counter_mask.numpy(), b.mask.numpy())
        assert np.array_equal(b.counter_mask.numpy(), a.mask.numpy())
    assert data.attributes(3)["id"] == "test_000001-b" and data.attributes(3)["shape_b"] == b_label(scenes, 1)
    # Another labelling of the same scenes: one sample per scene, the first object's mask.
    colour = SyntheticDataset(root, split="test", task="color")
    assert len(colour) == 6 and colour[0].counter_mask is None


def b_label(scenes: dict, i: int) -> int:
    return int(scenes["labels"]["shape_b"][i])


def test_cue_dataset_is_labelled_and_masked_by_the_cue(tmp_path: Path) -> None:
    root = _write(tmp_path, config("cue"))
    data = SyntheticDataset(root, split="test")
    scenes = render_scenes(data.config, "test", 0, 6)
    assert data.task == "cue" and data.class_names == list(data.config.color_families)
    for i in range(6):
        assert data[i].label == scenes["labels"]["cue"][i]
        assert np.array_equal(data[i].mask.numpy(), scenes["cue_masks"][i])
    shape = SyntheticDataset(root, split="test", task="shape")
    assert np.array_equal(shape[0].mask.numpy(), scenes["masks"][0])
