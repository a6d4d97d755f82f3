"""Heatmap overlays (as in the LETA demo, docs/learned-explainers.md) for any registered method.

For each input image ``NAME.ext``: ``OUT/image/NAME.png`` is the image resized to the explainee's input
size, and ``OUT/explanation/heatmap-NAME.png`` the same image under the map in the jet colormap (opacity
0.4) with the explained class's name in the top-left corner. Small inputs (the embedded explainee sees
64×64) are upscaled by an integer factor with nearest neighbour so that the text is legible and the
pixels stay exact.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from explainers.data.base import load_image
from explainers.errors import DatasetError
from explainers.maps import overlay, to_pil
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
