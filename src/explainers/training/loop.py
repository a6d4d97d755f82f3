"""The one training loop of every trainer (pLTE, LETA, the linear probes, the small classifier).

A learner keeps only what is its own — how a step turns data into an update, and how an epoch is
validated — and :class:`TrainingLoop` does the rest:

* processes and devices (:class:`Runtime`, through ``accelerate``): CUDA when available, else CPU; one
  process, or DDP under ``accelerate launch`` / ``torchrun`` with each process on its own GPU and every
  collective on the process's device (NCCL refuses CPU tensors);
* ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast around the forward; the weights and the
  optimiser stay float32; fp16 scales the loss against underflow);
* gradient accumulation (:meth:`TrainingLoop.gradient_step`: the DDP all-reduce only on the last
  micro-batch of a step);
* a loss that is NaN or infinite on any process stops every process with :class:`NonFiniteLossError`;
* exact resume: the training state (weights, optimiser, scheduler, fp16 loss scale, RNG, step, the
  learner's own state such as its data order or generator) is saved every ``checkpoint_every`` steps and
  at every epoch end; a run killed at any point and rerun ends as an uninterrupted one;
* the JSONL log (kept in step with the training state: a resumed run drops the lines written after
  the state it restarts from) and the learner's plot of it; a progress bar on the main process only;
* Ctrl-C (one process) finishes the current step, saves the state and stops; a second Ctrl-C stops at once.

A learner whose step is not a gradient step (the probes' full-batch L-BFGS fit) runs its own
optimiser inside :meth:`Learner.train_step` and still gets resume, logging, devices and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from explainers.data.base import as_geometry
from explainers.data.loader import BatchLoader
from explainers.devices import resolve_device
from explainers.errors import ExplainersError, OutputError, describe_os_error
from explainers.io.atomic import write_text_atomic
from explainers.training.checkpoint import (
    STATE_NAME,
    find_training_state,
    load_training_state,
    remove_training_state,
    save_training_state,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
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


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ExplainersError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


class Runtime:
    """One training process: its rank, device, precision and the collectives between processes."""

    def __init__(self, device: str = "auto", precision: str = "fp32") -> None:
        from accelerate import Accelerator


        resolved = resolve_device(device)  # the one device check: unknown or absent devices are one line
        check_precision(precision)
        # Precision is applied here (autocast), not through accelerate's process-wide setting, which
        # cannot change between two runs in one Python process.
        self.accelerator = Accelerator(cpu=resolved.type == "cpu")
        # One process runs where it was asked (e.g. cuda:1); several are placed by accelerate, one per GPU.
        self._device = resolved if self.accelerator.num_processes == 1 else None
        self.precision = precision
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ExplainersError("precision bf16 needs a GPU with bfloat16 support; use fp16 or fp32")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    # ------------------------------------------------------------------ who and where
    @property
    def device(self) -> torch.device:
        return getattr(self, "_device", None) or self.accelerator.device

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
        if self.world == 1:
            return model
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


# ------------------------------------------------------------------------------------------------ the loop
class Learner:
    """What one trainer owns. Subclasses set :attr:`state_format`, :attr:`model` (the weights saved in
    the training state), :attr:`optimizer` and :attr:`scheduler` (None when they have none) and
    implement :meth:`train_step`; the other hooks are optional."""

    state_format: str = "explainers-train-state"
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    #: Human name for messages ("pLTE pre-training").
    name: str = "training"

    def train_step(self, loop: TrainingLoop, step: int, epoch: int, index: int) -> None:
        """Optimiser step ``step`` (0-based over the run; ``index`` within ``epoch``). Gradient learners
        call :meth:`TrainingLoop.gradient_step` and :meth:`TrainingLoop.optimizer_step`."""
        raise NotImplementedError

    def start(self, loop: TrainingLoop, resumed: bool) -> None:
        """After the state is loaded (or not), before the first step (e.g. score the untrained model)."""

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, step: int) -> None:
        """Epoch ``epoch`` (1-based) ended after ``step`` steps: validate, log, keep the best."""

    def state_dict(self) -> dict[str, Any]:
        """The learner's own resumable state (tensors and plain values), at a step boundary."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def check_resume(self, saved: dict[str, Any]) -> None:
        """Refuse a saved state made for another model, other data or other settings (raise)."""

    def plot(self, log_path: Path, out: Path) -> None:
        """Draw the log (main process; failures are logged, never fatal)."""


