"""Heatmap overlays (the LETA demo, §4.3) for any registered method.

For each input image ``NAME.ext``: ``OUT/image/NAME.png`` is the image resized to the explainee's input
size, and ``OUT/explanation/heatmap-NAME.png`` the same image under the map in the jet colormap (opacity
0.4) with the explained class's name in the top-left corner. Small inputs (the embedded explainee sees
64×64) are upscaled by an integer factor with nearest neighbour so that the text is legible and the
pixels stay exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from explainers.errors import DatasetError
from explainers.methods.base import Method

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def list_images(path: str | Path) -> list[Path]:
    """Image files of a folder (sorted by name), or the one file given."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"--images {path} does not exist; pass a folder of images or an image file")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
    return files


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
    from matplotlib import colormaps

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


def _class_name(names: list[str] | None, index: int) -> str:
    if names and 0 <= index < len(names):
        return str(names[index])
    return f"class {index}"


def render_heatmaps(
    method: Method,
    images: str | Path | list[Path],
    out: str | Path,
    *,
    batch_size: int = 16,
    target: int | None = None,
    scale: int | None = None,
    alpha: float = 0.4,
) -> list[Path]:
    """Explain the images of a folder (or a list of files) with ``method`` and write the demo files;
    returns the overlay paths.

    Images go through :func:`explainers.data.load_image` (grayscale, RGBA and palette become RGB).
    """
    from explainers.data.base import load_image

    files = images if isinstance(images, list) else list_images(images)
    adapter = method.adapter
    out = Path(out).expanduser()
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "explanation").mkdir(parents=True, exist_ok=True)
    if scale is None:
        scale = max(1, math.ceil(224 / max(adapter.image_size)))
    # The method's class names: LETA with a probe explains another head than the adapter's own.
    names = method.class_names
    written = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        # Each file to the explainee's size first (they may differ in size), so that they stack.
        batch = torch.cat([adapter.resize(load_image(f)[None]) for f in chunk])
        explanation = method.explain(batch, target, ids=[f.name for f in chunk])
        classes = explanation.classes.tolist()
        for file, img, heat, t in zip(chunk, batch, explanation.maps, classes, strict=True):
            to_pil(img, scale).save(out / "image" / f"{file.stem}.png")
            path = out / "explanation" / f"heatmap-{file.stem}.png"
            overlay(img, heat, label=_class_name(names, t), alpha=alpha, scale=scale).save(path)
            written.append(path)
    return written
