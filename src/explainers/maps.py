"""Utilities on attribution maps that every layer shares: normalising, resizing and drawing them.

A map here is a float tensor of relevance scores, B×H×W for a batch (or H×W for one image when drawn).
These functions know nothing about models, methods or metrics, so methods, metrics, learned explainers
and the report writers use the same definitions (a map normalised for a metric is normalised exactly as
a method normalises it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image min–max to [0, 1] over all but the first dimension; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    out = (flat - lo) / (hi - lo).clamp_min(eps)
    return out.view_as(maps)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×h×w maps → B×H×W (``size`` = (H, W)), bilinear with ``align_corners=False`` and no antialiasing.

    This is how coarse maps (patch grids, low-resolution masks) are brought to the image size; it does
    not smooth when shrinking, which no caller does.
    """
    b = maps.shape[0]
    grid = maps.reshape(b, 1, *maps.shape[-2:])
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


# --------------------------------------------------------------------------------------------- drawing
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """3×H×W [0,1] tensor → RGB PIL image, upscaled ``scale`` times (nearest)."""
    array = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array, "RGB")
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def overlay(
    image: torch.Tensor, heat: torch.Tensor, *, label: str | None = None, alpha: float = 0.4, scale: int = 1
) -> Image.Image:
    """``image`` (3×H×W in [0,1]) blended with ``heat`` (H×W, min–max normalised here) in jet."""
    from matplotlib import colormaps  # matplotlib takes ~0.5 s to import: only when a picture is drawn

    h = torch.nan_to_num(heat.detach().float().cpu())
    lo, hi = float(h.min()), float(h.max())
    h = (h - lo) / (hi - lo) if hi > lo else torch.zeros_like(h)
    colored = torch.from_numpy(colormaps["jet"](h.numpy())[..., :3]).permute(2, 0, 1).float()
    blend = (1 - alpha) * image.detach().cpu().float() + alpha * colored
    pil = to_pil(blend, scale)
    if label:
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, pil.height // 16))
        left, top, right, bottom = draw.textbbox((4, 2), label, font=font)
        # A dark box behind the text keeps it readable over any colour of the overlay.
        draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255), font=font)
    return pil


__all__ = ["minmax_normalize", "overlay", "resize_maps", "to_pil"]
