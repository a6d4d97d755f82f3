"""Shared pieces of the attention-based ViT methods: the token-layout check, CLS-row slicing, rollout math."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from explainers.errors import ExplainersError, ModelError
from explainers.methods.base import Method, Need
from explainers.models.base import ExplaineeAdapter


class AttentionMethod(Method):
    """Base of the methods that read a ViT's attention (or its relevance): checks the token layout. They
    run the explainee on the clean images anyway, so :meth:`attribute` takes the predicted class from that
    forward (``classes`` None) and returns its logits."""

    needs: ClassVar[frozenset[Need]] = frozenset({Need.ATTENTION})
    forwards_explainee: ClassVar[bool] = True

    def __init__(self, adapter: ExplaineeAdapter, *, normalize: bool = True) -> None:
        super().__init__(adapter, normalize=normalize)
        if adapter.num_prefix_tokens < 1:
            raise ExplainersError(
                f"method {self.name!r} reads the class token's row, but explainee {adapter.identifier} "
                "has no class token; use a model-agnostic method (integrated-gradients, rise)"
            )

    def cls_patches(self, matrix: torch.Tensor) -> torch.Tensor:
        """B×T×T (or B×heads×T×T) token matrix → the CLS row's patch columns, B×P (or B×heads×P).

        The CLS token is token 0 for every supported layout (CLS, then distillation/register tokens);
        the patch columns are those after ``num_prefix_tokens``, in row-major grid order.
        """
        return matrix[..., 0, self.adapter.num_prefix_tokens :]


def check_start_layer(adapter: ExplaineeAdapter, start_layer: int, method: str, blocks: int | None = None) -> int:
    """``start_layer`` as a block index the product can start at (0 = the first block).

    ``blocks``: the number of blocks, if known; else taken from the adapter's parts where it has them
    (rollout needs only attention maps, so an explainee without parts is checked against its maps later).
    """
    if blocks is None:
        try:
            blocks = len(adapter.parts().blocks)
        except ModelError:
            blocks = None
    valid = not isinstance(start_layer, bool) and isinstance(start_layer, int) and start_layer >= 0
    if not valid or (blocks is not None and start_layer >= blocks):
        allowed = "≥ 0" if blocks is None else f"in 0..{blocks - 1}"
        raise ExplainersError(f"{method}: start_layer must be an integer block index {allowed}, got {start_layer!r}")
    return start_layer


def rollout(
    matrices: Sequence[torch.Tensor], *, add_identity: bool = True, normalize_rows: bool = True
) -> torch.Tensor:
    """Product of per-block token-mixing matrices, first block applied first: M_L ⋯ M_1.

    ``matrices``: per block B×T×T (already averaged over heads). Each becomes ``A + I`` when
    ``add_identity`` (the residual connection), with rows rescaled to sum to 1 when ``normalize_rows``
    (attention rollout); Transformer Attribution and GAE use ``I + Ā`` without normalisation.
    Returns the B×T×T joint matrix: row i says how output token i draws on the input tokens.
    """
    if not matrices:
        raise ExplainersError("rollout needs at least one block")
    joint: torch.Tensor | None = None
    for mat in matrices:
        if add_identity:
            mat = mat + torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)
        if normalize_rows:
            mat = mat / mat.sum(dim=-1, keepdim=True)
        joint = mat if joint is None else mat @ joint
    assert joint is not None
    return joint
