"""LETA as a registered method: a pre-trained generic explainer + the transfer rule (docs/learned-explainers.md).

``get_method("leta", adapter, explainer=DIR, head=PROBE_DIR)``; on the command line
``--method leta --option explainer=DIR --option head=PROBE_DIR``. Without ``explainer`` the explainer
shipped for the embedded explainee is used (when the adapter is that encoder); without ``head`` the
adapter's own classifier is explained — with a probe explainee (``probe:DIR``) that is the probe.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from explainers.errors import ExplainersError
from explainers.learned.leta.explainer import HeadLike, LETAExplainer, check_pool_radius
from explainers.methods.base import Attribution, Cost, Method, Need, register_method
from explainers.models.base import ExplaineeAdapter
from explainers.models.signature import require_vit


def shipped_explainer_dir() -> Path:
    """The LETA explainer pre-trained for the embedded explainee (``assets/leta``)."""
    return Path(str(resources.files("explainers") / "assets" / "leta"))


@register_method("leta")
class LETAMethod(Method):
    """LETA attributions a_c = λ⁺·h(ψ⁺_c)[ŷ] − λ⁻·h(ψ⁻_c)[ŷ], pooled, for the head ``head``.

    ``pool_radius``: the mean pool's radius in patches (default: the explainer's window radius, as the
    reference; 0: no pooling).

    The explained head need not be the adapter's classifier: the predicted class ŷ, the clean logits and
    the class names are the head's, from the encoder forward the transfer rule runs anyway."""

    summary = "pre-trained LETA explainer + transfer rule for any linear head (`--explainer DIR --head PROBE`)"
    needs = frozenset({Need.VIT, Need.CHECKPOINT})
    cost = Cost.FEW_PASSES
    reference = "Learning Transferable Attribution (LETA, later GRIVE/TVE)"
    forwards_explainee = True

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        explainer: str | Path | LETAExplainer | None = None,
        head: HeadLike = None,
        lambda_pos: float = 1.0,
        lambda_neg: float = 1.0,
        pool_radius: int | str | None = None,
        normalize: bool = True,
        allow_other_weights: bool = False,
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        require_vit(adapter, "method 'leta'")
        if isinstance(explainer, LETAExplainer):
            self.explainer = explainer
            self.explainer_source = "LETAExplainer object"
        else:
            path = Path(explainer).expanduser() if explainer is not None else shipped_explainer_dir()
            if explainer is None and not (path / "config.json").exists():
                raise ExplainersError(
                    "no LETA explainer given and none is shipped for this installation; pre-train one with "
                    "`explainers pretrain leta --encoder SPEC --data KIND:PATH --out DIR` and pass "
                    "--option explainer=DIR"
                )
            # The explainer is bound to this adapter: it refuses one pre-trained for another encoder.
            # (allow_other_weights: the randomisation sanity check keeps it on a re-initialised copy.)
            self.explainer = LETAExplainer.from_pretrained(
                path, encoder=adapter, allow_other_weights=allow_other_weights
            )
            self.explainer_source = str(path)
        self.explainer.network.to(adapter.device)
        self.head_spec = head
        self.head = self.explainer.resolve_head(head)
        self.lambda_pos = float(lambda_pos)
        self.lambda_neg = float(lambda_neg)
        # None: pool over the explainer's own window (the reference); 0: no pooling (sharper patch maps).
        self.pool_radius = None if pool_radius is None else check_pool_radius(pool_radius)

    def config(self) -> dict[str, Any]:
        # pool_radius only when given: the default's config (recorded in mask files) stays as it was.
        pooling = {} if self.pool_radius is None else {"pool_radius": self.pool_radius}
        return {
            **super().config(),
            "explainer": self.explainer_source,
            "head": self.head.source
            if self.head_spec is None or not isinstance(self.head_spec, (str, Path))
            else str(self.head_spec),
            "lambda_pos": self.lambda_pos,
            "lambda_neg": self.lambda_neg,
            "radius": self.explainer.radius,
            **pooling,
        }

    @property
    def num_classes(self) -> int:
        return int(self.head.linear.out_features)

    @property
    def class_names(self) -> list[str] | None:
        return self.head.class_names or self.adapter.class_names

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> Attribution:
        result = self.explainer.attribute(
            images,
            self.head.linear,
            classes,
            lambda_pos=self.lambda_pos,
            lambda_neg=self.lambda_neg,
            pool_radius=self.pool_radius,
        )
        # maps: B×gh×gw; the base upsamples them to the image size
        return Attribution(maps=result.maps, logits=result.logits, classes=result.targets)
