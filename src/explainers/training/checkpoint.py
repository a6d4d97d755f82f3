"""Checkpoint pieces every trainer shares: the training-state folder, the output lock and the data digest.
The one compatibility check between a saved explainer/probe and the model it is used with lives in
:mod:`explainers.models.signature` (loading needs it too); resumed training runs apply it without an
override.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model

from explainers.errors import ModelError, OutputError, describe_os_error
from explainers.io.atomic import fsync_path
from explainers.io.lock import OutputLock

log = logging.getLogger(__name__)


def pixel_digest(*images: torch.Tensor) -> str:
    """SHA-256 of images in [0, 1] quantised to 8 bits: what a resumed run compares to be sure it trains
    on the pixels of the interrupted one (ids alone do not tell a regenerated dataset apart)."""
    digest = hashlib.sha256()
    for x in images:
        digest.update(str(tuple(x.shape)).encode())
        digest.update((x.detach().cpu().float() * 255).round().to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ training state
STATE_DIR = "train_state"
STATE_WEIGHTS = "model.safetensors"
STATE_NAME = "state.pt"


def save_training_state(out: Path, model: torch.nn.Module, payload: dict[str, Any]) -> None:
    """Write a run's resumable state to ``out/train_state/``: ``model.safetensors`` (the weights) and
    ``state.pt`` (``payload``: optimiser and scheduler state, step, log, RNG…; tensors and plain values
    only, so that it reads back with ``weights_only=True``).

    Written to a fresh folder, flushed and read back, then swapped in with two renames: a crash leaves
    the old or the new state (between the renames, the old one as ``train_state.old``, which
    :func:`find_training_state` reads). A failed write (a full disk) raises :class:`OutputError` and
    leaves the previous state as it was.
    """
    tmp, final, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / STATE_WEIGHTS))  # (handles weights that share storage)
        torch.save(payload, tmp / STATE_NAME)
        for name in (STATE_WEIGHTS, STATE_NAME):
            fsync_path(tmp / name)
        load_file(str(tmp / STATE_WEIGHTS))  # reads back: a cut file fails here, not at the resume
        torch.load(tmp / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(
            f"cannot write the training state in {out}: {describe_os_error(exc)}; the previous state "
            "was kept"
        ) from exc
    try:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError as exc:
        raise OutputError(f"cannot write the training state in {out}: {describe_os_error(exc)}") from exc
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_lock(out: Path, main: bool = True) -> Iterator[None]:
    """Hold ``out``'s lock (``.NAME.lock`` beside it) on the main process of a run: a second run on the
    same output is refused in one line; a lock left by a crashed run is recognised and taken over."""
    if not main:
        yield
        return

    with OutputLock(out):
        yield


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
    payload = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    if payload.get("format") != state_format:
        raise ModelError(
            f"{folder} holds a {payload.get('format')!r} training state, not {state_format!r} (another trainer's, "
            "or one from an older version); pick another --out, or delete that folder to start over"
        )
    load_model(model, str(folder / STATE_WEIGHTS), strict=True, device=str(next(model.parameters()).device))
    return payload


def remove_training_state(out: Path) -> None:
    for name in (STATE_DIR, STATE_DIR + ".old", STATE_DIR + ".tmp"):
        shutil.rmtree(out / name, ignore_errors=True)
