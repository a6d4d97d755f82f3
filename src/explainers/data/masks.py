"""``masks:DIR``: your own images with class labels and ground-truth object masks.

Layout::

    DIR/images/<name>.<ext>     the images (jpg, png, ...; directly in the folder)
    DIR/masks/<name>.png        one mask per image, same stem, PNG; nonzero pixel = object (foreground)
    DIR/labels.txt              optional: lines "<image file name or stem> <class>" (class index, or a
                                name from classes.txt); '#' comments and blank lines are skipped
    DIR/classes.txt             optional: one class name per line, line i = class i
    DIR/splits/<split>.txt      optional: the images of a split, one file name (or stem) per line

Splits, either way: ``--split test`` reads ``DIR/splits/test.txt`` (a subset of ``DIR/images``), or, when
``DIR/test/`` is itself a folder in the layout above (``DIR/test/images``, ``DIR/test/masks``, ...), that
folder (its ``classes.txt`` if it has one, else ``DIR/classes.txt``). Without ``--split`` every image of
``DIR/images`` is used.

Every image needs a mask and, when ``labels.txt`` exists, a label; without it labels are −1 (explain the
predicted class; segmentation metrics still work). Palette PNG masks are read as their indices (index 0 =
background), RGB(A) masks as "any colour channel nonzero" (alpha is ignored). A mask must have its image's
size; that is checked when the image is read. Ids are the image file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from explainers.data.base import ImageDataset, Sample, load_image
from explainers.data.folder import IMAGE_SUFFIXES, list_images
from explainers.errors import DatasetError

LABELS_FILE = "labels.txt"
CLASSES_FILE = "classes.txt"
SPLITS_DIR = "splits"


def read_mask_png(path: Path) -> torch.Tensor:
    """A mask PNG as a bool H×W tensor: nonzero = foreground (alpha channels ignored)."""
    try:
        with Image.open(path) as img:
            img.load()
            bands = img.getbands()
            array = np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot decode mask {path}: {exc}") from None
    if array.ndim == 3:
        keep = [i for i, band in enumerate(bands) if band != "A"]
        array = array[..., keep].any(axis=-1)
    return torch.from_numpy(np.asarray(array != 0))


def _split_names(root: Path) -> list[str]:
    names = set()
    if (root / SPLITS_DIR).is_dir():
        names |= {p.stem for p in (root / SPLITS_DIR).glob("*.txt")}
    names |= {p.name for p in root.iterdir() if p.is_dir() and (p / "images").is_dir()}
    return sorted(names)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank, non-comment lines."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not a UTF-8 text file") from None
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


class MasksDataset(ImageDataset):
    """Images with a ground-truth mask each and optional class labels (see the module docstring)."""

    def __init__(self, root: Path | str, split: str | None = None) -> None:
        top = Path(root)
        if not top.is_dir():
            raise DatasetError(f"masks dataset {top} is not a directory")
        folder, subset_file = top, None
        if split is not None:
            if (top / split / "images").is_dir():
                folder = top / split
            elif (top / SPLITS_DIR / f"{split}.txt").is_file():
                subset_file = top / SPLITS_DIR / f"{split}.txt"
            else:
                known = _split_names(top)
                raise DatasetError(
                    f"masks dataset {top} has no split {split!r} (neither {top / SPLITS_DIR / split}.txt nor "
                    f"{top / split}/images/); "
                    + (f"its splits: {', '.join(known)}" if known else "it has no splits: drop --split")
                )
        images_dir, masks_dir = folder / "images", folder / "masks"
        if not images_dir.is_dir():
            known = _split_names(top)
            hint = f"; it has split folders ({', '.join(known)}): pass --split" if known and split is None else ""
            raise DatasetError(f"masks dataset {folder} has no images/ folder{hint}")
        if not masks_dir.is_dir():
            raise DatasetError(f"masks dataset {folder} has no masks/ folder (one <image stem>.png per image)")

        images = list_images(images_dir)
        if not images:
            raise DatasetError(f"no images in {images_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
        by_stem: dict[str, Path] = {}
        for path in images:
            if path.stem in by_stem:
                raise DatasetError(
                    f"{images_dir} holds {by_stem[path.stem].name} and {path.name}: one mask {path.stem}.png "
                    "cannot belong to both; rename one"
                )
            by_stem[path.stem] = path
        masks = list_images(masks_dir)
        not_png = [p.name for p in masks if p.suffix.lower() != ".png"]
        if not_png:
            raise DatasetError(f"masks must be PNG files (lossless), but {masks_dir} holds {not_png[0]}")
        mask_stems = {p.stem for p in masks}
        orphans = sorted(mask_stems - set(by_stem))
        if orphans:
            raise DatasetError(
                f"mask {masks_dir / orphans[0]}.png has no image in {images_dir}"
                + (f" ({len(orphans)} such masks)" if len(orphans) > 1 else "")
            )
        unmasked = sorted(set(by_stem) - mask_stems)
        if unmasked:
            raise DatasetError(
                f"image {by_stem[unmasked[0]].name} has no mask {masks_dir / unmasked[0]}.png"
                + (f" ({len(unmasked)} images without a mask)" if len(unmasked) > 1 else "")
            )

        classes_file = next((d / CLASSES_FILE for d in (folder, top) if (d / CLASSES_FILE).is_file()), None)
        self.class_names = [name for _, name in _lines(classes_file)] if classes_file else None
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise DatasetError(f"{classes_file} lists a class name twice")

        selected = images
        if subset_file is not None:
            chosen: list[Path] = []
            for number, name in _lines(subset_file):
                path = self._find(by_stem, name)
                if path is None:
                    raise DatasetError(f"{subset_file}:{number}: no image {name!r} in {images_dir}")
                chosen.append(path)
            if not chosen:
                raise DatasetError(f"split file {subset_file} lists no images")
            if len(set(chosen)) != len(chosen):
                raise DatasetError(f"split file {subset_file} lists an image twice")
            selected = sorted(chosen)
        labels_file = folder / LABELS_FILE
        labels: dict[Path, int] = {}
        if labels_file.is_file():
            labels = self._read_labels(labels_file, by_stem, images_dir)
            unlabelled = [p.name for p in selected if p not in labels]
            if unlabelled:
                raise DatasetError(
                    f"{labels_file} has no label for {unlabelled[0]}"
                    + (f" ({len(unlabelled)} unlabelled images)" if len(unlabelled) > 1 else "")
                )
        self.root = folder
        self.images_dir, self.masks_dir = images_dir, masks_dir
        self.files = [(p, labels.get(p, -1)) for p in selected]
        self.name = f"masks:{top}" + (f" ({split})" if split is not None else "")

    @staticmethod
    def _find(by_stem: dict[str, Path], name: str) -> Path | None:
        """The image called ``name`` (its file name, or its stem)."""
        path = by_stem.get(name)
        if path is not None:
            return path
        path = by_stem.get(Path(name).stem)
        return path if path is not None and path.name == name else None

    def _read_labels(self, labels_file: Path, by_stem: dict[str, Path], images_dir: Path) -> dict[Path, int]:
        index = {name: i for i, name in enumerate(self.class_names or [])}
        labels: dict[Path, int] = {}
        for number, line in _lines(labels_file):
            parts = line.rsplit(None, 1)
            where = f"{labels_file}:{number}"
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected '<image file name> <class>', got {line!r}")
            name, value = parts
            path = self._find(by_stem, name)
            if path is None:
                raise DatasetError(f"{where}: no image {name!r} in {images_dir}")
            if path in labels:
                raise DatasetError(f"{where}: {path.name} has a label already")
            if value.lstrip("-").isdigit():
                label = int(value)
            elif value in index:
                label = index[value]
            else:
                raise DatasetError(
                    f"{where}: class {value!r} is neither an index nor a name in "
                    + (str(labels_file.parent / CLASSES_FILE) if self.class_names is None else CLASSES_FILE)
                )
            if label < 0 or (self.class_names is not None and label >= len(self.class_names)):
                upper = f"0..{len(self.class_names) - 1} ({CLASSES_FILE})" if self.class_names else "0 or more"
                raise DatasetError(f"{where}: class {label} is out of range {upper}")
            labels[path] = label
        return labels

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> list[str]:  # without decoding every image
        return [path.name for path, _ in self.files]

    def label_of(self, index: int) -> int:  # from labels.txt: no decoding
        return self.files[index][1]

    @property
    def labels(self) -> np.ndarray:
        """Class index per image (−1 without labels.txt), in dataset order, without reading any image."""
        return np.array([label for _, label in self.files], dtype=np.int64)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        path, label = self.files[index]
        image = load_image(path)
        mask_path = self.masks_dir / f"{path.stem}.png"
        mask = read_mask_png(mask_path)
        if tuple(mask.shape) != tuple(image.shape[1:]):
            raise DatasetError(
                f"mask {mask_path} is {mask.shape[0]}×{mask.shape[1]} but its image {path.name} is "
                f"{image.shape[1]}×{image.shape[2]} (height×width); masks must have their image's size"
            )
        return Sample(image=image, label=label, mask=mask, id=path.name)
