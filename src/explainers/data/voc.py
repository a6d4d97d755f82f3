"""``voc:DIR``: Pascal VOC 2012 segmentation (val) as a foreground/background segmentation test.

Layout: ``DIR/ImageSets/Segmentation/<split>.txt``, ``DIR/JPEGImages/<id>.jpg``,
``DIR/SegmentationClass/<id>.png`` (palette PNG: 0 background, 1–20 classes, 255 void boundary). ``DIR``
may also be the ``VOCdevkit`` folder or its parent. Foreground = label > 0.

``void``: ``foreground`` (default, faithful to the reference: the 255 boundary pixels count as foreground)
or ``ignore`` (void pixels are neither foreground nor background: ``Sample.ignore`` marks them and the
segmentation metrics leave them out of every count). No class labels are read (label −1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from explainers.data.base import Sample, UnlabelledDataset, inside_root, load_image
from explainers.errors import DatasetError

VOID = 255


def _find_root(path: Path) -> Path:
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return path


def read_label_png(path: Path) -> np.ndarray:
    """Class indices of a VOC label PNG (palette or grayscale), H×W uint8."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DatasetError(
                    f"{path} is a {img.mode} image; VOC labels must be palette (P) or grayscale PNGs "
                    "of class indices"
                )
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"VOC label file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot decode VOC label {path}: {exc}") from None


class VocDataset(UnlabelledDataset):
    """The images of a VOC segmentation split with their foreground masks."""

    def __init__(self, root: Path | str, split: str = "val", void: str = "foreground") -> None:
        if void not in ("foreground", "ignore"):
            raise DatasetError(f"voc: void must be 'foreground' or 'ignore', got {void!r}")
        self.root = _find_root(Path(root))
        self.split = split
        self.void = void
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.exists():
            raise DatasetError(
                f"VOC split file not found: {split_file}; pass the VOC2012 folder (with "
                f"ImageSets/Segmentation/{split}.txt, JPEGImages/, SegmentationClass/) or another --split"
            )
        self._ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        for sid in self._ids:
            # An id names files in JPEGImages/ and SegmentationClass/: a plain name, never a path.
            if "/" in sid or "\\" in sid or sid in (".", ".."):
                raise DatasetError(
                    f"VOC split file {split_file} lists {sid!r}, which is not a plain image id (ids name "
                    "files inside JPEGImages/ and SegmentationClass/, e.g. 2007_000033)"
                )
        if not self._ids:
            raise DatasetError(f"VOC split file {split_file} lists no images")
        self.name = f"voc:{self.root.resolve()} ({split}, void={void})"

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        sid = self._ids[index]
        image = load_image(inside_root(self.root, f"JPEGImages/{sid}.jpg", "VOC image id"))
        labels = read_label_png(inside_root(self.root, f"SegmentationClass/{sid}.png", "VOC image id"))
        if labels.shape != tuple(image.shape[1:]):
            raise DatasetError(
                f"VOC label {sid}.png is {labels.shape[0]}×{labels.shape[1]} but its image is "
                f"{image.shape[1]}×{image.shape[2]}"
            )
        void = labels == VOID
        if self.void == "ignore":
            mask, ignore = (labels > 0) & ~void, torch.from_numpy(void)
        else:
            mask, ignore = labels > 0, None
        return Sample(image=image, label=-1, mask=torch.from_numpy(mask), id=sid, ignore=ignore)
