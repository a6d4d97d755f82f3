"""pLTE: one forward pass of a pre-trained LTE explainer (docs/learned-explainers.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from explainers.errors import ExplainersError
from explainers.learned.lte.explainer import LTEExplainer
from explainers.methods.base import Cost, Method, Need, register_method
from explainers.models.base import ExplaineeAdapter
from explainers.models.loading import EMBEDDED_EXPLAINEE


def resolve_explainer_dir(adapter: ExplaineeAdapter, explainer: str | Path | None) -> Path:
    """The checkpoint folder: as given, or the shipped one when explaining the embedded explainee."""
    if explainer is not None and str(explainer) != "embedded":
        return Path(explainer).expanduser()
    if adapter.identifier == EMBEDDED_EXPLAINEE or str(explainer) == "embedded":
        path = Path(str(resources.files("explainers") / "assets" / "plte"))
        if not (path / "config.json").is_file():
            raise ExplainersError(
                f"the shipped pLTE explainer is missing from the installation ({path}); "
                "pass --option explainer=DIR"
            )
        return path
    raise ExplainersError(
        f"LTE methods need a pre-trained explainer for {adapter.identifier}: pass --option explainer=DIR "
        "(made with `explainers pretrain lte`)"
    )


@register_method("plte")
class PLTE(Method):
    """Masks from a pre-trained LTE explainer (``explainer=DIR``; the shipped one for the embedded
    explainee). The masks of the reference explainer do not depend on the requested class: it was trained
    for one class convention (its ``class_mode``). One pre-trained with ``class_conditioned`` draws the
    requested class's mask."""

    summary = "pre-trained LTE explainer, one forward (`--explainer DIR`; shipped for `embedded`)"
    needs = frozenset({Need.VIT, Need.CHECKPOINT})
    cost = Cost.FORWARD
    reference = "Learning To Explain (LTE, later LTX): the pre-trained explainer"
    class_blind = True

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        explainer: str | Path | None = None,
        batch: int = 64,
        normalize: bool = True,
        allow_other_weights: bool = False,
    ) -> None:
        super().__init__(adapter, normalize=normalize)

        self.explainer_dir = resolve_explainer_dir(adapter, explainer)
        self.explainer = LTEExplainer.from_pretrained(
            self.explainer_dir, explainee=adapter, allow_other_weights=allow_other_weights
        )
        self.batch = int(batch)
        if self.batch < 1:
            raise ExplainersError(f"batch must be at least 1, got {batch}")

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "explainer": str(self.explainer_dir),
            "class_mode": self.explainer.config.class_mode,
        }

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        # A class-conditioned explainer draws the requested class's mask; the reference one ignores it.
        if not self.explainer.class_conditioned:
            classes = None
        return torch.cat(
            [
                self.explainer(images[i : i + self.batch], None if classes is None else classes[i : i + self.batch])
                for i in range(0, len(images), self.batch)
            ]
        )
