"""Integrated Gradients (Sundararajan et al., 2017) in [0,1] image space, for any explainee.

attribution = (x − x') ⊙ ∫₀¹ ∇f(x' + α(x − x')) dα with the black baseline x' = 0 (in [0,1] space, the
same "removed" colour as the masking metrics), f = the target logit, the integral by a quadrature rule
over ``steps`` points (50 by default). The map sums the attribution over colour channels and takes the
absolute value (or, with ``sign="positive"``, the positive part).

The interpolated images go through the explainee in chunks sized to a memory budget: one probe forward
of a single image measures the activations autograd keeps per image (parameters excluded).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from explainers.errors import ExplainersError
from explainers.methods.base import Cost, Method, Need, register_method
from explainers.models.base import ExplaineeAdapter

Rule = Literal["gauss-legendre", "riemann-right", "riemann-middle", "riemann-trapezoid"]


def quadrature(steps: int, rule: Rule = "gauss-legendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Points α in [0,1] and weights (summing to 1) of ``rule`` with ``steps`` points."""
    if steps < 1:
        raise ExplainersError(f"integrated-gradients needs steps ≥ 1, got {steps}")
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1) / 2, weights / 2
    elif rule == "riemann-right":  # the IG paper's sum: α = k/m, k = 1..m
        alphas, weights = np.arange(1, steps + 1) / steps, np.full(steps, 1 / steps)
    elif rule == "riemann-middle":
        alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    elif rule == "riemann-trapezoid":
        if steps < 2:
            raise ExplainersError("the trapezoid rule needs steps ≥ 2")
        alphas = np.linspace(0, 1, steps)
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        raise ExplainersError(
            f"unknown quadrature rule {rule!r}; use gauss-legendre, riemann-right, riemann-middle or "
            "riemann-trapezoid"
        )
    return torch.as_tensor(alphas, dtype=torch.float32), torch.as_tensor(weights, dtype=torch.float32)


def activation_bytes_per_image(adapter: ExplaineeAdapter, image: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass of one image (parameters not counted)."""
    param_storages = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        try:
            if t.untyped_storage().data_ptr() not in param_storages:
                total += t.numel() * t.element_size()
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            total += t.numel() * t.element_size()
        return t

    x = image[:1].detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        adapter.predict(x)
    return max(total, 4 * x.numel())


def integrated_gradients(
    adapter: ExplaineeAdapter,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 50,
    rule: Rule = "gauss-legendre",
    baseline: float = 0.0,
    internal_batch_size: int = 16,
) -> torch.Tensor:
    """Per-pixel, per-channel IG attributions B×3×H×W (before any reduction).

    Completeness: the attributions sum to ``f(x) − f(x')`` for the target logit f, up to the error of
    the quadrature. (image, step) pairs go through the explainee ``internal_batch_size`` at a time.
    """
    alphas, weights = quadrature(steps, rule)
    alphas, weights = alphas.to(images.device), weights.to(images.device)
    b = images.shape[0]
    start = torch.full_like(images, baseline)
    delta = images - start
    image_idx = torch.arange(b, device=images.device).repeat_interleave(steps)
    step_idx = torch.arange(steps, device=images.device).repeat(b)
    total = torch.zeros_like(images)
    with torch.enable_grad():
        for lo in range(0, b * steps, internal_batch_size):
            bi, si = image_idx[lo : lo + internal_batch_size], step_idx[lo : lo + internal_batch_size]
            path = (start[bi] + alphas[si, None, None, None] * delta[bi]).requires_grad_(True)
            logits = adapter.predict(path)
            score = logits.gather(1, targets[bi, None]).sum()
            (grad,) = torch.autograd.grad(score, path)
            total.index_add_(0, bi, grad * weights[si, None, None, None])
    return delta * total


@register_method("integrated-gradients")
class IntegratedGradients(Method):
    """Options: ``steps`` (50), ``rule`` (quadrature, default Gauss–Legendre), ``sign`` ("abs" or
    "positive"), ``internal_batch_size`` (interpolated images per forward/backward; by default as many
    as fit in ``memory_budget_mb`` of saved activations, at most ``steps`` × batch)."""

    summary = "integrated gradients from a black baseline, 50 steps (Gauss–Legendre), |·| summed over channels"
    needs = frozenset({Need.GRADIENTS})
    cost = Cost.MANY_PASSES
    reference = "Sundararajan et al., ICML 2017"

    def __init__(
        self,
        adapter: ExplaineeAdapter,
        *,
        steps: int = 50,
        rule: Rule = "gauss-legendre",
        sign: Literal["abs", "positive"] = "abs",
        internal_batch_size: int | None = None,
        memory_budget_mb: float = 1024.0,
        normalize: bool = True,
    ) -> None:
        super().__init__(adapter, normalize=normalize)
        quadrature(steps, rule)  # validates
        if sign not in ("abs", "positive"):
            raise ExplainersError(f"integrated-gradients sign must be 'abs' or 'positive', got {sign!r}")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ExplainersError("internal_batch_size must be ≥ 1")
        self.steps, self.rule, self.sign = steps, rule, sign
        self.internal_batch_size = internal_batch_size
        self.memory_budget_mb = memory_budget_mb
        self._auto_batch: int | None = None

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "steps": self.steps,
            "rule": self.rule,
            "sign": self.sign,
            "baseline": "black",
        }

    def _chunk(self, images: torch.Tensor) -> int:
        if self.internal_batch_size is not None:
            return self.internal_batch_size
        if self._auto_batch is None:  # measured once per method: the explainee does not change
            per_image = activation_bytes_per_image(self.adapter, images)
            self._auto_batch = max(1, int(self.memory_budget_mb * 2**20 // per_image))
        return min(self._auto_batch, images.shape[0] * self.steps)

    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        assert classes is not None
        attributions = integrated_gradients(
            self.adapter,
            images,
            classes,
            steps=self.steps,
            rule=self.rule,
            internal_batch_size=self._chunk(images),
        ).sum(dim=1)
        return attributions.abs() if self.sign == "abs" else attributions.clamp_min(0)
