"""``masks:DIR``: a user's images with labels and ground-truth masks (layout, splits, bad layouts, use)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_hf_model
from explainers import DatasetError, open_dataset
from explainers.cli import main
from explainers.io.maskfile import MaskFile

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _box(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def _mask(path: Path, mask: np.ndarray, style: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "L":  # 0 / 255 grayscale
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    elif style == "P":  # palette indices, object = index 3 (a class colour, as VOC-style files have)
        img = Image.fromarray(mask.astype(np.uint8) * 3, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 200, 200, 0] + [0] * 756)
        img.save(path)
    elif style == "RGBA":  # opaque everywhere: the alpha channel must not count as foreground
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[..., 3] = 255
        rgba[mask, 1] = 200
        Image.fromarray(rgba, mode="RGBA").save(path)


def make_masks_dir(root: Path, n: int = 4, size: tuple[int, int] = (24, 20), classes: int = 4) -> dict:
    """n images (cycling jpg/png), one box mask each (cycling L/P/RGBA), labels i mod classes."""
    expected = {}
    h, w = size
    lines = ["# image class"]
    for i in range(n):
        name = f"img{i}.{'jpg' if i % 2 else 'png'}"
        _image(root / "images" / name, h, w, seed=i)
        mask = _box(h, w, top=i, left=2 * i, size=5 + i)
        _mask(root / "masks" / f"img{i}.png", mask, style=("L", "P", "RGBA")[i % 3])
        expected[name] = (mask, i % classes)
        # Labels by file name, by stem, and by class name (classes.txt).
        lines.append(
            f"{name} {i % classes}"
            if i % 3 == 0
            else f"img{i} {i % classes}"
            if i % 3 == 1
            else f"{name} c{i % classes}"
        )
    (root / "labels.txt").write_text("\n".join(lines) + "\n\n")
    (root / "classes.txt").write_text("".join(f"c{k}\n" for k in range(classes)))
    return expected


def test_layout_labels_and_masks(tmp_path):
    expected = make_masks_dir(tmp_path, n=6)
    ds = open_dataset(f"masks:{tmp_path}")
    assert len(ds) == 6 and ds.class_names == ["c0", "c1", "c2", "c3"]
    assert ds.ids == sorted(expected) and ds.labels.tolist() == [expected[i][1] for i in sorted(expected)]
    for k, sample in enumerate(ds):
        mask, label = expected[sample.id]
        assert sample.label == label == ds.labels[k]
        assert sample.mask.dtype == torch.bool and torch.equal(sample.mask, torch.from_numpy(mask))
        assert sample.image.shape == (3, 24, 20) and sample.ignore is None
    assert ds.name == f"masks:{tmp_path}"


def test_without_labels_file_labels_are_unknown(tmp_path):
    make_masks_dir(tmp_path, n=2)
    (tmp_path / "labels.txt").unlink()
    ds = open_dataset(f"masks:{tmp_path}")
    assert ds.labels.tolist() == [-1, -1] and ds[0].mask is not None


def test_split_files_select_images(tmp_path):
    make_masks_dir(tmp_path, n=6)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("img0.png\nimg1\nimg2.png\n")
    (tmp_path / "splits" / "test.txt").write_text("img5.jpg\nimg4\n")
    train = open_dataset(f"masks:{tmp_path}", split="train")
    test = open_dataset(f"masks:{tmp_path}", split="test")
    assert train.ids == ["img0.png", "img1.jpg", "img2.png"] and test.ids == ["img4.png", "img5.jpg"]
    assert test.labels.tolist() == [0, 1] and "(test)" in test.name
    assert len(open_dataset(f"masks:{tmp_path}")) == 6  # no --split: every image
    with pytest.raises(DatasetError, match=r"no split 'val'.*its splits: test, train"):
        open_dataset(f"masks:{tmp_path}", split="val")


def test_split_subfolders(tmp_path):
    make_masks_dir(tmp_path / "train", n=3)
    make_masks_dir(tmp_path / "test", n=2)
    (tmp_path / "test" / "classes.txt").unlink()
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")  # shared by the split folders without their own
    assert len(open_dataset(f"masks:{tmp_path}", split="train")) == 3
    test = open_dataset(f"masks:{tmp_path}", split="test")
    assert len(test) == 2 and test.class_names == ["a", "b", "c", "d"]
    with pytest.raises(DatasetError, match=r"no images/ folder; it has split folders \(test, train\): pass --split"):
        open_dataset(f"masks:{tmp_path}")


def _broken(tmp_path: Path, change) -> Path:
    make_masks_dir(tmp_path, n=4)
    change(tmp_path)
    return tmp_path


def _replace_line(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: __import__("shutil").rmtree(d / "masks"), "has no masks/ folder"),
        (lambda d: __import__("shutil").rmtree(d / "images"), "has no images/ folder"),
        (lambda d: _mask(d / "masks" / "stray.png", _box(24, 20, 0, 0, 3)), r"mask .*stray.png has no image"),
        (lambda d: (d / "masks" / "img2.png").unlink(), r"image img2.png has no mask .*img2.png"),
        (lambda d: (d / "masks" / "img9.jpg").write_bytes(b"x"), "masks must be PNG files"),
        (lambda d: _image(d / "images" / "img0.jpg", 4, 4, 0), "holds img0.jpg and img0.png"),
        (
            lambda d: _replace_line(d / "labels.txt", "img0.png 0", "img0.png 4"),
            r"labels.txt:2: class 4 is out of range 0..3",
        ),
        (
            lambda d: _replace_line(d / "labels.txt", "img0.png 0", "img0.png -1"),
            r"labels.txt:2: class -1 is out of range",
        ),
        (
            lambda d: _replace_line(d / "labels.txt", "img2.png c2", "img2.png cat"),
            "class 'cat' is neither an index nor a name",
        ),
        (
            lambda d: _replace_line(d / "labels.txt", "img0.png 0", "img0.png 0\nghost.jpg 1"),
            r"labels.txt:3: no image 'ghost.jpg'",
        ),
        (lambda d: _replace_line(d / "labels.txt", "img0.png 0", "img0.png 0\nimg0 1"), "img0.png has a label already"),
        (lambda d: _replace_line(d / "labels.txt", "img0.png 0", "img0.png"), r"expected '<image file name> <class>'"),
        (lambda d: _replace_line(d / "labels.txt", "img0.png 0\n", ""), r"has no label for img0.png"),
        (lambda d: (d / "classes.txt").write_text("a\na\n"), "lists a class name twice"),
    ],
)
def test_bad_layouts_are_one_line_errors(tmp_path, change, message):
    root = _broken(tmp_path, change)
    with pytest.raises(DatasetError, match=message) as info:
        open_dataset(f"masks:{root}")
    assert "\n" not in str(info.value)


def test_unknown_file_in_split_file(tmp_path):
    make_masks_dir(tmp_path, n=2)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("img0.png\nimg7.png\n")
    with pytest.raises(DatasetError, match=r"val.txt:2: no image 'img7.png'"):
        open_dataset(f"masks:{tmp_path}", split="val")


def test_mask_of_another_size_fails_when_read(tmp_path):
    make_masks_dir(tmp_path, n=2)
    _mask(tmp_path / "masks" / "img1.png", _box(10, 20, 0, 0, 3))
    ds = open_dataset(f"masks:{tmp_path}")
    ds[0]
    with pytest.raises(DatasetError, match=r"mask .*img1.png is 10×20 but its image img1.jpg is 24×20"):
        ds[1]


def test_unknown_kind_lists_masks():
    with pytest.raises(DatasetError, match="masks"):
        open_dataset("nope:/tmp")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_explain_and_evaluate_on_the_ground_truth_class(tmp_path, capsys):
    data = tmp_path / "data"
    make_masks_dir(data, n=4, size=(40, 36))
    build_hf_model(num_labels=4).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 32, "width": 32}})
    )
    common = ["--explainee", str(tmp_path / "vit"), "--data", f"masks:{data}", "--class", "target"]
    code, _, err = _cli(
        ["explain", "--method", "random", *common, "--out", str(tmp_path / "r.h5"), "--no-progress"], capsys
    )
    assert code == 0, err
    with MaskFile(tmp_path / "r.h5") as mf:
        assert list(mf.ids) == ["img0.png", "img1.jpg", "img2.png", "img3.jpg"]
        assert mf.targets == "target" and mf.labels.tolist() == [0, 1, 2, 3]
        assert mf.explained.tolist() == [0, 1, 2, 3]
    metrics = ["--metrics", "pos,miou,pixel-accuracy", "--out", str(tmp_path / "ev")]
    code, _, err = _cli(["evaluate", *common, "--masks", str(tmp_path / "r.h5"), *metrics], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["config"]["classes"] == "target"
    assert {"miou", "pixel-accuracy", "pos"} <= set(report["results"][0]["values"])


def test_pretraining_on_a_masks_split(tmp_path):
    from explainers import load_explainee
    from explainers.learned import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte

    data = tmp_path / "data"
    make_masks_dir(data, n=8, size=(32, 32))
    (data / "splits").mkdir()
    (data / "splits" / "train.txt").write_text("".join(f"img{i}\n" for i in range(8)))
    adapter = load_explainee(build_hf_model(num_labels=4), mean=[0.5] * 3, std=[0.5] * 3)
    config = LTEConfig(split="train", train_per_class=1, val_per_class=1, epochs=1, batch_size=4)
    result = pretrain_lte(adapter, f"masks:{data}", tmp_path / "plte", config, progress=False)
    subsets = json.loads((tmp_path / "plte" / "subsets.json").read_text())
    assert result.main_process and (tmp_path / "plte" / "config.json").is_file()
    assert sorted(subsets["train"] + subsets["val"]) == [f"img{i}.{'jpg' if i % 2 else 'png'}" for i in range(8)]
