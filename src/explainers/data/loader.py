"""Batches of a dataset through ``torch.utils.data.DataLoader``: images decoded in worker processes while the
model runs, handed over in dataset order and moved to the model's device in one place.

What a batch is does not change with the number of workers: the same :func:`data.base.collate` (resize and
crop to the explainee's input geometry) runs on the same indices, in a worker instead of the main process.
Images stay raw [0,1]; normalisation is the explainee's, on its device.

The pieces, for any loop that needs batches (explain, evaluate, training):

* :class:`BatchLoader` — iterate :class:`Batch` es on a device, given the batches as lists of dataset
  indices (a list, or a batch sampler that reshuffles per epoch), with ``workers`` processes.
* :func:`default_workers` / :func:`resolve_workers` — the ``--workers`` default and its check.
* :class:`BatchFetcher`, :func:`worker_init`, :func:`worker_context` — the parts a hand-built
  ``DataLoader`` would use to behave the same.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from explainers.data.base import Batch, ImageDataset, collate
from explainers.data.resize import InputGeometry
from explainers.errors import ExplainersError

#: Most worker processes chosen by default: decoding one batch ahead rarely needs more, and each worker
#: holds its own prefetched batches in memory.
MAX_DEFAULT_WORKERS = 4


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask honours ``taskset`` and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """``--workers`` when not given: the CPUs of this process shared among the processes started on this
    machine (``LOCAL_WORLD_SIZE`` under torchrun / accelerate), at most :data:`MAX_DEFAULT_WORKERS`."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, available_cpus() // local_processes))


def resolve_workers(workers: int | None, batches: int | None = None) -> int:
    """The worker count to use: ``workers`` (None: :func:`default_workers`), never more than there are
    ``batches``, and 0 (load in this process) for a single batch, where a worker could only add its start-up
    time."""
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ExplainersError(f"--workers must be 0 (load in this process) or a positive count, got {workers!r}")
    if batches is not None:
        workers = 0 if batches <= 1 else min(workers, batches)
    return workers


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The start method of worker processes: ``fork`` where the platform has it (Linux). A forked worker
    starts in milliseconds with everything imported, while ``spawn``/``forkserver`` re-import torch in each
    worker (seconds on a small machine) and need the dataset to be picklable. Forking is safe here: workers
    only decode and resize on the CPU with one torch thread (never touch CUDA), and the HDF5-backed reader
    reopens its file in each process. Elsewhere (macOS, Windows) the platform's default (``spawn``), which is
    why every reader is picklable too."""
    if sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def worker_init(worker_id: int) -> None:
    """Set up a worker process: one torch thread (torch's own worker loop does so too; set here so that it
    does not depend on that), as the workers of a 2-core machine already share the cores with the model;
    and no traceback from the hand-over thread when the main process is gone (see below)."""
    torch.set_num_threads(1)
    sys.excepthook = _quiet_when_main_process_is_gone


def _quiet_when_main_process_is_gone(
    exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    """A worker hands each batch's tensors to the main process through a helper thread
    (multiprocessing's resource sharer), which reports its errors through ``sys.excepthook``. When the
    main process stops mid hand-over (Ctrl-C), that thread fails with a connection error and Python
    prints its traceback under the main process's one-line "interrupted" message. Nothing is lost (the
    main process reports the interruption and the output is resumable), so only that case is silenced;
    every other error is printed as usual."""
    if issubclass(exc_type, (ConnectionResetError, BrokenPipeError, EOFError)):
        return
    sys.__excepthook__(exc_type, exc, traceback)


class LoadFailure:
    """A bad input met while loading a batch (e.g. an undecodable image), carried back from the worker as a
    value: raised from a worker, torch would re-raise it with the worker's whole traceback as its message,
    instead of the one line the user should see."""

    def __init__(self, error: ExplainersError) -> None:
        self.kind = type(error)
        self.message = str(error)

    def reraise(self) -> None:
        try:
            error = self.kind(self.message)
        except Exception:  # a subclass with another constructor: keep the message
            error = ExplainersError(self.message)
        raise error from None


class BatchFetcher(Dataset):
    """A map-style view of ``dataset`` whose items are whole batches: ``fetcher[[i, j, k]]`` is
    ``collate([dataset[i], dataset[j], dataset[k]], size)``, or a :class:`LoadFailure`. ``size``: what
    :func:`collate` takes, the explainee's ``adapter.input_geometry`` or a plain (height, width)."""

    def __init__(self, dataset: ImageDataset, size: tuple[int, int] | InputGeometry) -> None:
        self.dataset = dataset
        self.size = size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> Batch | LoadFailure:  # type: ignore[override]
        try:
            return collate([self.dataset[i] for i in indices], self.size)
        except ExplainersError as exc:
            return LoadFailure(exc)


