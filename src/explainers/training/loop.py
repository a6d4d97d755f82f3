"""What every trainer shares: processes and devices, precision, the optimiser step, collectives, the
non-finite-loss guard and the progress bar.

A learner (pLTE, LETA, ...) keeps only what is its own — how a batch becomes a loss, and how it is
validated — and runs its steps through one :class:`Runtime`:

* device placement through ``accelerate`` (CUDA when available, else CPU; one process, or DDP when
  launched by ``accelerate launch`` / ``torchrun``; accelerate also pins each process to its own GPU);
* ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast around the forward; the weights and the
  optimiser stay float32; fp16 scales the loss against underflow);
* gradient accumulation: :meth:`Runtime.accumulate` skips the DDP all-reduce on all but the last
  micro-batch of a step;
* every collective moves its tensor to the process's own device first (NCCL refuses CPU tensors);
* a loss that is NaN or infinite stops training with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from explainers.data.base import as_geometry
from explainers.data.loader import BatchLoader
from explainers.errors import ExplainersError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(ExplainersError):
    """Training produced a NaN or infinite loss: stopped before it could corrupt the weights."""


def check_finite(value: float, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` when ``value`` is NaN or ±inf (one clear line for the CLI)."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the training {what} became {value} at step {step}; training stopped (the last good state is "
            "kept). Lower lr, use precision fp32, or check the data for broken images"
        )


def validate_device(name: str) -> str:
    """``auto``, ``cpu`` or ``cuda``; ``cuda`` on a machine without CUDA is a one-line error."""
    if name not in DEVICES:
        raise ExplainersError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ExplainersError("device 'cuda' was asked for, but this machine has no usable CUDA GPU")
    return name


class Runtime:
    """One training process: its rank, device, precision and the collectives between processes."""

    def __init__(self, device: str = "auto", precision: str = "fp32") -> None:
        from accelerate import Accelerator

        validate_device(device)
        if precision not in PRECISIONS:
            raise ExplainersError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        # Precision is applied here (autocast), not through accelerate's process-wide setting, which
        # cannot change between two runs in one Python process.
        self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        self.precision = precision
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ExplainersError("precision bf16 needs a GPU with bfloat16 support; use fp16 or fp32")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    # ------------------------------------------------------------------ who and where
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run the training forward through (DDP-wrapped with several processes)."""
        return self.accelerator.prepare_model(model)

    # ------------------------------------------------------------------ the step
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @contextlib.contextmanager
    def accumulate(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Backward of a micro-batch: gradients are only all-reduced on the ``last`` one of a step."""
        if last or self.world == 1:
            yield
        else:
            with self.accelerator.no_sync(model):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], grad_clip: float | None
    ) -> None:
        """Unscale, clip, step, zero the gradients (fp16 steps with inf/NaN gradients are skipped)."""
        if grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ collectives
    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes, computed on this process's device; returned on the CPU."""
        values = values.detach().to(self.device)
        if self.world > 1:
            values = self.accelerator.reduce(values, reduction="sum")
        return values.cpu()

    def reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.reduce_sum(values) / self.world

    def gather(self, values: list[float]) -> list[float]:
        """Every process's list, concatenated in rank order."""
        if self.world == 1:
            return list(values)
        from accelerate.utils import gather_object

        return list(gather_object(list(values)))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ reporting
    def progress(self, total: int, initial: int, desc: str, enabled: bool = True) -> Any:
        """A tqdm bar shown on the main process only."""
        return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not (enabled and self.main))


def load_images(
    dataset: Any, indices: list[int], size: Any, workers: int | None = None, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``dataset[indices]`` into memory (images N×3×H×W in [0, 1], labels, ids), in order, through
    the shared :class:`~explainers.data.loader.BatchLoader` with ``workers`` decoding processes (None: the
    loader's default; 0: in this process). ``size``: a (height, width) or the model's
    ``adapter.input_geometry`` (its own resize and crop)."""
    if not indices:
        return torch.empty(0, 3, *as_geometry(size).size), torch.empty(0, dtype=torch.long), []
    batches = [list(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)]
    images, labels, ids = [], [], []
    for batch in BatchLoader(dataset, batches, size, workers=workers):
        images.append(batch.images)
        labels.append(batch.labels)
        ids += batch.ids
    return torch.cat(images), torch.cat(labels), ids
