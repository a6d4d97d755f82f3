"""folder: and imagenet-val: readers, image decoding and the KIND:PATH registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import DatasetError, open_dataset
from explainers.data import collate, iter_batches, load_image


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def test_load_image_converts_modes(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 2] = (255, 128, 0)
    _save(tmp_path / "rgb.png", rgb)
    img = load_image(tmp_path / "rgb.png")
    assert img.shape == (3, 4, 5) and img.dtype == torch.float32
    assert torch.allclose(img[:, 1, 2], torch.tensor([1.0, 128 / 255, 0.0]))
    _save(tmp_path / "gray.png", np.full((4, 5), 51, np.uint8))
    assert torch.allclose(load_image(tmp_path / "gray.png"), torch.full((3, 4, 5), 0.2))
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest transparent → black
    _save(tmp_path / "rgba.png", rgba)
    img = load_image(tmp_path / "rgba.png")
    assert img[0, 0, 0] == 1.0 and img[:, 1:, :].sum() == 0
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    img = load_image(tmp_path / "pal.png")
    assert img.shape == (3, 2, 2) and img[1, 0, 1] == 1.0 and img[1, 0, 0] == 0.0


def test_load_image_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot decode image .*bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_folder_dataset(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        for i in range(n):
            _save(tmp_path / cls / f"{i}.png", np.full((6, 8, 3), 10 * i, np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3
    assert [ds[i].label for i in range(3)] == [0, 0, 1]
    assert ds[2].id == "dog/0.png" and ds[0].mask is None
    batch = collate([ds[0], ds[2]], (4, 4))
    assert batch.images.shape == (2, 3, 4, 4) and batch.labels.tolist() == [0, 1] and batch.masks is None
    flat = tmp_path / "flat"
    _save(flat / "a.jpg", np.zeros((5, 5, 3), np.uint8))
    ds = open_dataset(f"folder:{flat}")
    assert ds.class_names is None and ds[0].label == -1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        open_dataset(f"folder:{tmp_path / 'empty'}")


def test_imagenet_val(tmp_path):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    for name in names:
        _save(tmp_path / name, np.zeros((7, 9, 3), np.uint8))
    (tmp_path / "labels.txt").write_text(f"{names[0]} 65\n{names[1]} 970\n{names[2]} 0\n")
    ds = open_dataset(f"imagenet-val:{tmp_path}")
    assert [ds[i].label for i in range(3)] == [65, 970, 0] and ds[1].id == names[1]
    batches = list(iter_batches(ds, 2, (8, 8)))
    assert [b.images.shape[0] for b in batches] == [2, 1] and batches[1].ids == [names[2]]
    (tmp_path / "labels.txt").write_text(f"{names[0]} 65\n{names[1]} 970\n")
    with pytest.raises(DatasetError, match="does not match .*1 images have no label"):
        open_dataset(f"imagenet-val:{tmp_path}")
    (tmp_path / "labels.txt").write_text(
        f"{names[0]} 65\n{names[1]} 970\n{names[2]} 0\nILSVRC2012_val_00000009.JPEG 3\n"
    )
    with pytest.raises(DatasetError, match="1 listed but not in the folder"):
        open_dataset(f"imagenet-val:{tmp_path}")
    (tmp_path / "labels.txt").write_text(f"{names[0]} sixty-five\n")
    with pytest.raises(DatasetError, match="labels.txt:1: expected 'FILENAME LABEL'"):
        open_dataset(f"imagenet-val:{tmp_path}")
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(DatasetError, match="no label file"):
        open_dataset(f"imagenet-val:{tmp_path}")


def test_dataset_spec_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset kind 'cifar'.*valid kinds: synthetic"):
        open_dataset("cifar:/data")
    with pytest.raises(DatasetError, match="not KIND:PATH"):
        open_dataset("just-a-path")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'missing'}")


def test_ids_match_samples(tmp_path):
    for cls in ("a", "b"):
        _save(tmp_path / cls / "x.png", np.zeros((4, 4, 3), np.uint8))
    ds = open_dataset(f"folder:{tmp_path}")
    assert ds.ids == [ds[i].id for i in range(len(ds))] == ["a/x.png", "b/x.png"]