class TrainingLoop:
    """Run a :class:`Learner` for ``total_steps`` optimiser steps of ``steps_per_epoch`` each, writing
    into ``out``: ``train_state/`` (see :mod:`explainers.training.checkpoint`) and ``log_name``.

    ``checkpoint_every``: also save the state every N steps (epoch ends always save). ``stop_after``:
    stop, resumably, after N steps in this call. ``on_step(step)``: called after every step (and its
    checkpoint, if any). ``resume``: False starts over, deleting an old state and log."""

    def __init__(
        self,
        runtime: Runtime,
        out: Path,
        *,
        total_steps: int,
        steps_per_epoch: int,
        log_name: str = "log.jsonl",
        checkpoint_every: int = 0,
        progress: bool = True,
        unit: str = "step",
        resume: bool = True,
        stop_after: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if steps_per_epoch < 1 or total_steps < 0:
            raise ExplainersError("a training run needs at least one step per epoch")
        self.runtime = runtime
        self.out = Path(out)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.log_path = self.out / log_name
        self.checkpoint_every = checkpoint_every
        self.show_progress = progress
        self.unit = unit
        self.resume = resume
        self.stop_after = stop_after
        self.on_step = on_step
        self.step = 0  # optimiser steps done
        self.resumed = False
        self.elapsed_s = 0.0
        self._log_count = 0
        self._bar: Any = None
        self._stop_requested = False

    # ------------------------------------------------------------------ who and where
    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def main(self) -> bool:
        return self.runtime.main

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.runtime.autocast()

    # ------------------------------------------------------------------ the gradient step
    def gradient_step(
        self,
        forward_model: torch.nn.Module,
        micro_batches: Sequence[Any],
        loss_of: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Forward and backward of every micro-batch (gradients accumulate; under DDP only the last one
        all-reduces). ``loss_of(micro)`` returns (the loss to back-propagate, a 1-D tensor of figures to
        log); it runs its forward under :meth:`autocast` itself. Returns the summed figures (float64, on
        the training device)."""
        sums: torch.Tensor | None = None
        for j, micro in enumerate(micro_batches):
            with self.runtime.accumulate(forward_model, last=j == len(micro_batches) - 1):
                loss, figures = loss_of(micro)
                self.runtime.backward(loss.float())
            figures = figures.detach().double()
            sums = figures if sums is None else sums + figures
        assert sums is not None, "a step needs at least one micro-batch"
        return sums

    def optimizer_step(
        self, loss_value: float, params: Sequence[torch.nn.Parameter], grad_clip: float | None = None
    ) -> None:
        """Stop on a non-finite loss (on every process when any has one), else unscale, clip, step the
        optimiser and the scheduler and zero the gradients."""
        self.check_finite(loss_value)
        learner = self._learner
        assert learner.optimizer is not None
        self.runtime.step(learner.optimizer, list(params), grad_clip)
        if learner.scheduler is not None:
            learner.scheduler.step()

    def check_finite(self, loss_value: float) -> None:
        if self.runtime.world > 1:  # every process stops together instead of hanging in a collective
            bad = self.runtime.reduce_sum(torch.tensor([0.0 if math.isfinite(loss_value) else 1.0]))
            if bad.item() > 0 and math.isfinite(loss_value):
                loss_value = math.nan
        check_finite(loss_value, self.step + 1)

    # ------------------------------------------------------------------ log
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON record to the log (the main process writes; every process counts)."""
        self._log_count += 1
        if self.main:
            try:
                with self.log_path.open("a") as fh:
                    fh.write(json.dumps(record, sort_keys=True) + "\n")
            except OSError as exc:
                raise OutputError(f"cannot write {self.log_path}: {describe_os_error(exc)}") from exc

    def records(self) -> list[dict[str, Any]]:
        """The log so far (main process)."""
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def write(self, text: str) -> None:
        """A line under the progress bar (main process only)."""
        if self.main and self.show_progress and self._bar is not None:
            self._bar.write(text)
        elif self.main and self.show_progress:
            print(text)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def _keep_log_lines(self, count: int) -> None:
        """Keep the first ``count`` lines: those written before the state a resumed run restarts from."""
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
        write_text_atomic(self.log_path, "".join(ln + "\n" for ln in lines[:count]))

    # ------------------------------------------------------------------ state
    def _payload(self) -> dict[str, Any]:
        learner = self._learner
        return {
            "format": learner.state_format,
            "step": self.step,
            "log_count": self._log_count,
            "elapsed_s": self.elapsed_s,
            "world_size": self.runtime.world,
            "optimizer": None if learner.optimizer is None else learner.optimizer.state_dict(),
            "scheduler": None if learner.scheduler is None else learner.scheduler.state_dict(),
            "scaler": self.runtime.scaler.state_dict() if self.runtime.scaler.is_enabled() else None,
            "rng": torch.get_rng_state(),
            "learner": learner.state_dict(),
        }

    def save(self) -> None:
        """Save the training state (every process takes part; the main one writes)."""
        payload = self._payload()  # on every process: a learner may reduce across processes here
        if self.main:
            save_training_state(self.out, self._learner.model, payload)
        self.runtime.barrier()

    def _load(self) -> None:
        learner = self._learner
        folder = find_training_state(self.out) if self.out.exists() else None
        if folder is not None and not self.resume:
            folder = None
            if self.main:
                remove_training_state(self.out)
                self.log_path.unlink(missing_ok=True)
        if folder is None:
            # A fresh start: lines of a run that never saved a state belong to no state; drop them.
            if self.main:
                self.log_path.unlink(missing_ok=True)
            self.runtime.barrier()
            return
        payload = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
        if payload.get("format") == learner.state_format:  # the settings first: a clear message
            learner.check_resume(payload["learner"])
        load_training_state(folder, learner.state_format, learner.model)
        if learner.optimizer is not None:
            learner.optimizer.load_state_dict(payload["optimizer"])
        if learner.scheduler is not None:
            learner.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler") is not None and self.runtime.scaler.is_enabled():
            self.runtime.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"])
        learner.load_state_dict(payload["learner"])
        self.step = int(payload["step"])
        self._log_count = int(payload["log_count"])
        self.elapsed_s = float(payload.get("elapsed_s", 0.0))
        self.resumed = True
        if payload.get("world_size") != self.runtime.world:
            log.warning("resuming a run made with %s process(es) on %s", payload.get("world_size"), self.runtime.world)
        if self.main:
            self._keep_log_lines(self._log_count)
            log.info("resuming %s at step %d", self.out, self.step)
        self.runtime.barrier()

    def _plot(self) -> None:
        if not self.main:
            return
        try:
            self._learner.plot(self.log_path, self.out)
        except Exception as exc:  # a plot must never stop a training run
            log.warning("could not draw the training plot in %s: %s", self.out, exc)

    # ------------------------------------------------------------------ Ctrl-C
    @contextlib.contextmanager
    def _graceful_interrupt(self) -> Iterator[None]:
        """One process: the first Ctrl-C ends the current step, saves the state and raises
        KeyboardInterrupt; a second one interrupts at once."""
        if self.runtime.world > 1 or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------ run
    def run(self, learner: Learner) -> TrainingLoop:
        """Resume or start, run the steps that remain (or ``stop_after`` of them), return ``self``."""
        self._learner = learner
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._load()
        learner.start(self, self.resumed)
        first = self.step
        self._bar = self.runtime.progress(self.total_steps, self.step, learner.name, self.show_progress)
        self._bar.unit = self.unit
        try:
            with self._graceful_interrupt():
                while self.step < self.total_steps:
                    if self.stop_after is not None and self.step - first >= self.stop_after:
                        self.save()
                        break
                    t0 = time.perf_counter()
                    epoch, index = divmod(self.step, self.steps_per_epoch)
                    learner.train_step(self, self.step, epoch, index)
                    self.step += 1
                    self.elapsed_s += time.perf_counter() - t0
                    self._bar.update(1)
                    epoch_end = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                    if epoch_end:
                        learner.end_of_epoch(self, math.ceil(self.step / self.steps_per_epoch), self.step)
                    if epoch_end or (self.checkpoint_every and self.step % self.checkpoint_every == 0):
                        self.save()
                    if epoch_end:
                        self._plot()
                    if self.on_step is not None:
                        self.on_step(self.step)
                    if self._stop_requested:
                        if not epoch_end and not (self.checkpoint_every and self.step % self.checkpoint_every == 0):
                            self.save()
                        raise KeyboardInterrupt
        finally:
            self._bar.close()
        self._plot()
        return self
