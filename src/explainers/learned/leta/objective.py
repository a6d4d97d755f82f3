"""LETA's pre-training objective: targets from the frozen encoder and the two-branch MSE
(docs/learned-explainers.md)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from explainers.learned.leta.windows import mask_pair
from explainers.models.base import ExplaineeAdapter


def sample_centres(batch: int, k: int, num_patches: int, generator: torch.Generator) -> torch.Tensor:
    """B×K window centres, uniform over the patches (with replacement, like K independent draws)."""
    return torch.randint(0, num_patches, (batch, k), generator=generator)


@torch.no_grad()
def compute_targets(
    encoder: ExplaineeAdapter,
    pixel_values: torch.Tensor,
    centres: torch.Tensor,
    windows: torch.Tensor,
    chunk: int = 1024,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """t⁺ = f(x ⊙ m_c) and t⁻ = f(x ⊙ (1 − m_c)), each B×K×D (float32), from normalised ``pixel_values``.

    All 2·B·K masked copies go through the encoder together (in chunks of ``chunk`` images).
    ``dtype=torch.bfloat16`` runs the encoder under autocast (faster on CPUs with AMX and on GPUs; the
    targets then carry bf16 rounding, far below the regression error).
    """
    b, k = centres.shape
    keep, drop = mask_pair(pixel_values, centres, windows, encoder.grid, encoder.patch_size)
    both = torch.cat([keep, drop])
    autocast = (
        torch.autocast(pixel_values.device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        out = torch.cat([encoder.cls_embedding(both[i : i + chunk]) for i in range(0, both.shape[0], chunk)])
    t_pos, t_neg = out.float().split(b * k)
    return t_pos.reshape(b, k, -1), t_neg.reshape(b, k, -1)


def gather_centres(psi: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """ψ (B×P×D) at the centres (B×K) → B×K×D."""
    return psi.gather(1, centres[..., None].expand(-1, -1, psi.shape[-1]))


def leta_loss(
    psi_pos: torch.Tensor,
    psi_neg: torch.Tensor,
    centres: torch.Tensor,
    t_pos: torch.Tensor,
    t_neg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, loss⁺, loss⁻) with loss = MSE(ψ⁺_c, t⁺) + MSE(ψ⁻_c, t⁻), each MSE a mean over B, K and D."""
    loss_pos = F.mse_loss(gather_centres(psi_pos, centres).float(), t_pos)
    loss_neg = F.mse_loss(gather_centres(psi_neg, centres).float(), t_neg)
    return loss_pos + loss_neg, loss_pos, loss_neg
