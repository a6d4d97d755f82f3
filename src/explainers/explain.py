"""Explain a dataset with any registered method and write a mask file (docs/file-formats.md), resumably.

Images are taken in dataset order (the first ``limit`` of them), resized with :func:`data.base.collate`
to the explainee's size, explained in batches and appended to ``OUT.partial``; the file is renamed to
``OUT`` only when every image is written. A rerun after an interruption skips the images already
committed and ends with the same file as an uninterrupted run (for deterministic methods — a method that
draws random numbers continues from a different generator state).

Each batch is explained with :meth:`Method.explain`, which runs one explainee forward per batch and
returns the maps, the explained classes, the clean logits (the file's ``predicted`` column) and the
method's per-image extras, stored in datasets of the same name (LTE: ``selected_step``,
``selected_score``, ``selected_class``).

Sharding: under ``torchrun`` / ``accelerate launch`` with several processes, each process explains its
slice of every round of ``batch_size × processes`` images and the main process gathers and writes them in
dataset order, so the file equals the single-process one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from tqdm.auto import tqdm

from explainers.data.base import Batch, ImageDataset
from explainers.data.loader import BatchLoader, resolve_workers
from explainers.distributed import barrier, broadcast_from_main, current_shard, gather_to_main
from explainers.errors import ExplainersError
from explainers.heatmap import _class_name, overlay
from explainers.io.atomic import atomic_path, ensure_folder
from explainers.io.maskfile import MaskFileWriter
from explainers.methods.base import Method
from explainers.provenance import maskfile_provenance

log = logging.getLogger(__name__)


@dataclass
class ExplainSummary:
    """What one :func:`explain_dataset` call did."""

    path: Path
    images: int
    written: int  # images explained by this call (the rest were already in a resumed file)
    seconds: float
    nonfinite_ids: list[str] = field(default_factory=list)


def png_name(image_id: str) -> str:
    """The overlay file name of an image id, one-to-one: letters, digits and ``-_.~`` stay,
    every other byte becomes ``%XX`` (``%`` itself too), so two ids never share a file and no id
    reaches outside the folder (``/`` is escaped, and ``.``/``..`` gain the ``.png`` suffix)."""
    return quote(image_id, safe="") + ".png"


def _save_png(image: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def explain_dataset(
    method: Method,
    dataset: ImageDataset,
    out: str | Path,
    *,
    batch_size: int = 16,
    targets: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
    png_dir: str | Path | None = None,
    dtype: str = "float32",
    dataset_spec: str | None = None,
    workers: int | None = None,
) -> ExplainSummary | None:
    """Run ``method`` over ``dataset`` and write the mask file ``out``.

    targets: ``predicted`` (explain the explainee's argmax on the clean image) or ``target`` (the
    ground-truth label; every image needs one); None: the method's own convention when it has one (LTE:
    the class its pLTE checkpoint was trained for), else ``predicted``. resume: continue ``out.partial`` if
    present (False: start over). overwrite: replace an existing complete ``out``. png_dir: also write heatmap overlays
    there, one ``<id>.png`` per image (:func:`explainers.heatmap.overlay`: jet, opacity 0.4, the explained
    class's name in the corner). dtype: ``float32`` or ``float16`` maps. workers: processes decoding
    images while the method runs (None: :func:`data.loader.default_workers`; 0: in this process); the maps
    do not depend on it. Returns the summary on the main process (None on the others when sharded).
    """
    t0 = time.perf_counter()
    targets = _class_convention(method, targets)
    if batch_size < 1:
        raise ExplainersError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ExplainersError(f"--limit must be at least 1, got {limit}")
    resolve_workers(workers)  # a bad count is refused before any file is opened
    adapter = method.adapter
    ids = dataset.ids
    if len(set(ids)) != len(ids):
        raise ExplainersError(f"dataset {dataset.name} has duplicate image ids; mask files need unique ids")
    order = list(range(len(ids) if limit is None else min(limit, len(ids))))
    if not order:
        raise ExplainersError(f"dataset {dataset.name} is empty")
    wanted = [ids[i] for i in order]
    png = Path(png_dir) if png_dir is not None else None
    if png is not None:
        ensure_folder(png, f"the PNG folder {png}")

    shard = current_shard()
    writer: MaskFileWriter | None = None
    status: tuple[str, Any]
    if shard.is_main:
        try:
            writer = MaskFileWriter(
                out,
                method=method.name,
                method_config=method.config(),
                explainee=adapter.describe(),
                image_size=adapter.image_size,
                dataset=dataset_spec or dataset.name,
                targets=targets,
                dtype=dtype,
                resume=resume,
                overwrite=overwrite,
                chunk_images=min(batch_size, 64),
                provenance=maskfile_provenance(method, dataset, dataset_spec),
            )
            status = ("ok", sorted(writer.done_ids))
        except ExplainersError as exc:
            status = ("error", str(exc))
    else:
        status = ("ok", [])
    status = broadcast_from_main(status, shard)
    if status[0] == "error":
        raise ExplainersError(status[1])
    done = set(status[1])
    pending = [i for i in order if ids[i] not in done]


    bar = tqdm(
        total=len(order),
        initial=len(order) - len(pending),
        desc=f"explain {method.name}",
        unit="img",
        disable=not progress or not shard.is_main,
    )
    nonfinite: list[str] = []
    round_size = batch_size * shard.world_size
    rounds = [pending[start : start + round_size] for start in range(0, len(pending), round_size)]
    # This process's slice of each round; only these images are decoded (committed ones never are).
    slices = [rnd[shard.rank * batch_size : (shard.rank + 1) * batch_size] for rnd in rounds]
    batches = iter(
        BatchLoader(dataset, [s for s in slices if s], adapter.input_geometry, workers=workers, device=adapter.device)
    )
    try:
        for rnd, mine in zip(rounds, slices, strict=True):
            part = _explain_batch(method, next(batches), targets=targets, png=png) if mine else None
            parts = gather_to_main(part, shard)
            if writer is not None and parts is not None:
                for p in parts:
                    if p is None:
                        continue
                    p.write(writer)
                    nonfinite.extend(p.nonfinite_ids())
            bar.update(len(rnd))
        bar.close()
        path = Path(out)
        if writer is not None:
            path = writer.finalize(expected_ids=wanted)
        barrier(shard)
    finally:
        batches.close()  # stops the loader's workers now, also when the method was interrupted
        if writer is not None:
            writer.close()
    if nonfinite:
        log.warning(
            "%d map(s) contain NaN or inf (e.g. %s); the evaluation will refuse them unless told "
            "--nonfinite exclude",
            len(nonfinite),
            ", ".join(nonfinite[:3]),
        )
    if not shard.is_main:
        return None
    return ExplainSummary(
        path=path,
        images=len(order),
        written=len(pending),
        seconds=time.perf_counter() - t0,
        nonfinite_ids=nonfinite,
    )


@dataclass(frozen=True)
class ExplainedRows:
    """One explained batch as rows of the mask file (NumPy, on the CPU: it may travel between processes)."""

    ids: list[str]
    maps: np.ndarray  # B×H×W float
    labels: np.ndarray  # B, -1 = unknown
    predicted: np.ndarray  # B, argmax of the explained head on the clean image
    explained: np.ndarray  # B, the class each map explains
    extras: Mapping[str, np.ndarray]

    def write(self, writer: MaskFileWriter) -> None:
        writer.append(
            ids=self.ids,
            maps=self.maps,
            labels=self.labels,
            predicted=self.predicted,
            explained=self.explained,
            extras=dict(self.extras),
        )

    def nonfinite_ids(self) -> list[str]:
        bad = ~np.isfinite(self.maps.reshape(len(self.ids), -1)).all(axis=1)
        return [i for i, b in zip(self.ids, bad, strict=True) if b]


def _explain_batch(method: Method, batch: Batch, *, targets: str, png: Path | None) -> ExplainedRows:
    """Explain one batch (already at the explainee's size and on its device)."""
    if targets == "target":
        unknown = (batch.labels < 0).nonzero().flatten()
        if len(unknown):
            raise ExplainersError(
                f"--class target needs labels but image {batch.ids[int(unknown[0])]} has none; "
                "use --class predicted"
            )
    requested = batch.labels if targets == "target" else None
    explanation = method.explain(batch.images, requested, labels=batch.labels, ids=batch.ids)
    if png is not None:
        for k, image_id in enumerate(batch.ids):
            label = _class_name(method.class_names, int(explanation.classes[k]))
            _save_png(overlay(batch.images[k], explanation.maps[k], label=label), png / png_name(image_id))
    return ExplainedRows(
        ids=list(batch.ids),
        maps=explanation.maps.cpu().numpy(),
        labels=batch.labels.cpu().numpy(),
        predicted=explanation.predicted.cpu().numpy(),
        explained=explanation.classes.cpu().numpy(),
        extras=dict(explanation.extras),
    )


def _class_convention(method: Method, targets: str | None) -> str:
    """The class convention of the run: as asked, else the method's own (``class_convention``), else
    ``predicted``. A method bound to one convention (LTE refines towards its checkpoint's class) refuses
    another, so that the file never claims a class its maps were not made for."""
    own = method.class_convention
    if targets is None:
        return own or "predicted"
    if targets not in ("predicted", "target"):
        raise ExplainersError(f"--class must be predicted or target, got {targets!r}")
    if own is not None and own != targets:
        hint = method.class_convention_hint
        raise ExplainersError(
            f"method {method.name} explains the {own} class{hint}; pass --class {own} (or leave --class out)"
        )
    return targets
