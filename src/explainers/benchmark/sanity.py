"""The model-parameter randomisation test: do a method's maps depend on what the model learned?

A copy of the explainee gets its last ``k`` transformer blocks re-initialised
(:meth:`~explainers.models.base.ViTAdapterBase.randomized_copy`); the method explains the same images for
the same classes with both models, and each image's two maps are compared by their Spearman rank
correlation. A method whose maps barely change when the weights that produced the prediction are
destroyed is not explaining the model (it may be an edge detector, or a learned explainer that ignores
the explainee): it **fails** when the mean correlation is at least :data:`FAIL_AT`. Lower is better.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from explainers.methods import get_method
from explainers.methods.base import METHODS, Method
from explainers.models.base import ExplaineeAdapter
from explainers.models.signature import log as signature_log

#: Mean rank correlation at or above which a method fails the check (its maps survive randomisation).
FAIL_AT = 0.5


@contextlib.contextmanager
def _quiet_weight_mismatch():
    """No "made for other weights … used anyway" warning from the weights check while this runs."""
    level = signature_log.level
    signature_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        signature_log.setLevel(level)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1…n along the last dimension, ties sharing the mean of their ranks (float64, batched)."""
    x = values.reshape(-1, values.shape[-1]).double()
    rows, n = x.shape
    sorted_x, order = torch.sort(x, dim=1, stable=True)
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run = torch.cumsum(new_run.long(), dim=1) - 1 + torch.arange(rows, device=x.device)[:, None] * n
    position = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand(rows, n)
    total = torch.zeros(rows * n, dtype=torch.float64, device=x.device).index_add_(0, run.flatten(), position.flatten())
    count = torch.zeros(rows * n, dtype=torch.float64, device=x.device).index_add_(
        0, run.flatten(), torch.ones(rows * n, dtype=torch.float64, device=x.device)
    )
    mean_rank = (total / count.clamp_min(1))[run]
    ranks = torch.empty_like(mean_rank).scatter_(1, order, mean_rank)
    return ranks.reshape(values.shape)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (B×N → B; 0 for a
    constant row, whose ranks carry no order)."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(dim=1) / den.clamp_min(1e-300), torch.zeros_like(den))


def randomization_test(
    method: str | Callable[[ExplaineeAdapter], Method],
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    blocks: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Per-image Spearman correlation between the maps of ``adapter`` and of copies with the last ``k``
    blocks re-initialised, for each ``k`` in ``blocks`` (default: the last block, then all of them).

    ``method``: a registered name (built with ``options``) or a function building the method for a model.
    """
    options = dict(options or {})
    blocks = list(blocks) if blocks is not None else sorted({1, adapter.num_blocks})  # type: ignore[attr-defined]

    def build(model: ExplaineeAdapter, randomized: bool = False) -> Method:
        if not isinstance(method, str):
            return method(model)
        opts = dict(options)
        quiet: contextlib.AbstractContextManager = contextlib.nullcontext()
        # A learned explainer (pLTE/LTE) stays the one trained for the original weights: the check asks
        # whether its maps follow the model, so the fingerprint mismatch is intended here, and the loader's
        # "used anyway" warning (one per randomised copy and learned method) says nothing; the leaderboard
        # states it once.
        if randomized and "allow_other_weights" in inspect.signature(METHODS[method]).parameters:
            opts.setdefault("allow_other_weights", True)
            quiet = _quiet_weight_mismatch()
        with quiet:
            return get_method(method, model, **opts)

    # The same seed before both runs: a method that draws random numbers (RISE, random) draws the same ones.
    torch.manual_seed(seed)
    trained = build(adapter)(images, targets)
    out = {}
    for k in blocks:
        twin = adapter.randomized_copy(k, seed=seed)  # type: ignore[attr-defined]
        torch.manual_seed(seed)
        randomized = build(twin, randomized=True)(images, targets)
        out[int(k)] = spearman(trained, randomized).cpu().numpy()
    return out
