"""``folder:DIR``: class-per-subfolder images (ImageFolder layout), or a flat folder of unlabelled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explainers.data.base import ImageDataset, Sample, load_image
from explainers.errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


class FolderDataset(ImageDataset):
    """Images in ``root/<class>/*.png`` (label = index of the sorted class folder), or directly in ``root``
    (labels −1). Ids are paths relative to ``root``."""

    def __init__(self, root: Path, split: str | None = None) -> None:
        root = Path(root)
        if split is not None:
            root = root / split
        if not root.is_dir():
            raise DatasetError(f"folder dataset {root} is not a directory")
        self.root = root
        self.name = f"folder:{root}"
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if class_dirs:
            self.class_names = [p.name for p in class_dirs]
            self.files = [(f, label) for label, d in enumerate(class_dirs) for f in list_images(d)]
        else:
            self.class_names = None
            self.files = [(f, -1) for f in list_images(root)]
        if not self.files:
            raise DatasetError(
                f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files, "
                "directly or in one subfolder per class)"
            )

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> list[str]:  # without decoding every image
        return [path.relative_to(self.root).as_posix() for path, _ in self.files]

    def label_of(self, index: int) -> int:  # from the folder names / label file: no decoding
        return self.files[index][1]

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.files], dtype=np.int64)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.files[index]
        return Sample(image=load_image(path), label=label, mask=None, id=path.relative_to(self.root).as_posix())
