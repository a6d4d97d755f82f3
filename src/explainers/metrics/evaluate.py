"""Evaluate mask files: every metric, batched, optionally sharded across processes.

:func:`evaluate_maskfiles` reads one or more mask files written for the same images, loads each image
once, runs the clean forward once, and lets every metric score every file's maps on that batch. Under
``torchrun`` / ``accelerate launch`` with several processes the images are split into contiguous shards,
each process scores its shard and the per-image results are gathered, in order, on the main process —
the same values as one process (per-image results do not depend on the split; pooled counts are integer
sums).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from explainers.data.base import ImageDataset, collate
from explainers.data.loader import BatchLoader, resolve_workers
from explainers.distributed import Shard, current_shard, gather_to_main
from explainers.errors import DatasetError, ExplainersError
from explainers.io.maskfile import MaskFile
from explainers.metrics.base import (
    BatchContext,
    Metric,
    MetricInputs,
    chunked_logits,
    get_metric,
    metric_class,
    summary_stats,
)
from explainers.models.base import ExplaineeAdapter
from explainers.provenance import ScoredWith, compare, dataset_record, mismatch_message

log = logging.getLogger(__name__)

#: Metrics run by ``metrics="all"`` (those needing masks or a patch grid only where available).
DEFAULT_METRICS = (
    "pos",
    "neg",
    "deletion",
    "neg-deletion",
    "insertion",
    "patch-insertion",
    "patch-deletion",
    "adp",
    "pic",
    "pixel-accuracy",
    "miou",
    "map",
)


@dataclass
class FileResult:
    """Everything measured on one mask file."""

    info: dict[str, Any]
    label: str
    ids: list[str]
    excluded: list[str]
    maps_info: dict[str, Any]
    checks: dict[str, Any]
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    files: list[FileResult]
    curve_x: dict[str, list[float]]
    timing: dict[str, Any]
    #: A few images (k×H×W×3 in [0,1], ids) and each file's maps of them (k×H×W), for the heatmap grid.
    preview: dict[str, Any] = field(default_factory=dict)
    #: Things the user must know about the numbers (mismatches scored anyway, checks that could not be
    #: made, excluded non-finite values), one line each; also in the report.
    warnings: list[str] = field(default_factory=list)


#: Images shown in the heatmap grid of the report.
PREVIEW_IMAGES = 6


def _preview(
    adapter: ExplaineeAdapter, dataset: ImageDataset, files, ids, index_of, row_of
) -> dict[str, Any]:
    """The first images (those no file excluded as non-finite are fine too: maps are shown as stored)."""
    shown = ids[:PREVIEW_IMAGES]
    batch = collate([dataset[index_of[i]] for i in shown], adapter.input_geometry)
    maps = [np.nan_to_num(mf.maps([row_of[k][i] for i in shown])) for k, mf in enumerate(files)]
    return {"ids": shown, "images": batch.images.permute(0, 2, 3, 1).numpy(), "maps": maps}


def _gridless(adapter: ExplaineeAdapter) -> bool:
    try:
        adapter.grid  # noqa: B018  (raises for explainees without a patch grid)
    except ExplainersError:
        return True
    return False


def resolve_metrics(
    names: Sequence[str] | str,
    *,
    adapter: ExplaineeAdapter,
    has_gt: bool,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Metric]:
    """Build metrics from names (``"all"``: :data:`DEFAULT_METRICS` that apply to this data/explainee)."""
    options = dict(options or {})
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    if names == ["all"]:
        names = [
            n
            for n in DEFAULT_METRICS
            if (has_gt or not metric_class(n).needs_gt)
            and not (metric_class(n).needs_grid and _gridless(adapter))
        ]
    if not names:
        raise ExplainersError("no metrics requested; pass e.g. --metrics pos,neg (or all)")
    stray = sorted(set(options) - set(names))
    if stray:
        raise ExplainersError(f"options given for metric(s) not evaluated: {', '.join(stray)}")
    metrics = [get_metric(n, **options.get(n, {})) for n in names]
    for m in metrics:
        if m.needs_gt and not has_gt:
            raise ExplainersError(
                f"metric {m.name!r} needs ground-truth masks but the dataset has none; use imagenet-seg, "
                "coco, voc, masks or synthetic data, or drop the segmentation metrics"
            )
        if m.needs_grid and _gridless(adapter):
            raise ExplainersError(
                f"metric {m.name!r} works on the patch grid, but explainee {adapter.identifier} has none; "
                "use a ViT explainee or the pixel-level insertion/deletion"
            )
    return metrics


def scan_maps(mf: MaskFile, chunk: int = 64) -> dict[str, Any]:
    """Non-finite rows and the value range of the finite maps, streamed in chunks."""
    bad: list[int] = []
    lo, hi, normalized = np.inf, -np.inf, True
    for start, maps in mf.iter_maps(chunk):
        flat = maps.reshape(len(maps), -1)
        finite = np.isfinite(flat).all(axis=1)
        bad.extend(int(start + i) for i in np.flatnonzero(~finite))
        good = flat[finite]
        if len(good):
            mins, maxs = good.min(axis=1), good.max(axis=1)
            lo, hi = min(lo, float(mins.min())), max(hi, float(maxs.max()))
            # Min–max normalised: min 0 and max 1 per map (a constant map normalises to all zeros).
            ok = (np.abs(mins) <= 1e-4) & ((np.abs(maxs - 1) <= 1e-3) | (maxs <= 1e-4))
            normalized = normalized and bool(ok.all())
    return {
        "path": str(mf.path),
        "nonfinite_rows": bad,
        "min": float(lo) if np.isfinite(lo) else 0.0,
        "max": float(hi) if np.isfinite(hi) else 0.0,
        "minmax_normalized": normalized,
    }


def _file_label(mf: MaskFile, taken: set[str]) -> str:
    label = mf.method
    if label in taken:
        label = f"{mf.method} ({mf.path.stem})"
    taken.add(label)
    return label


def evaluate_maskfiles(
    adapter: ExplaineeAdapter,
    dataset: ImageDataset,
    maskfiles: Sequence[str | Path],
    metrics: Sequence[str] | str = "all",
    *,
    classes: str | None = None,
    batch_size: int = 16,
    max_batch: int = 64,
    nonfinite: str = "fail",
    allow_mismatch: bool = False,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    dataset_spec: str | None = None,
    workers: int | None = None,
) -> EvaluationResult | None:
    """Score the maps in ``maskfiles`` on ``dataset`` with ``adapter``.

    classes: the class convention scored, ``target`` (ground truth) or ``predicted`` (clean-image
    argmax); None: the one the mask files were made with. Each file is checked against what it is scored
    with (explainee weights, dataset and labelling, class convention, explained head; see
    :mod:`explainers.provenance`): a mismatch is refused with the differences listed unless
    ``allow_mismatch``, which scores anyway and records them. nonfinite: ``fail`` (refuse maps with
    NaN/inf and per-image metric values that are NaN/inf, naming the images) or ``exclude`` (leave those
    images out — of the file for maps, of the metric's mean for values — and count them in the report).
    max_batch: most perturbed images per explainee forward (the memory knob). workers: processes decoding
    images while the metrics run (None: :func:`data.loader.default_workers`; 0: in this process). Returns
    the result on the main process and None on the others when sharded.
    """
    t0 = time.perf_counter()
    if classes not in (None, "target", "predicted"):
        raise ExplainersError(
            f"class convention must be target or predicted (default: the mask files'), got {classes!r}"
        )
    if nonfinite not in ("fail", "exclude"):
        raise ExplainersError(f"--nonfinite must be fail or exclude, got {nonfinite!r}")
    if batch_size < 1:
        raise ExplainersError(f"batch size must be at least 1, got {batch_size}")
    resolve_workers(workers)  # a bad count is refused before any file is opened
    if not maskfiles:
        raise ExplainersError("no mask files given; pass --masks FILE.h5 (written by 'explainers explain')")
    _refuse_repeated_paths(maskfiles)
    files = [MaskFile(p) for p in maskfiles]
    try:
        return _evaluate(
            adapter,
            dataset,
            files,
            metrics,
            classes=classes,
            batch_size=batch_size,
            max_batch=max_batch,
            nonfinite=nonfinite,
            allow_mismatch=allow_mismatch,
            metric_options=metric_options,
            progress=progress,
            dataset_spec=dataset_spec,
            workers=workers,
            t0=t0,
        )
    finally:
        for f in files:
            f.close()


def _evaluate(
    adapter,
    dataset,
    files,
    metric_names,
    *,
    classes,
    batch_size,
    max_batch,
    nonfinite,
    allow_mismatch,
    metric_options,
    progress,
    dataset_spec,
    workers,
    t0,
) -> EvaluationResult | None:
    size = tuple(adapter.image_size)
    for mf in files:
        if tuple(mf.image_size) != size:
            raise ExplainersError(
                f"{mf.path} holds {mf.image_size[0]}×{mf.image_size[1]} maps but explainee "
                f"{adapter.identifier} takes {size[0]}×{size[1]} images; evaluate with the explainee the "
                "maps were made for"
            )
        seen: set[str] = set()
        repeated = [i for i in mf.ids if i in seen or seen.add(i)]
        if repeated:
            raise ExplainersError(
                f"{mf.path} holds {len(repeated)} image id(s) more than once (e.g. {', '.join(repeated[:3])}); "
                "each image would be scored twice: rewrite the mask file with 'explainers explain'"
            )
    ids = files[0].ids
    for mf in files[1:]:
        if set(mf.ids) != set(ids):
            raise ExplainersError(
                f"{mf.path} covers other images than {files[0].path} ({len(mf.ids)} vs {len(ids)} ids); "
                "compare mask files made on the same images"
            )
    data_ids = dataset.ids
    index_of = {i: n for n, i in enumerate(data_ids)}
    if len(index_of) != len(data_ids):
        raise DatasetError(f"dataset {dataset.name} has duplicate image ids; cannot match mask files to it")
    missing = [i for i in ids if i not in index_of]
    if missing:
        raise ExplainersError(
            f"{len(missing)} of {len(ids)} images in {files[0].path} are not in dataset {dataset.name} "
            f"(e.g. {', '.join(missing[:3])}); check --data and --split "
            f"(the maps were made on {files[0].dataset})"
        )
    if not ids:
        raise ExplainersError(f"{files[0].path} holds no maps")
    has_gt = dataset[index_of[ids[0]]].mask is not None
    metrics = resolve_metrics(metric_names, adapter=adapter, has_gt=has_gt, options=metric_options)

    labels = files[0].labels
    if classes is None:
        made = sorted({mf.targets for mf in files})
        if len(made) > 1:
            listed = ", ".join(f"{mf.path.name}: {mf.targets}" for mf in files)
            raise ExplainersError(
                f"the mask files explain different class conventions ({listed}); score them separately, "
                "or pass --class target|predicted with --allow-mismatch to score all for one"
            )
        classes = made[0]
    if classes == "target" and (labels < 0).any():
        raise ExplainersError(
            f"--class target needs ground-truth labels, but {int((labels < 0).sum())} images of "
            f"{files[0].path} have none (label -1); use --class predicted"
        )

    # What the maps were made with against what they are scored with: refused unless allowed.
    scored_with = ScoredWith(adapter, dataset_record(dataset, dataset_spec), classes)
    index_rows = np.asarray([index_of[i] for i in ids])
    known = _known_labels(dataset, index_rows)
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    for mf in files:
        comparison = compare(mf, scored_with)
        if known is not None:
            row = {i: r for r, i in enumerate(mf.ids)}
            differ = [i for i, lab in zip(ids, known, strict=True) if mf.labels[row[i]] != lab]
            if differ:
                comparison.mismatches.append(_label_mismatch(differ, len(ids)))
        if comparison.mismatches and not allow_mismatch:
            raise ExplainersError(mismatch_message(mf.path, comparison.mismatches))
        checks.append({"mismatches": comparison.mismatches, "unchecked": comparison.unchecked})
        notes += [f"{mf.path}: scored despite a mismatch: {m}" for m in comparison.mismatches]
        if comparison.unchecked:
            notes.append(
                f"{mf.path}: could not check {', '.join(comparison.unchecked)} (not recorded in the mask "
                "file: written by an older version)"
            )

    scans = [scan_maps(mf) for mf in files]
    excluded: list[set[int]] = []
    for mf, scan in zip(files, scans, strict=True):
        bad = scan["nonfinite_rows"]
        if bad and nonfinite == "fail":
            names = ", ".join(mf.ids[r] for r in bad[:5]) + (", …" if len(bad) > 5 else "")
            raise ExplainersError(
                f"{mf.path}: maps of {len(bad)} image(s) contain NaN or inf ({names}); fix the method or "
                "pass --nonfinite exclude to leave those images out"
            )
        excluded.append(set(bad))
        for m in metrics:
            m.check_maps(scan)

    shard = current_shard()
    row_of = [{i: r for r, i in enumerate(mf.ids)} for mf in files]
    # Labels not read cheaply above are compared while the images are scored.
    compare_labels = known is None
    local = _score_shard(
        adapter,
        dataset,
        files,
        metrics,
        ids,
        index_of,
        row_of,
        excluded,
        shard,
        classes=classes,
        batch_size=batch_size,
        max_batch=max_batch,
        progress=progress,
        workers=workers,
        compare_labels=compare_labels,
    )
    gathered = gather_to_main(local, shard)
    if gathered is None:
        return None
    taken: set[str] = set()
    results = []
    for k, (mf, scan) in enumerate(zip(files, scans, strict=True)):
        parts = [g["files"][k] for g in gathered]
        label_differs = [i for p in parts for i in p["label_mismatch"]]
        if label_differs:
            message = _label_mismatch(label_differs, len(ids))
            if not allow_mismatch:
                raise ExplainersError(mismatch_message(mf.path, [message]))
            checks[k]["mismatches"].append(message)
            notes.append(f"{mf.path}: scored despite a mismatch: {message}")
        explained_differs = int(sum(p["explained_mismatch"] for p in parts))
        res = FileResult(
            info=mf.describe(),
            label=_file_label(mf, taken),
            ids=[i for p in parts for i in p["ids"]],
            excluded=[mf.ids[r] for r in sorted(excluded[k])],
            maps_info={key: scan[key] for key in ("min", "max", "minmax_normalized")},
            checks={
                "images": sum(len(p["ids"]) for p in parts),
                "predicted_differs_from_file": int(sum(p["predicted_mismatch"] for p in parts)),
                "explained_differs_from_scored_class": explained_differs,
                **checks[k],
            },
        )
        if explained_differs and not any(m.startswith("class convention") for m in checks[k]["mismatches"]):
            # Same convention and explainee: only numerical noise can flip a clean argmax. Told, not refused.
            notes.append(
                f"{mf.path}: {explained_differs} image(s) are scored for another class than their map "
                "explains (the explainee's argmax differs from the one recorded at explain time)"
            )
        for m in metrics:
            values = np.concatenate([p["values"][m.name] for p in parts])
            res.per_image[m.name] = values
            nonfinite_stats = _nonfinite_values(m, mf, res.ids, values, nonfinite)
            if nonfinite_stats.get("nonfinite_excluded"):
                notes.append(
                    f"{mf.path}: {m.name}: {nonfinite_stats['nonfinite_excluded']} image(s) with a NaN/inf "
                    f"value left out of the mean ({', '.join(nonfinite_stats['nonfinite_ids'][:3])}"
                    + (", …)" if nonfinite_stats["nonfinite_excluded"] > 3 else ")")
                )
            stats = summary_stats(values)
            curves = [p["curves"][m.name] for p in parts if p["curves"][m.name] is not None]
            if curves:
                res.curves[m.name] = np.concatenate(curves)
            if m.aggregation == "pooled":
                counts = [p["counts"][m.name] for p in parts if p["counts"][m.name] is not None]
                res.counts[m.name] = np.concatenate(counts) if counts else np.zeros((0, 0), dtype=np.int64)
                value = m.pooled_value(res.counts[m.name]) if counts else None
            else:
                value = stats["mean"]
            res.summaries[m.name] = {
                "value": value,
                **stats,
                "class": classes
                if "target" in m.classes
                else "predicted (maps should explain the predicted class)",
                **({"maps_minmax_normalized": scan["minmax_normalized"]} if m.category == "adp-pic" else {}),
                **nonfinite_stats,
            }
        results.append(res)
    curve_x = {
        m.name: [float(x) for x in m.curve_x(adapter)] for m in metrics if m.curve_x(adapter) is not None
    }
    seconds = time.perf_counter() - t0
    forwarded = sum(g["forwarded"] for g in gathered)
    config = {
        "explainee": adapter.describe(),
        "dataset": dataset_spec or dataset.name,
        "maskfiles": [str(mf.path) for mf in files],
        "classes": classes,
        "batch_size": batch_size,
        "max_batch": max_batch,
        "nonfinite": nonfinite,
        "allow_mismatch": allow_mismatch,
        "processes": shard.world_size,
    }
    timing = {
        "seconds": seconds,
        "images": len(ids),
        "explainee_forwards": forwarded,
        "images_per_second": len(ids) / seconds if seconds > 0 else None,
    }
    return EvaluationResult(
        config=config,
        metrics=[m.describe() for m in metrics],
        files=results,
        curve_x=curve_x,
        timing=timing,
        preview=_preview(adapter, dataset, files, ids, index_of, row_of),
        warnings=notes,
    )


def _refuse_repeated_paths(maskfiles: Sequence[str | Path]) -> None:
    """The same file given twice would be scored as two methods."""
    seen: dict[Any, str] = {}
    for p in maskfiles:
        path = Path(p)
        try:
            st = path.stat()
            key: Any = (st.st_dev, st.st_ino)
        except OSError:  # missing: MaskFile says so
            key = os.path.abspath(path)
        if key in seen:
            raise ExplainersError(
                f"mask file {path} is given twice (also as {seen[key]}); pass each mask file once"
            )
        seen[key] = str(path)


def _known_labels(dataset: ImageDataset, rows: np.ndarray) -> np.ndarray | None:
    """The dataset's labels of ``rows`` when it can give them without loading images (``labels``; the
    default of a dataset class without its own would decode every image)."""
    if not getattr(dataset, "labels_without_decoding", False):
        return None
    labels = dataset.labels
    try:
        arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (len(dataset),):
        return None
    return arr[rows]


def _label_mismatch(differ: list[str], total: int) -> str:
    return (
        f"labels differ for {len(differ)} of {total} images (e.g. {', '.join(differ[:3])}): the maps were "
        "made for another labelling of these images"
    )


def _nonfinite_values(
    metric: Metric, mf: MaskFile, ids: list[str], values: np.ndarray, mode: str
) -> dict[str, Any]:
    """Per-image values that are NaN/inf: refused (``fail``) or counted and left out of the mean
    (``exclude``). Pooled metrics take their value from counts, where an undefined per-image ratio (no
    valid pixel) is expected; those are only counted."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return {}
    bad_ids = [ids[i] for i in np.flatnonzero(bad)]
    if metric.aggregation == "pooled":
        return {"per_image_undefined": len(bad_ids)}
    if mode == "fail":
        shown = ", ".join(bad_ids[:5]) + (", …" if len(bad_ids) > 5 else "")
        raise ExplainersError(
            f"{mf.path}: metric {metric.name} is NaN or inf for {len(bad_ids)} image(s) ({shown}); pass "
            "--nonfinite exclude to leave them out of the mean (counted in the report)"
        )
    log.warning("%s: %s: %d NaN/inf value(s) left out of the mean", mf.path, metric.name, len(bad_ids))
    return {"nonfinite_excluded": len(bad_ids), "nonfinite_ids": bad_ids}


