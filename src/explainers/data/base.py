"""One dataset interface for every source: raw image in [0,1], label (or -1), mask (or None), id."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# resize_images/resize_masks are re-exported: their home before data/resize.py.
from explainers.data.resize import InputGeometry, as_geometry, resize_images, resize_masks  # noqa: F401
from explainers.errors import DatasetError


@dataclass
class Sample:
    """One image of a dataset.

    image: float32 tensor 3×H×W in [0, 1] at the image's own size.
    label: class index, or -1 when unknown.
    mask: bool tensor H×W of the ground-truth object, or None.
    id: a string identifier, unique within the dataset.
    ignore: bool tensor H×W of pixels to leave out of every segmentation count (e.g. Pascal VOC's void
        boundary with ``void="ignore"``), or None when every pixel counts. Only set together with ``mask``.
    """

    image: torch.Tensor
    label: int
    mask: torch.Tensor | None
    id: str
    ignore: torch.Tensor | None = None
    #: Evidence of a competing class in the same image (the other object of a contrast scene), or None.
    counter_mask: torch.Tensor | None = None


@dataclass
class Batch:
    """Samples resized to one size and stacked (images antialiased, masks nearest-exact: see :func:`collate`)."""

    images: torch.Tensor  # B×3×H×W in [0, 1]
    labels: torch.Tensor  # B, int64, -1 where unknown
    masks: torch.Tensor | None  # B×H×W bool, None if no sample has one
    ids: list[str]
    ignore: torch.Tensor | None = None  # B×H×W bool (resized like masks), None if no sample has one
    counter: torch.Tensor | None = None  # B×H×W bool: evidence of a competing class, None if no sample has one

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (called by ``DataLoader(pin_memory=True)``), so that the copy
        to a GPU can overlap with computation."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Every tensor of the batch on ``device`` (``non_blocking`` is only asynchronous from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        # Every tensor field, whatever fields the batch has (ids and absent parts are kept as they are).
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class ImageDataset(Sequence[Sample]):
    """Base class: subclasses implement ``__len__`` and ``__getitem__`` returning :class:`Sample`."""

    #: Names of the classes when known (index = label).
    class_names: list[str] | None = None
    #: Human-readable description, e.g. ``synthetic:/data/scenes (test)``.
    name: str = "dataset"

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def ids(self) -> list[str]:
        return [self[i].id for i in range(len(self))]

    def label_of(self, index: int) -> int:
        """The label of image ``index`` (−1 when unknown). This default decodes the image; every reader of
        this package overrides it with a lookup in what it already read (label file, folder names, CSV)."""
        return self[index].label

    @property
    def labels(self) -> np.ndarray:
        """Every image's label (int64, −1 where unknown), in dataset order, through :meth:`label_of`."""
        return np.array([self.label_of(i) for i in range(len(self))], dtype=np.int64)

    @property
    def labels_without_decoding(self) -> bool:
        """Whether :attr:`labels` / :meth:`label_of` answer without decoding images (the class overrides one
        of them), so that a caller may read every label up front."""
        cls = type(self)
        return cls.label_of is not ImageDataset.label_of or cls.labels is not ImageDataset.labels


