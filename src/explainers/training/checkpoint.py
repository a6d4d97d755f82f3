"""Checkpoint pieces every trainer shares: the training-state folder, and (re-exported from
:mod:`explainers.models.signature`, where loading needs it too) the one compatibility check between a
saved explainer/probe and the model it is used with. Resumed training runs apply that check without an
override.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from explainers.errors import ModelError
from explainers.models.signature import WeightsMismatchError, check_fingerprint  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ training state
STATE_DIR = "train_state"
STATE_WEIGHTS = "model.safetensors"
STATE_NAME = "state.pt"


def save_training_state(out: Path, model: torch.nn.Module, payload: dict[str, Any]) -> None:
    """Write a run's resumable state to ``out/train_state/``: ``model.safetensors`` (the weights) and
    ``state.pt`` (``payload``: optimiser and scheduler state, step, log, RNG…; tensors and plain values
    only, so that it reads back with ``weights_only=True``).

    Written to a fresh folder and swapped in with two renames: a crash leaves the old or the new state
    (between the renames, the old one as ``train_state.old``, which :func:`find_training_state` reads).
    """
    from safetensors.torch import save_model

    tmp, final, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / STATE_WEIGHTS))  # (handles weights that share storage)
    torch.save(payload, tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_training_state(out: Path) -> Path | None:
    """The folder of the last complete training state in ``out``, or None."""
    for name in (STATE_DIR, STATE_DIR + ".old"):
        folder = out / name
        if (folder / STATE_NAME).is_file() and (folder / STATE_WEIGHTS).is_file():
            return folder
    return None


def load_training_state(folder: Path, state_format: str, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights of a state written by :func:`save_training_state` into ``model`` and return its
    payload; a payload whose ``format`` is not ``state_format`` (another trainer's state) is refused."""
    from safetensors.torch import load_model

    payload = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    if payload.get("format") != state_format:
        raise ModelError(f"{folder} holds a {payload.get('format')!r} training state, not {state_format!r}")
    load_model(model, str(folder / STATE_WEIGHTS), strict=True, device=str(next(model.parameters()).device))
    return payload


def remove_training_state(out: Path) -> None:
    for name in (STATE_DIR, STATE_DIR + ".old", STATE_DIR + ".tmp"):
        shutil.rmtree(out / name, ignore_errors=True)
