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
from explainers.learned.leta.explainer import HeadLike, LETAExplainer
from explainers.methods.base import Method, register_method
from explainers.models.base import ExplaineeAdapter, Targets, resolve_targets
from explainers.models.signature import require_vit


def shipped_explainer_dir() -> Path:
    """The LETA explainer pre-trained for the embedded explainee (``assets/leta``)."""
    return Path(str(resources.files("explainers") / "assets" / "leta"))


@register_method("leta")
class LETAMethod(Method):
    """LETA attributions a_c = λ⁺·h(ψ⁺_c)[ŷ] − λ⁻·h(ψ⁻_c)[ŷ], pooled, for the head ``head``."""

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        explainer: str | Path | LETAExplainer | None = None,
        head: HeadLike = None,
        lambda_pos: float = 1.0,
        lambda_neg: float = 1.0,
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
        self.class_names = self.head.class_names or adapter.class_names
        self.lambda_pos = float(lambda_pos)
        self.lambda_neg = float(lambda_neg)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "explainer": self.explainer_source,
            "head": self.head.source
            if self.head_spec is None or not isinstance(self.head_spec, (str, Path))
            else str(self.head_spec),
            "lambda_pos": self.lambda_pos,
            "lambda_neg": self.lambda_neg,
            "radius": self.explainer.radius,
        }

    @torch.no_grad()
    def head_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the explained head h(f(x)) for images at the explainee's size."""
        z = self.adapter.cls_embedding(self.adapter.normalize(images))
        return self.head.linear.to(z.device)(z.float())

    def predicted_classes(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_logits(images).argmax(dim=1)

    def predict_targets(self, images: torch.Tensor, targets: Targets) -> torch.Tensor:
        # ŷ comes from the explained head, which need not be the adapter's own classifier.
        return resolve_targets(targets, self.head_logits(images))

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        result = self.explainer.attribute(
            images, self.head.linear, targets, lambda_pos=self.lambda_pos, lambda_neg=self.lambda_neg
        )
        return result.maps  # B×gh×gw; the base class upsamples to the image size
