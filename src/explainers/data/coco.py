"""``coco:DIR``: COCO instance segmentation (val2017) as a foreground/background segmentation test.

Layout: ``DIR/annotations/instances_<split>.json`` and ``DIR/<split>/`` (split defaults to ``val2017``).
Only images with at least one instance segmentation are used, sorted by image id. Ground truth = union of
every instance mask of the image (all categories, crowd regions included), decoded with pycocotools'
``annToMask`` (polygons, uncompressed and compressed RLE). No class labels (label −1); the id is the
file name without extension (``000000000139``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainers.data.base import Sample, UnlabelledDataset, inside_root, load_image
from explainers.errors import DatasetError


def _has_segmentation(ann: dict[str, Any]) -> bool:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        return any(len(poly) >= 6 for poly in seg)  # a polygon needs at least three points
    return isinstance(seg, dict) and "counts" in seg and "size" in seg


def _check_images(images: list[Any], ann_file: Path, image_dir: Path) -> None:
    """Every ``images`` entry must be an object with an integer ``id`` (unique), a ``file_name`` inside
    the image folder and a positive integer ``height`` and ``width``."""
    seen: set[int] = set()
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise DatasetError(f"{ann_file}: images[{k}] is {type(img).__name__}, not an object")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise DatasetError(f"{ann_file}: images[{k}] has no {key!r}; the file is damaged")
        image_id = img["id"]
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DatasetError(f"{ann_file}: images[{k}] has id {image_id!r}; ids must be integers")
        if image_id in seen:
            raise DatasetError(f"{ann_file}: image id {image_id} appears twice in 'images'")
        seen.add(image_id)
        for key in ("height", "width"):
            value = img[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DatasetError(f"{ann_file}: images[{k}] has {key} {value!r}; it must be a positive integer")
        inside_root(image_dir, img["file_name"], f"{ann_file.name}: images[{k}] file_name")


def _coco_api() -> type:
    """pycocotools' ``COCO`` class; pycocotools is the optional ``coco`` extra, needed for COCO data only."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        reason = "is not installed" if isinstance(exc, ModuleNotFoundError) else f"cannot be imported ({exc})"
        raise DatasetError(
            f"COCO datasets need pycocotools, which {reason}: install the coco extra, "
            "pip install 'explainers[coco]'"
        ) from None
    return COCO


class CocoDataset(UnlabelledDataset):
    """Images with ≥ 1 instance and the union of their instance masks."""

    def __init__(self, root: Path | str, split: str = "val2017") -> None:
        COCO = _coco_api()  # first: without the extra, say so before reading anything
        self.root = Path(root)
        self.split = split
        ann_file = self.root / "annotations" / f"instances_{split}.json"
        self.image_dir = self.root / split
        if not ann_file.exists():
            raise DatasetError(
                f"COCO annotation file not found: {ann_file} "
                f"(expected DIR/annotations/instances_{split}.json)"
            )
        if not self.image_dir.is_dir():
            raise DatasetError(f"COCO image folder not found: {self.image_dir} (expected DIR/{split}/)")
        try:
            data = json.loads(ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(
                f"{ann_file} is not valid JSON ({exc}); download the annotations again"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"{ann_file} is not a COCO annotation file (no 'images' list)")
        _check_images(data["images"], ann_file, self.image_dir)
        anns = data.get("annotations") or []
        if not isinstance(anns, list):
            raise DatasetError(f"{ann_file}: 'annotations' must be a list of objects")
        with_seg = [a for a in anns if isinstance(a, dict) and _has_segmentation(a)]
        for a in with_seg:
            if not isinstance(a.get("image_id"), int) or isinstance(a.get("image_id"), bool):
                raise DatasetError(
                    f"{ann_file}: annotation {a.get('id', '?')} has no integer 'image_id'; the file is damaged"
                )
        if not with_seg:
            raise DatasetError(
                f"{ann_file} has no instance segmentations (is it a captions or keypoints file?); "
                f"use annotations/instances_{split}.json"
            )
        data = {**data, "annotations": with_seg}
        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self._coco.createIndex()
        images = {img["id"]: img for img in data["images"]}
        unknown = {a["image_id"] for a in with_seg} - set(images)
        if unknown:
            raise DatasetError(
                f"{ann_file}: annotations refer to image ids missing from 'images' (e.g. {min(unknown)})"
            )
        self._image_ids = sorted({a["image_id"] for a in with_seg})
        self._ids = [Path(images[i]["file_name"]).stem for i in self._image_ids]
        self.name = f"coco:{self.root.resolve()} ({split})"

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def ground_truth(self, index: int) -> np.ndarray:
        """Union of the instance masks of image ``index`` (H×W bool)."""
        coco = self._coco
        image_id = self._image_ids[index]
        info = coco.imgs[image_id]
        mask = np.zeros((int(info["height"]), int(info["width"])), dtype=bool)
        for ann in coco.imgToAnns[image_id]:
            try:
                with warnings.catch_warnings():
                    # pycocotools' decode trips numpy 2's __array__(copy=) deprecation; harmless.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    mask |= coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises bare TypeErrors/ValueErrors on bad segmentations
                raise DatasetError(
                    f"cannot decode the segmentation of annotation {ann.get('id')}: {exc}"
                ) from None
        return mask

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        info = self._coco.imgs[self._image_ids[index]]
        image = load_image(inside_root(self.image_dir, info["file_name"], "COCO file_name"))
        mask = self.ground_truth(index)
        if tuple(image.shape[1:]) != mask.shape:
            raise DatasetError(
                f"COCO image {info['file_name']} is {image.shape[1]}×{image.shape[2]} but its annotation "
                f"says {mask.shape[0]}×{mask.shape[1]}"
            )
        return Sample(image=image, label=-1, mask=torch.from_numpy(mask), id=self._ids[index])
