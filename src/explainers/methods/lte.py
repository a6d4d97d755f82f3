"""LTE: per-image refinement of a pre-trained LTE explainer, selected on POS-AUC (SPEC §3.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainers.errors import ExplainersError
from explainers.methods.base import Method, register_method
from explainers.methods.plte import resolve_explainer_dir
from explainers.models.base import ExplaineeAdapter


@register_method("lte")
class LTE(Method):
    """Refine the pLTE explainer on each image (``steps`` scored masks, AdamW at ``lr``), keep the mask with
    the best POS-AUC (``select=neg``: NEG-AUC), stop early below ``stop_below`` (NEG: above ``stop_above``).
    ``batch`` images are refined in parallel (``parallel=false``: the one-by-one loop), fewer at once when they
would not fit ``memory_budget`` (e.g. ``4GiB``; default: 80 % of the device's free memory). Unset options come
    from the checkpoint's config. Per image, ``selected_step`` (0 = the pLTE mask) and ``selected_score``
    go to ``last_extras`` (and so into the mask file).

    Note: LTE selects on the very metric it is evaluated with; report NEG, deletion/insertion and
    segmentation next to POS.
    """

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        explainer: str | Path | None = None,
        steps: int | None = None,
        lr: float | None = None,
        select: str | None = None,
        stop_below: float | None = None,
        stop_above: float | None = None,
        batch: int = 16,
        parallel: bool = True,
        memory_budget: str | int | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        from explainers.learned.lte.explainer import LTEExplainer
        from explainers.learned.lte.refine import _options

        self.explainer_dir = resolve_explainer_dir(adapter, explainer)
        self.explainer = LTEExplainer.from_pretrained(self.explainer_dir, explainee=adapter)
        # Validate now (a bad option should fail before the first batch) and record the effective values.
        self.options = _options(self.explainer.config, steps, lr, select, stop_below, stop_above)
        self.batch = int(batch)
        if self.batch < 1:
            raise ExplainersError(f"batch must be at least 1, got {batch}")
        self.parallel = bool(parallel)
        if memory_budget is not None:
            from explainers.devices import parse_bytes

            parse_bytes(memory_budget)  # a bad value fails before the first batch
        self.memory_budget = memory_budget
        self.last_extras: dict[str, np.ndarray] = {}

    def config(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().config(),
            "explainer": str(self.explainer_dir),
            "class_mode": self.explainer.config.class_mode,
            "steps": o.steps,
            "lr": o.lr,
            "weight_decay": o.weight_decay,
            "select": o.select,
            "stop_below": o.stop_below,
            "stop_above": o.stop_above,
        }

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        o = self.options
        result = self.explainer.refine(
            images,
            targets,
            steps=o.steps,
            lr=o.lr,
            select=o.select,
            stop_below=o.stop_below,
            stop_above=o.stop_above,
            batch_size=self.batch,
            parallel=self.parallel,
            memory_budget=self.memory_budget,
            return_details=True,
        )
        self.last_extras = {
            "selected_step": result.selected_step.numpy().astype(np.int32),
            "selected_score": result.selected_score.numpy().astype(np.float32),
        }
        return result.maps