def _score_shard(
    adapter,
    dataset,
    files,
    metrics,
    ids,
    index_of,
    row_of,
    excluded,
    shard: Shard,
    *,
    classes,
    batch_size,
    max_batch,
    progress,
    workers,
    compare_labels: bool = True,
) -> dict[str, Any]:
    mine = [ids[i] for i in shard.range(len(ids))]
    device = adapter.device
    local: list[dict[str, Any]] = [
        {
            "ids": [],
            "values": {m.name: [] for m in metrics},
            "curves": {m.name: [] for m in metrics},
            "counts": {m.name: [] for m in metrics},
            "predicted_mismatch": 0,
            "explained_mismatch": 0,
            "label_mismatch": [],
        }
        for _ in files
    ]
    forwarded = 0
    bar = tqdm(total=len(ids), desc="evaluate", unit="img", disable=not progress or not shard.is_main)
    chunks = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    loader = BatchLoader(
        dataset, [[index_of[i] for i in chunk] for chunk in chunks], adapter.input_geometry, workers=workers,
        device=device,
    )  # fmt: skip
    for chunk, batch in zip(chunks, loader, strict=True):
        images = batch.images
        clean_logits = chunked_logits(adapter, images, max_batch)
        forwarded += len(images)
        predicted = clean_logits.argmax(dim=1)
        scored = batch.labels if classes == "target" else predicted
        for k, mf in enumerate(files):
            keep = [n for n, i in enumerate(chunk) if row_of[k][i] not in excluded[k]]
            if not keep:
                continue
            rows = [row_of[k][chunk[n]] for n in keep]
            sel = torch.as_tensor(keep, device=device)
            inputs = MetricInputs(
                images=images[sel],
                maps=torch.from_numpy(mf.maps(rows)).to(device),
                classes=scored[sel],
                clean_logits=clean_logits[sel],
                ids=[chunk[n] for n in keep],
                gt=None if batch.masks is None else batch.masks[sel],
                ignore=None if batch.ignore is None else batch.ignore[sel],
                counter=None if batch.counter is None else batch.counter[sel],
            )
            ctx = BatchContext(adapter, inputs, max_batch=max_batch)
            out = local[k]
            out["ids"].extend(inputs.ids)
            out["predicted_mismatch"] += int(
                (torch.as_tensor(mf.predicted[rows]) != predicted[sel].cpu()).sum()
            )
            out["explained_mismatch"] += int((torch.as_tensor(mf.explained[rows]) != scored[sel].cpu()).sum())
            if compare_labels:
                differ = torch.as_tensor(mf.labels[rows]) != batch.labels[sel].cpu()
                out["label_mismatch"].extend(inputs.ids[n] for n in differ.nonzero().flatten().tolist())
            for m in metrics:
                res = m.compute(ctx)
                out["values"][m.name].append(np.asarray(res.values, dtype=np.float64))
                out["curves"][m.name].append(res.curves)
                out["counts"][m.name].append(res.counts)
            forwarded += ctx.forwarded
        bar.update(len(chunk) * shard.world_size)
    bar.close()
    for out in local:
        for m in metrics:
            vals = out["values"][m.name]
            out["values"][m.name] = np.concatenate(vals) if vals else np.zeros(0)
            for key in ("curves", "counts"):
                parts = [c for c in out[key][m.name] if c is not None]
                out[key][m.name] = np.concatenate(parts) if parts else None
    return {"files": local, "forwarded": forwarded}