class UnlabelledDataset(ImageDataset):
    """A reader whose images carry no class label (segmentation sets): every label is −1, without decoding."""

    def label_of(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return -1


def inside_root(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` for a name read from a dataset's own files, refusing anything that would
    reach outside ``root`` (an absolute path, a ``..`` component, a drive or NUL byte). The check is on
    the name, not on resolved paths, so datasets whose folders are symlinks keep working."""
    if not isinstance(relative, str) or not relative.strip():
        raise DatasetError(f"{what} {relative!r} is not a file name")
    pure = PurePosixPath(relative.replace("\\", "/"))
    drive = len(pure.parts[0]) >= 2 and pure.parts[0][1] == ":" and pure.parts[0][0].isalpha()
    if pure.is_absolute() or ".." in pure.parts or "\0" in relative or drive:
        raise DatasetError(
            f"{what} {relative!r} points outside the dataset folder {root}; dataset files may only name "
            "files inside it"
        )
    return root / pure


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a 3×H×W float tensor in [0,1].

    Grayscale, palette, CMYK and YCbCr become RGB; transparency is composited on black; 16-bit images are
    scaled by 65535 (not clipped at 255); an animated image gives its first frame. A file that cannot be
    decoded — including a decompression bomb, an image larger than Pillow's safety limit — is a
    :class:`DatasetError` naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.seek(0)  # animated GIF/PNG/WebP: the first frame
            img.load()
            array = _to_unit_rgb(img, path)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"image path {path} is a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"refusing to decode {path}: {exc.args[0].split('.')[0] if exc.args else 'too many pixels'} "
            "(a possible decompression bomb). Resize or remove the file"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"cannot decode image {path}: {exc}. Remove or replace the file.") from exc
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_unit_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """H×W×3 float32 in [0, 1] from any Pillow mode."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grayscale (Pillow's I;16*, or I for some decoders): scale by 65535. convert("RGB") would
        # clip every value above 255 to white.
        values = np.asarray(img).astype(np.float64)
        if img.mode == "I" and (values.min() < 0 or values.max() > 65535):
            raise DatasetError(f"{path} is a 32-bit integer image; save it as 8- or 16-bit")
        grey = (values / 65535.0).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float32)
        if not np.isfinite(grey).all() or grey.min() < 0 or grey.max() > 1:
            raise DatasetError(f"{path} is a floating-point image with values outside [0, 1]")
        return np.repeat(grey[:, :, None], 3, axis=2).copy()
    rgb = _to_rgb(img)
    return np.asarray(rgb, dtype=np.uint8).astype(np.float32) / 255.0


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: transparent pixels carry no evidence, like removed pixels.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def collate(samples: Sequence[Sample], size: tuple[int, int] | InputGeometry) -> Batch:
    """Resize every sample to ``size`` and stack them.

    Pass the explainee's ``adapter.input_geometry`` so that images of other sizes are preprocessed as the
    model's own processor does (e.g. resize the shorter side, then centre-crop); a plain (height, width)
    resizes straight to it. Images are resized antialiased (PIL-equivalent), masks and ignore regions with
    nearest-exact (PIL NEAREST) through the same resize and crop, so they stay aligned with the image.
    """
    if not samples:
        raise DatasetError("cannot build a batch from zero samples")
    geometry = as_geometry(size)
    size = geometry.size
    images = torch.stack([geometry.images(s.image[None])[0] for s in samples])
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    masks = None
    if any(s.mask is not None for s in samples):
        if not all(s.mask is not None for s in samples):
            raise DatasetError("some samples have a ground-truth mask and others do not")
        masks = torch.stack([geometry.masks(s.mask[None])[0] for s in samples])  # type: ignore[index]
    ignore = None
    if any(s.ignore is not None for s in samples):
        # A sample without an ignore region simply ignores nothing.
        nothing = torch.zeros(size, dtype=torch.bool)
        ignore = torch.stack([nothing if s.ignore is None else geometry.masks(s.ignore[None])[0] for s in samples])
    counter = None
    if any(s.counter_mask is not None for s in samples):
        # A sample without counter-evidence has none (an empty mask).
        nothing = torch.zeros(size, dtype=torch.bool)
        counter = torch.stack(
            [nothing if s.counter_mask is None else geometry.masks(s.counter_mask[None])[0] for s in samples]
        )
    return Batch(
        images=images, labels=labels, masks=masks, ids=[s.id for s in samples], ignore=ignore, counter=counter
    )


def iter_batches(
    dataset: ImageDataset,
    batch_size: int,
    size: tuple[int, int] | InputGeometry,
    indices: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Yield batches of ``dataset`` (optionally only ``indices``), resized to ``size`` (see :func:`collate`)."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        yield collate([dataset[i] for i in order[start : start + batch_size]], size)
