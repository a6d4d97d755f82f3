"""RISE (Petsiuk et al., 2018): randomised input sampling, for any explainee.

N binary masks on an s×s grid (each cell kept with probability p), bilinearly upsampled to
(s+1)·cell pixels (cell = ⌈size/s⌉) and cropped at a random shift in [0, cell) per axis, so the mask
edges fall anywhere; masked images x ⊙ M_i are black where removed (0 in [0,1] space, as in the
masking metrics) and then normalised for the explainee. The map is
Σ_i softmax(f(x ⊙ M_i))_c · M_i / (N·p).

Grid size: the paper's s = 7 at 224×224 with 16-pixel patches, i.e. a cell of about 2×2 patches. By
default s scales with the explainee: s = round(min(patch grid) / 2) for ViTs (7 at 224/16, 4 at 64/8),
round(min(H, W) / 32) for other models (7 at 224), at least 2. The masks depend only on ``seed``, so every
image (in any batch, in any call) is explained with the same mask set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError
from explainers.methods.base import Cost, Method, register_method
from explainers.models.base import ExplaineeAdapter


def default_grid_size(adapter: ExplaineeAdapter) -> int:
    """s for RISE's mask grid (see the module docstring)."""
    if adapter.supports_attention:
        return max(2, round(min(adapter.grid) / 2))
    return max(2, round(min(adapter.image_size) / 32))


class RiseMasks:
    """The N masks of one seed, generated lazily in chunks (N×H×W floats would not fit at N = 4000)."""

    def __init__(
        self, num_masks: int, grid_size: int, p: float, image_size: tuple[int, int], seed: int
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.num_masks, self.grid_size, self.p, self.image_size = num_masks, grid_size, p, image_size
        h, w = image_size
        self.cell = (math.ceil(h / grid_size), math.ceil(w / grid_size))
        self.grids = (torch.rand(num_masks, 1, grid_size, grid_size, generator=gen) < p).float()
        self.shift_y = torch.randint(0, self.cell[0], (num_masks,), generator=gen)
        self.shift_x = torch.randint(0, self.cell[1], (num_masks,), generator=gen)

    def chunk(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks ``start:stop`` as an n×H×W float tensor in [0, 1]."""
        h, w = self.image_size
        up = ((self.grid_size + 1) * self.cell[0], (self.grid_size + 1) * self.cell[1])
        big = F.interpolate(self.grids[start:stop].to(device), size=up, mode="bilinear", align_corners=False)[
            :, 0
        ]
        n = big.shape[0]
        rows = self.shift_y[start:stop, None].to(device) + torch.arange(h, device=device)  # n×H
        cols = self.shift_x[start:stop, None].to(device) + torch.arange(w, device=device)  # n×W
        masks = big[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return masks.clamp_(0, 1)  # bilinear rounding can overshoot 1 by an ulp


@register_method("rise")
class RISE(Method):
    """Options: ``num_masks`` N (4000), ``grid_size`` s (None = scaled to the explainee, see above),
    ``p`` (0.5), ``seed`` (0), ``batch_size`` (masked images per explainee forward, 64)."""

    summary = "N random masks on an s×s grid with random shifts, weighted by the class probability"
    cost = Cost.MANY_PASSES
    reference = "Petsiuk et al., BMVC 2018"

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        num_masks: int = 4000,
        grid_size: int | None = None,
        p: float = 0.5,
        seed: int = 0,
        batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        if num_masks < 1 or batch_size < 1:
            raise ExplainersError("rise needs num_masks ≥ 1 and batch_size ≥ 1")
        if not 0 < p <= 1:
            raise ExplainersError(f"rise keep probability p must be in (0, 1], got {p}")
        self.grid_size = default_grid_size(adapter) if grid_size is None else int(grid_size)
        if self.grid_size < 1:
            raise ExplainersError(f"rise grid_size must be ≥ 1, got {grid_size}")
        self.num_masks, self.p, self.seed, self.batch_size = num_masks, p, seed, batch_size
        self.masks = RiseMasks(num_masks, self.grid_size, p, adapter.image_size, seed)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "num_masks": self.num_masks,
            "grid_size": self.grid_size,
            "p": self.p,
            "seed": self.seed,
        }

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        assert classes is not None
        b = images.shape[0]
        per_chunk = max(1, self.batch_size // b)  # masks per chunk: b × per_chunk images per forward
        saliency = torch.zeros(b, *self.adapter.image_size, device=images.device)
        with torch.no_grad():
            for start in range(0, self.num_masks, per_chunk):
                masks = self.masks.chunk(
                    start, min(start + per_chunk, self.num_masks), images.device
                )  # n×H×W
                n = masks.shape[0]
                masked = (images[:, None] * masks[None, :, None]).flatten(0, 1)  # (b·n)×3×H×W, image-major
                probs = torch.cat(
                    [self.adapter.predict(part).softmax(-1) for part in masked.split(self.batch_size)]
                ).view(b, n, -1)
                scores = probs.gather(2, classes[:, None, None].expand(b, n, 1))[..., 0]  # b×n
                saliency += torch.einsum("bn,nhw->bhw", scores, masks)
        return saliency / (self.num_masks * self.p)
