"""``imagenet-val:DIR``: ILSVRC2012 validation images with a label file of lines ``FILE LABEL``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explainers.data.base import ImageDataset, Sample, load_image
from explainers.data.folder import list_images
from explainers.errors import DatasetError

#: Names tried, in order, for the label file when none is given.
LABEL_FILE_NAMES = ("labels.txt", "val_labels.txt", "ILSVRC2012_val_labels.txt", "LOC_val_labels.txt")


def read_label_file(path: Path) -> dict[str, int]:
    """Parse lines ``ILSVRC2012_val_00000001.JPEG 65`` (0–999 class indices)."""
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(
                f"{path}:{number}: expected 'FILENAME LABEL' (e.g. 'ILSVRC2012_val_00000001.JPEG 65'), got {line!r}"
            )
        name, label = parts[0], int(parts[1])
        if not 0 <= label < 1000:
            raise DatasetError(f"{path}:{number}: label {label} is outside 0..999")
        if name in labels:
            raise DatasetError(f"{path}:{number}: {name} is listed twice")
        labels[name] = label
    if not labels:
        raise DatasetError(f"label file {path} has no entries")
    return labels


class ImageNetValDataset(ImageDataset):
    """ImageNet validation images in ``root`` and their labels. Ids are the file names."""

    def __init__(self, root: Path, labels: str | Path | None = None, split: str | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"imagenet-val path {root} is not a directory")
        if split not in (None, "val"):
            raise DatasetError(f"imagenet-val has only the 'val' split, not {split!r}")
        self.root = root
        self.name = f"imagenet-val:{root}"
        label_file = (
            Path(labels)
            if labels is not None
            else next((root / n for n in LABEL_FILE_NAMES if (root / n).exists()), None)
        )
        if label_file is None:
            raise DatasetError(
                f"no label file in {root} (looked for {', '.join(LABEL_FILE_NAMES)}); pass --labels FILE with lines "
                "'ILSVRC2012_val_00000001.JPEG 65'"
            )
        if not label_file.is_file():
            raise DatasetError(f"label file not found: {label_file}")
        label_map = read_label_file(label_file)
        files = {p.name: p for p in list_images(root)}
        if not files:
            raise DatasetError(f"no images in {root}")
        missing = sorted(set(label_map) - set(files))
        unlabelled = sorted(set(files) - set(label_map))
        if missing or unlabelled:
            detail = []
            if missing:
                detail.append(f"{len(missing)} listed but not in the folder (e.g. {missing[0]})")
            if unlabelled:
                detail.append(f"{len(unlabelled)} images have no label (e.g. {unlabelled[0]})")
            raise DatasetError(f"label file {label_file} does not match {root}: {'; '.join(detail)}")
        self.files = [(files[name], label_map[name]) for name in sorted(files)]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> list[str]:  # without decoding every image
        return [path.name for path, _ in self.files]

    def label_of(self, index: int) -> int:  # from the folder names / label file: no decoding
        return self.files[index][1]

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.files], dtype=np.int64)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.files[index]
        return Sample(image=load_image(path), label=label, mask=None, id=path.name)
