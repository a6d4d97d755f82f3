"""Segmentation datasets built as tiny files in their real formats: ImageNet-seg (.mat v7.3 references),
COCO (polygon, compressed and uncompressed RLE, crowd), Pascal VOC (palette PNG with void 255)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from evalkit import make_coco, make_imagenet_seg, make_voc
from explainers import DatasetError, open_dataset
from explainers.cli import main
from explainers.data import collate


def test_imagenet_seg_references_and_transposes(tmp_path):
    path = tmp_path / "gtsegs_ijcv.mat"
    images, masks = make_imagenet_seg(path, [(5, 7), (6, 4)])  # non-square: a wrong transpose shows
    ds = open_dataset(f"imagenet-seg:{path}")
    assert len(ds) == 2 and ds.ids == ["00000", "00001"]
    for i in range(2):
        s = ds[i]
        assert s.label == -1 and s.id == f"{i:05d}"
        assert s.image.shape == (3, *images[i].shape[:2])
        np.testing.assert_array_equal((s.image.permute(1, 2, 0) * 255).round().byte().numpy(), images[i])
        np.testing.assert_array_equal(s.mask.numpy(), masks[i].astype(bool))
    batch = collate([ds[0], ds[1]], (8, 8))
    assert batch.masks.shape == (2, 8, 8) and batch.ignore is None


def test_imagenet_seg_bad_files(tmp_path):
    v5 = tmp_path / "old.mat"
    v5.write_bytes(b"MATLAB 5.0 MAT-file, Platform: GLNXA64" + b"\0" * 200)
    with pytest.raises(DatasetError, match=r"v7\.3"):
        open_dataset(f"imagenet-seg:{v5}")
    good = tmp_path / "good.mat"
    make_imagenet_seg(good, [(30, 30)] * 4)
    data = good.read_bytes()
    cut = tmp_path / "cut.mat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"truncated|damaged"):
        ds = open_dataset(f"imagenet-seg:{cut}")
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(DatasetError, match="has no splits"):
        open_dataset(f"imagenet-seg:{good}", split="val")


def test_coco_union_of_instances(tmp_path):
    expected = make_coco(tmp_path)
    ds = open_dataset(f"coco:{tmp_path}")
    # Image 2 has no instance and is left out.
    assert ds.ids == ["000000000001", "000000000003"]
    for i, sid in enumerate(ds.ids):
        s = ds[i]
        assert s.label == -1 and s.id == sid and s.image.shape == (3, 12, 16)
        np.testing.assert_array_equal(s.mask.numpy(), expected[sid])
    assert expected["000000000001"].sum() > expected["000000000003"].sum() > 0


def test_coco_without_segmentations(tmp_path):
    make_coco(tmp_path)
    ann = tmp_path / "annotations" / "instances_val2017.json"
    import json

    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        del a["segmentation"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="no instance segmentations"):
        open_dataset(f"coco:{tmp_path}")
    with pytest.raises(DatasetError, match="annotation file not found"):
        open_dataset(f"coco:{tmp_path}", split="train2017")


def test_coco_without_pycocotools_names_the_extra(tmp_path, monkeypatch, capsys):
    make_coco(tmp_path)  # (writing the RLE masks uses pycocotools: before it is blocked)
    for name in [m for m in sys.modules if m.split(".")[0] == "pycocotools"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # any import of it now fails as if not installed
    with pytest.raises(DatasetError, match=r"need pycocotools, which is not installed: .*'explainers\[coco\]'"):
        open_dataset(f"coco:{tmp_path}")
    out = tmp_path / "maps.h5"
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--method", "random", "--explainee", "embedded", "--data", f"coco:{tmp_path}",
              "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("explainers: error: COCO datasets need pycocotools") and "[coco]" in err[0]
    assert not out.exists()


def test_voc_void_default_and_ignore(tmp_path):
    make_voc(tmp_path / "VOC2012", n=2)
    ds = open_dataset(f"voc:{tmp_path}")  # the parent folder is accepted too
    assert ds.ids == ["2007_000000", "2007_000001"]
    s = ds[0]
    assert s.label == -1 and s.ignore is None and s.image.shape == (3, 20, 24)
    # Faithful default: the void row (label 255) counts as foreground.
    assert s.mask[3, 5:17].all() and s.mask[4:12, 6:16].all() and s.mask.sum() == 12 + 80
    ds = open_dataset(f"voc:{tmp_path / 'VOC2012'}", void="ignore")
    s = ds[0]
    assert not s.mask[3].any() and s.mask.sum() == 80
    assert s.ignore is not None and s.ignore.sum() == 12 and s.ignore[3, 5:17].all()
    batch = collate([ds[0], ds[1]], (10, 12))
    assert batch.ignore.shape == (2, 10, 12) and batch.ignore.dtype == torch.bool


def test_voc_missing_split_file(tmp_path):
    make_voc(tmp_path, n=1)
    with pytest.raises(DatasetError, match=r"split file not found.*test\.txt"):
        open_dataset(f"voc:{tmp_path}", split="test")
    with pytest.raises(DatasetError, match="void"):
        open_dataset(f"voc:{tmp_path}", void="skip")
