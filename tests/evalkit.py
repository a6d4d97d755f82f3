"""Helpers for the evaluation-suite tests: a hand-checkable model and tiny datasets in the real formats."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch import nn

import explainers
from explainers.data.base import ImageDataset, Sample
from explainers.methods.base import Attribution, Method, register_method
from explainers.models.base import ExplaineeAdapter

# ---------------------------------------------------------------------------------------------- hand model
#: The "object" pixels of the 4×4 hand model: the top row (row-major indices 0..3).
OBJECT = (0, 1, 2, 3)


class ObjectModel(nn.Module):
    """Two classes on 4×4 images: logit0 = Σ over the top-row pixels of the channel-mean normalised value,
    logit1 = 0.5. With mean = std = 0.5, a white pixel is +1 and a removed (black) one −1, so on a white
    image logit0 = 4 − 2·(top-row pixels removed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=1).flatten(1)[:, list(OBJECT)].sum(dim=1)
        return torch.stack([z, torch.full_like(z, 0.5)], dim=1)


class GridAdapter(ExplaineeAdapter):
    """A plain-module adapter that claims a 2×2 patch grid (for the patch-level metrics by hand)."""

    @property
    def grid(self) -> tuple[int, int]:
        return (2, 2)


def hand_adapter(grid: bool = False) -> ExplaineeAdapter:
    adapter = explainers.load_explainee(ObjectModel(), image_size=4, mean=[0.5] * 3, std=[0.5] * 3)
    if grid:
        adapter.__class__ = GridAdapter
    return adapter


def sigmoid(t: float) -> float:
    return float(1 / (1 + np.exp(-t)))


# ---------------------------------------------------------------------------------------------- datasets
class ListDataset(ImageDataset):
    """In-memory dataset of given samples."""

    def __init__(self, samples: list[Sample], name: str = "list") -> None:
        self.samples = samples
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.samples[index]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


def random_dataset(
    n: int, size: int = 32, seed: int = 0, num_classes: int = 5, masks: bool = True
) -> ListDataset:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        image = torch.rand(3, size + 4, size, generator=g)  # not the explainee size: collate resizes
        mask = torch.rand(size + 4, size, generator=g) > 0.6 if masks else None
        samples.append(Sample(image=image, label=i % num_classes, mask=mask, id=f"img{i:03d}"))
    return ListDataset(samples, name=f"random:{n}:{seed}")


def voc_palette() -> list[int]:
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    pal[255 * 3 : 255 * 3 + 3] = [224, 224, 192]
    return pal


def make_voc(root: Path, n: int = 4, size: tuple[int, int] = (20, 24), seed: int = 0) -> Path:
    """A VOC2012-style folder: val.txt, JPEGs and palette label PNGs with a 255 void border."""
    rng = np.random.default_rng(seed)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    ids = [f"2007_{i:06d}" for i in range(n)]
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    h, w = size
    for k, sid in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{sid}.jpg"
        )
        label = np.zeros((h, w), dtype=np.uint8)
        label[4 : 4 + 8 + k, 6:16] = 1 + k % 2
        label[3, 5:17] = 255  # void boundary
        img = Image.fromarray(label, mode="P")
        img.putpalette(voc_palette())
        img.save(root / "SegmentationClass" / f"{sid}.png")
    return root


def make_imagenet_seg(path: Path, sizes: list[tuple[int, int]], seed: int = 0) -> tuple[list, list]:
    """An HDF5 file with gtsegs_ijcv.mat's reference structure; returns the H×W×3 images and H×W masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        n = len(sizes)
        img_refs = np.empty((n, 1), dtype=h5py.ref_dtype)
        gt_refs = np.empty((n, 1), dtype=h5py.ref_dtype)
        for i, (h, w) in enumerate(sizes):
            image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            mask = (rng.random((h, w)) > 0.5).astype(np.uint8)
            images.append(image)
            masks.append(mask)
            d_img = refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0))  # stored (3, W, H)
            d_mask = refs.create_dataset(f"mask{i}", data=mask.T)  # stored (W, H)
            cell = refs.create_dataset(f"cell{i}", shape=(1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = d_mask.ref
            img_refs[i, 0] = d_img.ref
            gt_refs[i, 0] = cell.ref
        value = f.create_group("value")
        value.create_dataset("img", data=img_refs)
        value.create_dataset("gt", data=gt_refs)
    return images, masks


def make_coco(root: Path) -> dict:
    """COCO layout with a polygon, a compressed RLE (crowd), an uncompressed RLE and an image without
    instances. Returns the expected union masks by file stem."""
    from pycocotools import mask as mask_utils

    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    h, w = 12, 16
    rng = np.random.default_rng(0)
    names = ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "val2017" / name)
    rle_mask = np.zeros((h, w), dtype=np.uint8, order="F")
    rle_mask[6:10, 10:14] = 1
    rle = mask_utils.encode(rle_mask)
    rle["counts"] = rle["counts"].decode()
    unc_mask = np.zeros((h, w), dtype=np.uint8)
    unc_mask[0:2, 0:3] = 1
    flat = unc_mask.flatten(order="F")  # column-major run lengths, starting with a run of zeros
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    polygon = [2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]  # x,y pairs: a rectangle
    data = {
        "images": [{"id": i + 1, "file_name": n, "height": h, "width": w} for i, n in enumerate(names)],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [polygon],
                "area": 1,
                "bbox": [],
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 1,
                "segmentation": rle,
                "area": 1,
                "bbox": [],
            },
            {
                "id": 3,
                "image_id": 3,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": {"counts": counts, "size": [h, w]},
                "area": 1,
                "bbox": [],
            },
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2
        poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))).astype(bool)
    return {"000000000001": poly | rle_mask.astype(bool), "000000000003": unc_mask.astype(bool)}


# ---------------------------------------------------------------------------------------------- methods
@register_method("test-center")
class CenterMethod(Method):
    """Deterministic: distance to the image centre, plus a per-image offset; reports a per-image extra."""

    def __init__(self, adapter, *, normalize: bool = True, fail_after: int | None = None) -> None:
        super().__init__(adapter, normalize=normalize)
        self.fail_after = fail_after
        self.calls = 0

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> Attribution:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        h, w = images.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        base = -((yy - h / 2) ** 2 + (xx - w / 2) ** 2).float()
        texture = torch.sin(xx * 1.3 + yy * 0.7).float().to(images)
        maps = base[None] + images.mean(dim=(1, 2, 3))[:, None, None] * 50 * texture[None]
        extras = {"selected_step": targets * 2, "selected_score": images.mean(dim=(1, 2, 3))}
        return Attribution(maps=maps, extras=extras)


def save_tiny_vit(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    from conftest import build_hf_model

    build_hf_model("vit", seed=seed, image_size=image_size, patch_size=patch_size).save_pretrained(path)
    return path
