"""Random attribution: uniform noise, the floor every method must beat."""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods.base import Method, register_method


@register_method("random")
class RandomAttribution(Method):
    def __init__(self, adapter, *, seed: int = 0, normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        return torch.rand(b, *self.adapter.image_size, generator=self._generator).to(images.device)
