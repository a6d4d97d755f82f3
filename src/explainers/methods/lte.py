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
from explainers.methods.base import Attribution, BatchInputs, Cost, Method, Need, register_method
from explainers.methods.plte import resolve_explainer_dir
from explainers.models.base import ExplaineeAdapter, Targets


@register_method("lte")
class LTE(Method):
    """Refine the pLTE explainer on each image (``steps`` scored masks, AdamW at ``lr``), keep the mask with
    the best POS-AUC (``select=neg``: NEG-AUC), stop early below ``stop_below`` (NEG: above ``stop_above``).
    ``batch`` images are refined in parallel (``parallel=false``: the one-by-one loop), fewer at once when they
    would not fit ``memory_budget`` (e.g. ``4GiB``; default: 80 % of the device's free memory). Unset options
    come from the checkpoint's config. Per image, ``selected_step`` (0 = the pLTE mask), ``selected_score`` and
    ``selected_class`` (the class the step was selected on) are the explanation's extras (and so go into the
    mask file). ``refine_class``: ``target`` or ``predicted`` (default: the checkpoint's ``class_mode``);
    ``select_class``: ``target`` (ground truth where known, default) or ``predicted``.

    ``explain(images, targets, labels=...)``: ``labels`` is the ground-truth class per image (-1 = unknown),
    which steps are selected on (``select_class=target``; without labels, the selection falls back to the
    prediction) and, when ``targets`` is None and the refinement class is ``target``, refined towards.
    Otherwise ``targets`` None refines towards the predicted class, like every method.

    Note: LTE selects on the very metric it is evaluated with; report NEG, deletion/insertion and
    segmentation next to POS.
    """

    summary = "pLTE refined per image, ≤ 25 steps, the best POS-AUC step kept, batched with `torch.func`"
    needs = frozenset({Need.VIT, Need.GRADIENTS, Need.CHECKPOINT})
    cost = Cost.MANY_PASSES
    reference = "Learning To Explain (LTE, later LTX): per-image refinement"

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

    def default_targets(self, labels: torch.Tensor | None) -> Targets:
        """Refining towards the ground truth (``refine_class=target``): the labels, which every image needs."""
        if labels is None or self.refine_class != "target":
            return None
        if bool((labels < 0).any()):
            raise ExplainersError(
                "lte refines towards the ground-truth class (refine_class=target) but some images "
                "have no label; pass targets, or refine_class=predicted"
            )
        return labels

    def attribute_batch(self, inputs: BatchInputs) -> Attribution:
        o = self.options
        # The base's clean forward (explain, or no class given); the short form with classes skips it.
        logits = inputs.logits if inputs.logits is not None else self.clean_logits(inputs.images)
        predicted = logits.argmax(dim=1)
        classes = inputs.classes if inputs.classes is not None else predicted
        # Steps are selected on the ground truth where known (select_class=target), else the prediction.
        select = predicted
        if self.select_class == "target" and inputs.labels is not None:
            select = torch.where(inputs.labels >= 0, inputs.labels, predicted)
        result = refine_images(
            self.explainer,
            inputs.images,
            classes,
            select_targets=select,
            clean_logits=logits,
            steps=o.steps,
            lr=o.lr,
            select=o.select,
            stop_below=o.stop_below,
            stop_above=o.stop_above,
            batch_size=self.batch,
            parallel=self.parallel,
            memory_budget=self.memory_budget,
        )
        extras = {
            "selected_step": result.selected_step.numpy().astype(np.int32),
            "selected_score": result.selected_score.numpy().astype(np.float32),
            "selected_class": select.cpu().numpy().astype(np.int64),
        }
        return Attribution(maps=result.maps, extras=extras)