def _as_is(item: Any) -> Any:
    # With whole batches as items, nothing is left to collate (a named function: spawn pickles it).
    return item


class BatchLoader:
    """Batches of ``dataset`` resized to ``size`` (``adapter.input_geometry``, or a plain (height, width)),
    on ``device``, in the order of ``batches``.

    batches: each batch's dataset indices — a list of lists, or a batch sampler (anything iterable over
    index lists; with ``__len__`` for the worker count to be capped). Only these images are decoded, so a
    resumed run that leaves out its committed images never reads them. workers: decoding processes
    (None: :func:`default_workers`; 0: in this process). device: where the batches go (default CPU); to a
    CUDA device, batches are pinned by the loader and copied without blocking. prefetch_per_worker:
    batches each worker keeps ready.

    Iterating gives :class:`Batch` es with every tensor on ``device``. A bad input (undecodable image,
    unreadable file) raises its own :class:`ExplainersError`, whatever the number of workers.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batches: Iterable[Sequence[int]],
        size: tuple[int, int] | InputGeometry,
        *,
        workers: int | None = None,
        device: torch.device | str | None = None,
        prefetch_per_worker: int = 2,
    ) -> None:
        self.dataset = dataset
        self.batches = batches
        self.size = size
        count = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        self.workers = resolve_workers(workers, count)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.pin = self.device.type == "cuda"
        self.prefetch_per_worker = prefetch_per_worker

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def data_loader(self) -> DataLoader:
        """The underlying ``DataLoader`` (yielding CPU batches or :class:`LoadFailure` s)."""
        multi = self.workers > 0
        return DataLoader(
            BatchFetcher(self.dataset, self.size),
            batch_size=None,  # the sampler yields whole batches of indices
            sampler=self.batches,  # type: ignore[arg-type]
            collate_fn=_as_is,
            num_workers=self.workers,
            pin_memory=self.pin,
            worker_init_fn=worker_init if multi else None,
            multiprocessing_context=worker_context() if multi else None,
            prefetch_factor=self.prefetch_per_worker if multi else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        try:
            for item in self.data_loader():
                if isinstance(item, LoadFailure):
                    item.reraise()
                # The one place batches move to the model's device.
                yield item.to(self.device, non_blocking=self.pin)
        except RuntimeError as exc:
            # A worker that died (killed for memory, a crash in a decoding library) ends the run in a
            # RuntimeError naming the worker; say what to do about it.
            if self.workers > 0 and "DataLoader worker (pid" in str(exc):
                first = str(exc).strip().splitlines()[0]
                raise ExplainersError(
                    f"a data-loading worker process failed ({first}); rerun with --workers 0 to load images in "
                    "this process, or with a smaller --batch-size"
                ) from None
            raise


__all__ = [
    "MAX_DEFAULT_WORKERS",
    "BatchFetcher",
    "BatchLoader",
    "LoadFailure",
    "available_cpus",
    "default_workers",
    "resolve_workers",
    "worker_context",
    "worker_init",
]
