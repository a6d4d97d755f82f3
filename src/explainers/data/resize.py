"""How an image of any size becomes an explainee's input: resize (optionally keeping the aspect ratio),
then centre-crop — the steps a model's published image processor takes, done in torch on batches.

Images are resized with ``F.interpolate(..., antialias=True, align_corners=False)``: with antialiasing on,
torch's bilinear and bicubic kernels are PIL's (the reference protocols and the Hugging Face/timm processors
resize PIL images), equal to PIL's float resize to ~1e-5 when shrinking and enlarging. Without it a 500×375 →
224 downscale differs from PIL by 0.015 on average (aliasing). Masks are resized with ``nearest-exact``,
which picks the same source pixel as PIL's NEAREST (torch's plain ``nearest`` is off by up to a row/column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

Interpolation = Literal["bilinear", "bicubic"]
CropRounding = Literal["floor", "round"]

INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class InputGeometry:
    """Resize-then-crop from any image size to the model's input ``size`` (height, width).

    ``resize``:
      - ``None``: resize straight to ``size`` (no crop; aspect ratio not kept) — processors without a crop;
      - an int: resize the shorter side to it, keeping the aspect ratio (the longer side is truncated, as
        in torchvision and Hugging Face), then centre-crop ``size`` — timm and torchvision evaluation;
      - (height, width): resize to exactly that, then centre-crop ``size`` — Hugging Face processors whose
        ``size`` is a height/width pair (DeiT: 256×256, then a 224 crop).
    ``interpolation``: ``bilinear`` or ``bicubic`` (the processor's ``resample``), both antialiased.
    ``crop_rounding``: where an odd margin goes: ``floor`` (Hugging Face: top = ⌊(H − h)/2⌋) or ``round``
    (torchvision/timm: top = round((H − h)/2), ties to even).

    An image already at ``size`` is taken as already preprocessed and left unchanged: batches are resized
    once when collated, and every later :meth:`images` call on them must be a no-op.
    """

    size: tuple[int, int]
    resize: int | tuple[int, int] | None = None
    interpolation: Interpolation = "bilinear"
    crop_rounding: CropRounding = "floor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        if isinstance(self.resize, (tuple, list)):
            object.__setattr__(self, "resize", _pair(self.resize))
        if min(self.size) <= 0:
            raise ValueError(f"input size must be positive, got {self.size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}")
        if isinstance(self.resize, int) and self.resize < min(self.size):
            raise ValueError(f"resizing the shorter side to {self.resize} leaves too little to crop {self.size}")
        if isinstance(self.resize, tuple) and (self.resize[0] < self.size[0] or self.resize[1] < self.size[1]):
            raise ValueError(f"resizing to {self.resize} leaves too little to crop {self.size}")

    @property
    def crops(self) -> bool:
        """Whether images are resized larger than ``size`` and centre-cropped."""
        return self.resize is not None and self.resized_shape(*self.size) != self.size

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """Shape of an ``height``×``width`` image after the resize step (before the crop)."""
        if self.resize is None:
            return self.size
        if isinstance(self.resize, tuple):
            return self.resize
        if height <= width:
            return (self.resize, int(self.resize * width / height))
        return (int(self.resize * height / width), self.resize)

    def crop_box(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the centre crop in a resized ``height``×``width`` image."""

        def offset(margin: int) -> int:
            # Python's round() ties to even, as torchvision's int(round(...)) does.
            return margin // 2 if self.crop_rounding == "floor" else round(margin / 2.0)

        return offset(height - self.size[0]), offset(width - self.size[1])

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        top, left = self.crop_box(x.shape[-2], x.shape[-1])
        return x[..., top : top + self.size[0], left : left + self.size[1]]

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×H×W images in [0, 1] → B×C×size, antialiased, clamped to [0, 1] (bicubic overshoots)."""
        if tuple(images.shape[-2:]) == self.size:
            return images
        shape = self.resized_shape(images.shape[-2], images.shape[-1])
        resized = F.interpolate(images, size=shape, mode=self.interpolation, antialias=True, align_corners=False)
        return self._crop(resized.clamp_(0.0, 1.0))

    def masks(self, masks: torch.Tensor) -> torch.Tensor:
        """B×H×W boolean masks → B×size with the same geometry as :meth:`images`, nearest-exact (PIL NEAREST)."""
        if tuple(masks.shape[-2:]) == self.size:
            return masks
        shape = self.resized_shape(masks.shape[-2], masks.shape[-1])
        resized = F.interpolate(masks[:, None].to(torch.uint8), size=shape, mode="nearest-exact")[:, 0]
        return self._crop(resized).bool()

    def describe(self) -> dict[str, Any]:
        """JSON-able record of the preprocessing, stored with the explainee description."""
        resize: Any
        if self.resize is None:
            resize = list(self.size)
        elif isinstance(self.resize, int):
            resize = {"shortest_edge": self.resize}
        else:
            resize = list(self.resize)
        return {
            "resize": resize,
            "crop": list(self.size) if self.crops else None,
            "crop_rounding": self.crop_rounding if self.crops else None,
            "interpolation": self.interpolation,
            "antialias": True,
        }


def as_geometry(size: tuple[int, int] | InputGeometry) -> InputGeometry:
    """A plain (height, width) means: resize straight to it, antialiased bilinear."""
    return size if isinstance(size, InputGeometry) else InputGeometry(_pair(size))  # type: ignore[arg-type]


def resize_images(images: torch.Tensor, size: tuple[int, int] | InputGeometry) -> torch.Tensor:
    """Resize B×C×H×W [0, 1] images to ``size`` (antialiased, PIL-equivalent; see :class:`InputGeometry`)."""
    return as_geometry(size).images(images)


def resize_masks(masks: torch.Tensor, size: tuple[int, int] | InputGeometry) -> torch.Tensor:
    """Resize B×H×W boolean masks to ``size`` with nearest-exact (identical to PIL NEAREST)."""
    return as_geometry(size).masks(masks)
