"""Random attribution: uniform noise, the floor every method must beat."""

from __future__ import annotations

from typing import Any

import torch

from explainers.methods.base import Cost, Method, register_method
from explainers.models.base import ExplaineeAdapter


@register_method("random")
class RandomAttribution(Method):
    summary = "uniform noise, the floor every method must beat"
    cost = Cost.FORWARD  # none of its own: the one forward finds the class the mask file records
    reference = "baseline"
    deterministic = False  # one generator for the method's life: each call draws new noise

    def __init__(self, adapter: ExplaineeAdapter, *, seed: int = 0, normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        b = images.shape[0]
        return torch.rand(b, *self.adapter.image_size, generator=self._generator).to(images.device)
