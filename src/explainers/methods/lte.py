"""LTE: per-image refinement of a pre-trained LTE explainer, selected on POS-AUC (docs/learned-explainers.md).

Classes, as in the reference: each image is refined towards the class its pLTE checkpoint was trained
for (``class_mode`` in the checkpoint's config: ``target`` → the ground-truth label, ``predicted`` → the
explainee's argmax), and the refinement steps are scored for selection on the ground truth where the
image has a label (``select_class="target"``; the prediction for unlabelled images), or on the
prediction (``select_class="predicted"``). ``refine_class`` overrides the checkpoint's class (a
deviation from the reference, recorded in the mask file). The mask file's class convention is the
refinement class; per image, ``selected_class`` records the class the step was selected on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from explainers.devices import parse_bytes
from explainers.errors import ExplainersError
from explainers.learned.lte.explainer import LTEExplainer
from explainers.learned.lte.refine import _options, refine_images
from explainers.methods.base import Method, register_method
from explainers.methods.plte import resolve_explainer_dir
from explainers.models.base import ExplaineeAdapter, Targets


@register_method("lte")
class LTE(Method):
    """Refine the pLTE explainer on each image (``steps`` scored masks, AdamW at ``lr``), keep the mask with
    the best POS-AUC (``select=neg``: NEG-AUC), stop early below ``stop_below`` (NEG: above ``stop_above``).
    ``batch`` images are refined in parallel (``parallel=false``: the one-by-one loop), fewer at once when they
    would not fit ``memory_budget`` (e.g. ``4GiB``; default: 80 % of the device's free memory). Unset options
    come from the checkpoint's config. Per image, ``selected_step`` (0 = the pLTE mask), ``selected_score`` and
    ``selected_class`` (the class the step was selected on) go to ``last_extras`` (and so into the mask
    file). ``refine_class``: ``target`` or ``predicted`` (default: the checkpoint's ``class_mode``);
    ``select_class``: ``target`` (ground truth where known, default) or ``predicted``.

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
        refine_class: str | None = None,
        select_class: str = "target",
        normalize: bool = True,
        allow_other_weights: bool = False,
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        self.explainer_dir = resolve_explainer_dir(adapter, explainer)
        self.explainer = LTEExplainer.from_pretrained(
            self.explainer_dir, explainee=adapter, allow_other_weights=allow_other_weights
        )
        # Validate now (a bad option should fail before the first batch) and record the effective values.
        self.options = _options(self.explainer.config, steps, lr, select, stop_below, stop_above)
        self.batch = int(batch)
        if self.batch < 1:
            raise ExplainersError(f"batch must be at least 1, got {batch}")
        self.parallel = bool(parallel)
        if memory_budget is not None:
            parse_bytes(memory_budget)  # a bad value fails before the first batch
        self.memory_budget = memory_budget
        mode = self.explainer.config.class_mode
        self.refine_class = mode if refine_class is None else refine_class
        for name, value in (("refine_class", self.refine_class), ("select_class", select_class)):
            if value not in ("target", "predicted"):
                raise ExplainersError(f"lte: {name} must be target or predicted, got {value!r}")
        self.select_class = select_class
        self.last_extras: dict[str, np.ndarray] = {}
        self._labels: torch.Tensor | None = None

    #: ``explain`` passes the ground-truth labels (``labels=``) so that steps are selected on them.
    reads_labels = True

    @property
    def class_convention(self) -> str:
        """The class the maps explain: the refinement class (``explain``'s default ``--class``)."""
        return self.refine_class

    @property
    def class_convention_hint(self) -> str:
        source = (
            f"its pLTE checkpoint {self.explainer_dir} was trained for (class_mode)"
            if self.refine_class == self.explainer.config.class_mode
            else "given by refine_class"
        )
        other = "predicted" if self.refine_class == "target" else "target"
        return (
            f": LTE refines towards the class {source}; to refine towards the {other} class instead "
            f"(not the reference protocol) pass --option refine_class={other}"
        )

    def config(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().config(),
            "explainer": str(self.explainer_dir),
            "class_mode": self.explainer.config.class_mode,
            "refine_class": self.refine_class,
            "select_class": self.select_class,
            "steps": o.steps,
            "lr": o.lr,
            "weight_decay": o.weight_decay,
            "select": o.select,
            "stop_below": o.stop_below,
            "stop_above": o.stop_above,
        }

    def __call__(
        self, images: torch.Tensor, targets: Targets = None, *, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Maps refined towards ``targets``. ``labels``: the ground-truth class per image (-1 = unknown),
        which steps are selected on (``select_class=target``; without labels, the selection falls back to
        the prediction) and, when ``targets`` is None and the refinement class is ``target``, refined
        towards. Otherwise ``targets`` None refines towards the predicted class, like every method."""
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if labels.shape[0] != images.shape[0]:
                raise ExplainersError(
                    f"lte: {labels.shape[0]} labels for {images.shape[0]} images; pass one label per image"
                )
            if targets is None and self.refine_class == "target":
                if bool((labels < 0).any()):
                    raise ExplainersError(
                        "lte refines towards the ground-truth class (refine_class=target) but some images "
                        "have no label; pass targets, or refine_class=predicted"
                    )
                targets = labels
        self._labels = labels
        try:
            return super().__call__(images, targets)
        finally:
            self._labels = None

    def _selection_classes(self, images: torch.Tensor) -> torch.Tensor:
        """Ground truth where known (``select_class=target``), else the explainee's prediction."""
        with torch.no_grad():
            predicted = self.adapter.predict(images).argmax(dim=1)
        if self.select_class == "predicted" or self._labels is None:
            return predicted
        labels = self._labels.to(predicted.device)
        return torch.where(labels >= 0, labels, predicted)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        o = self.options
        select = self._selection_classes(images)
        result = refine_images(
            self.explainer,
            images,
            targets,
            select_targets=select,
            steps=o.steps,
            lr=o.lr,
            select=o.select,
            stop_below=o.stop_below,
            stop_above=o.stop_above,
            batch_size=self.batch,
            parallel=self.parallel,
            memory_budget=self.memory_budget,
        )
        self.last_extras = {
            "selected_step": result.selected_step.numpy().astype(np.int32),
            "selected_score": result.selected_score.numpy().astype(np.float32),
            "selected_class": select.cpu().numpy().astype(np.int64),
        }
        return result.maps
