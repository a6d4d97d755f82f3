"""LETA's perturbation windows: Chebyshev neighbourhoods on the patch grid (row-major indexing).

Patch ``c`` of a gh×gw grid sits at row ``c // gw``, column ``c % gw`` — the order of the ViT's patch
tokens. The reference implementation built its windows with ``meshgrid(indexing="ij")`` but read the first
grid as the column, which transposes every window relative to its token; we index row-major everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_masks(
    grid: tuple[int, int], radius: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool P×P: row ``c`` marks the patches within Chebyshev distance ``radius`` of patch ``c``.

    Windows are clipped at the border (a corner window of radius 2 holds 3×3 patches, not 5×5).
    """
    gh, gw = int(grid[0]), int(grid[1])
    if radius < 0:
        raise ValueError(f"window radius must be >= 0, got {radius}")
    rows = torch.arange(gh * gw, device=device) // gw
    cols = torch.arange(gh * gw, device=device) % gw
    dist = torch.maximum((rows[:, None] - rows[None, :]).abs(), (cols[:, None] - cols[None, :]).abs())
    return dist <= radius


def pixel_masks(
    patch_masks: torch.Tensor, grid: tuple[int, int], patch_size: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Patch-level masks (…×P, row-major) → pixel masks (…×H×W, float 0/1).

    Each patch covers its ``patch_size`` block; pixels beyond ``grid × patch_size`` (sizes that are not a
    multiple of the patch) belong to no patch and stay 0, as the ViT never sees them either.
    """
    gh, gw = grid
    ph, pw = patch_size
    lead = patch_masks.shape[:-1]
    m = patch_masks.reshape(-1, gh, gw).to(torch.float32)
    m = m.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)
    pad_h, pad_w = image_size[0] - gh * ph, image_size[1] - gw * pw
    if pad_h or pad_w:
        m = F.pad(m, (0, pad_w, 0, pad_h))
    return m.reshape(*lead, *image_size)


def mask_pair(
    pixel_values: torch.Tensor,
    centres: torch.Tensor,
    windows: torch.Tensor,
    grid: tuple[int, int],
    patch_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masked copies for every (image, centre): ``x ⊙ m_c`` and ``x ⊙ (1 − m_c)``.

    ``pixel_values`` are B×3×H×W *normalised* images: zero there is the encoder's mean colour, which is
    what "removed" means for LETA. ``centres`` is B×K patch indices. Returns two (B·K)×3×H×W tensors,
    ordered image-major (all K centres of image 0 first).
    """
    b, _, h, w = pixel_values.shape
    k = centres.shape[1]
    m = pixel_masks(windows[centres.reshape(-1)], grid, patch_size, (h, w)).to(pixel_values)
    m = m.reshape(b, k, 1, h, w)
    x = pixel_values[:, None]
    keep = (x * m).reshape(b * k, -1, h, w)
    drop = (x * (1.0 - m)).reshape(b * k, -1, h, w)
    return keep, drop
