"""LETA on the embedded benchmark: one pre-trained explainer, several downstream tasks, no task training.

    python benchmarks/leta_embedded.py --data synthetic:DIR [--images 200] [--plte TASK=DIR ...]
        [--select-split val --select-images 200] [--out benchmarks/results/leta.md]

For each task (``color``, ``size`` and ``quadrant``: linear probes on the shipped explainee's frozen CLS
embedding, ``shape``: the explainee's own head) the explainee is the encoder with that head
(``probe_explainee``), so every method and metric runs on the downstream task unchanged. LETA explains every
task with the ONE shipped explainer (``assets/leta``, pre-trained without labels) through the transfer rule;
the baselines read the same adapter; pLTE is included for a task when pLTEs trained on that task are given
(``--plte TASK=DIR``, repeatable, several per task allowed).

Validation selection (``--select-split val --select-images N``): per task, every LETA explain-time variant
of :data:`LETA_GRID` (the transfer rule's weights λ⁺/λ⁻) and every pLTE given for the task are scored on the
first N images of the validation split. The rule (:func:`choose`): the lowest mean patch-deletion with mean
fill wins; a tie goes to the earlier candidate (the default LETA comes first). Only the chosen LETA variant,
the default one and the pLTEs are then scored on the test images; the comparison with the target (LETA
within 10 % of the pLTE chosen on validation, on patch-deletion and on mIoU) reads the test numbers.

Fidelity: the patch-level deletion / insertion of docs/metrics.md (whole patches in the map's patch order,
g²+1 points, softmax probability of the explained = predicted class, ×100 AUC), with removed patches
filled with the encoder's mean colour (LETA's own masking, ``fill=mean``) and, for deletion, also black.
Against the scenes' object masks: mIoU (pooled over the images), pointing game and energy in the ground truth.
Latency: median seconds per call on one batch, all methods timed round-robin (``_timing.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import explainers
from _timing import interleaved_medians, machine
from explainers.data import open_dataset
from explainers.data.base import iter_batches
from explainers.io.atomic import write_text_atomic
from explainers.learned.leta.explainer import pool_patch_scores
from explainers.maps import minmax_normalize
from explainers.methods import get_method
from explainers.metrics.base import BatchContext, Metric, MetricInputs, get_metric
from explainers.models import load_explainee, probe_explainee

ASSETS = Path(explainers.__file__).parent / "assets"
BASELINES = [
    "random",
    "raw-attention",
    "rollout",
    "attention-gradcam",
    "gae",
    "partial-lrp",
    "transformer-attribution",
    "lrp",
    "integrated-gradients",
    "rise",
]
# Cheaper than the defaults so that the whole table runs in minutes on two cores; recorded in the output.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "rise": {"num_masks": 1000},
    "integrated-gradients": {"steps": 20},
}
DELETION = "patch-del ↓ (mean fill)"
MIOU = "mIoU ↑"
METRICS = [
    ("patch-deletion", {"fill": "mean"}, DELETION),
    ("patch-insertion", {"fill": "mean"}, "patch-ins ↑ (mean fill)"),
    ("patch-deletion", {"fill": "black"}, "patch-del ↓ (black)"),
    ("miou", {}, MIOU),
    ("pointing-game", {}, "pointing ↑"),
    ("energy-in-gt", {}, "energy in gt ↑"),
]
# Validation scores the selection metric and the mask metrics (free: no explainee forwards).
SELECT_METRICS = [m for m in METRICS if m[2] in (DELETION, MIOU, "pointing ↑", "energy in gt ↑")]
# (λ⁺, λ⁻, pool radius) of the transfer rule a_c = λ⁺·h(ψ⁺_c)[ŷ] − λ⁻·h(ψ⁻_c)[ŷ], mean-pooled over
# (2p+1)² patches (None: the explainer's window radius, the reference; 0: no pooling). The map is min–max
# normalised, so only the ratio of the two weights matters: λ⁺ = 1 with λ⁻ ∈ {1, 0.5, 0.25, 0} and λ⁻ = 1 with
# λ⁺ ∈ {0.5, 0.25, 0} cover λ⁻/λ⁺ ∈ {0, ¼, ½, 1, 2, 4, ∞}. The default comes first, so that it wins ties.
LETA_WEIGHTS: list[tuple[float, float]] = [
    (1.0, 1.0),
    (1.0, 0.5),
    (1.0, 0.25),
    (1.0, 0.0),
    (0.5, 1.0),
    (0.25, 1.0),
    (0.0, 1.0),
]
LETA_GRID: list[tuple[float, float, int | None]] = [(*w, pool) for pool in (None, 0) for w in LETA_WEIGHTS]
DEFAULT_LETA: tuple[float, float, int | None] = (1.0, 1.0, None)
# What ``--lever`` explainers are scored with (a variant whose pool equals another's is scored once).
LEVER_VARIANTS: list[tuple[float, float, int | None]] = [
    (1.0, 1.0, None),
    (1.0, 0.0, None),
    (1.0, 1.0, 0),
    (1.0, 0.0, 0),
]
BOOTSTRAP = 1000


def leta_name(variant: tuple[float, float, int | None]) -> str:
    lam_pos, lam_neg, pool = variant
    if variant == DEFAULT_LETA:
        return "leta"
    return f"leta (λ⁺={lam_pos:g}, λ⁻={lam_neg:g}" + ("" if pool is None else f", pool {pool}") + ")"


def choose(rows: dict[str, dict[str, tuple[float, float]]], candidates: list[str], label: str = DELETION) -> str:
    """The candidate with the lowest mean ``label`` (a lower-is-better metric); ties go to the earlier one."""
    return min(candidates, key=lambda name: rows[name][label][0])  # min keeps the first of equal keys


class PatchGridMask:
    """A reference row, not a method: the object's mask averaged over each patch, mean-pooled over
    (2p+1)² patches like LETA's map (``pool`` = p), min–max normalised and upsampled as every patch map is.
    It scores what the best map on the patch grid can (what limits the mask metrics of LETA's maps)."""

    needs_gt = True

    def __init__(self, adapter, pool: int) -> None:
        self.adapter, self.pool = adapter, pool

    def __call__(self, images: torch.Tensor, classes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        per_patch = F.adaptive_avg_pool2d(gt.float()[:, None], self.adapter.grid)[:, 0]
        return self.adapter.patch_map_to_image(minmax_normalize(pool_patch_scores(per_patch, self.pool)))


def task_adapter(task: str, args):
    if task == "shape":
        return load_explainee(args.encoder), None
    probe_dir = args.probes / task
    return probe_explainee(probe_dir, encoder=args.encoder), probe_dir


def pltes_for(task: str, args) -> dict[str, Path]:
    """``plte (FOLDER NAME)`` → folder, for every ``--plte TASK=DIR`` of this task, in the order given."""
    out = {}
    for item in args.plte:
        name, _, folder = item.partition("=")
        if name == task:
            out[f"plte ({Path(folder).name})"] = Path(folder)
    return out


def leta_method(adapter, args, variant: tuple[float, float, int | None], explainer: Path | None = None):
    lam_pos, lam_neg, pool = variant
    folder = args.explainer if explainer is None else explainer
    return get_method("leta", adapter, explainer=folder, lambda_pos=lam_pos, lambda_neg=lam_neg, pool_radius=pool)


def score_methods(
    adapter, split: str, task: str, n: int, methods: dict[str, Any], specs: list[tuple], args
) -> tuple[dict[str, dict[str, Any]], int, float]:
    """(rows, images, accuracy): per method and metric label (mean, 95 % CI half-width) on the first ``n``
    images of ``split``, plus ``seconds`` (explaining and scoring) and ``s_per_image_in_eval`` (explaining)."""
    dataset = open_dataset(args.data, split=split, task=task)
    n = min(n, len(dataset))
    metrics = [(get_metric(name, **opts), label) for name, opts, label in specs]
    values: dict[str, dict[str, list[np.ndarray]]] = {m: {label: [] for _, label in metrics} for m in methods}
    counts: dict[str, dict[str, list[np.ndarray]]] = {m: {label: [] for _, label in metrics} for m in methods}
    explain_s = dict.fromkeys(methods, 0.0)
    total_s = dict.fromkeys(methods, 0.0)
    correct = done = 0
    for batch in iter_batches(dataset, args.batch, adapter.input_geometry, list(range(n))):
        images = batch.images
        with torch.no_grad():
            logits = adapter.predict(images)
        predicted = logits.argmax(1)
        correct += int((predicted == batch.labels).sum())
        for name, method in methods.items():
            start = time.perf_counter()
            maps = (
                method(images, predicted, batch.masks)
                if getattr(method, "needs_gt", False)
                else method(images, predicted)
            )
            explain_s[name] += time.perf_counter() - start
            inputs = MetricInputs(images, maps, predicted, logits, batch.ids, gt=batch.masks)
            ctx = BatchContext(adapter, inputs, max_batch=256)
            for metric, label in metrics:
                res = metric.compute(ctx)
                values[name][label].append(np.asarray(res.values, dtype=np.float64))
                if metric.aggregation == "pooled":
                    counts[name][label].append(np.asarray(res.counts))
            total_s[name] += time.perf_counter() - start
        done += len(images)
        print(f"  {task} ({split}): {done}/{n} images", file=sys.stderr)
    rows: dict[str, dict[str, Any]] = {}
    for name in methods:
        rows[name] = {
            label: _summary(metric, np.concatenate(values[name][label]), counts[name][label])
            for metric, label in metrics
        }
        rows[name]["s_per_image_in_eval"] = explain_s[name] / n
        rows[name]["seconds"] = total_s[name]
    return rows, n, correct / n


def _summary(metric: Metric, values: np.ndarray, counts: list[np.ndarray]) -> tuple[float, float]:
    """(value, 95 % CI half-width). A pooled metric (mIoU) is reported pooled, as the benchmark does, with a
    bootstrap over images for its CI; the others are means over images with the normal CI."""
    if metric.aggregation == "pooled":
        c = np.concatenate(counts)
        rng = np.random.default_rng(0)
        resamples = rng.integers(0, len(c), size=(BOOTSTRAP, len(c)))
        boot = [metric.pooled_value(c[idx]) for idx in resamples]
        return metric.pooled_value(c), float(1.96 * np.std(boot, ddof=1))
    return _mean_ci(values)


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


def select_on_val(task: str, adapter, args) -> dict[str, Any]:
    """Score the LETA grid and the task's pLTEs on validation images; choose one of each by :func:`choose`."""
    candidates = {leta_name(w): leta_method(adapter, args, w) for w in LETA_GRID}
    pltes = pltes_for(task, args)
    candidates.update({name: get_method("plte", adapter, explainer=folder) for name, folder in pltes.items()})
    radius = candidates["leta"].explainer.radius
    candidates[f"object mask on the patch grid, pooled {2 * radius + 1}×{2 * radius + 1} (reference)"] = PatchGridMask(
        adapter, radius
    )
    candidates["object mask on the patch grid, no pooling (reference)"] = PatchGridMask(adapter, 0)
    rows, n, accuracy = score_methods(
        adapter, args.select_split, task, args.select_images, candidates, SELECT_METRICS, args
    )
    leta_names = [leta_name(w) for w in LETA_GRID]
    chosen_name = choose(rows, leta_names)
    return {
        "split": args.select_split,
        "images": n,
        "accuracy": accuracy,
        "rows": rows,
        "leta": LETA_GRID[leta_names.index(chosen_name)],
        "plte": choose(rows, list(pltes)) if pltes else None,
        "leta_grid_seconds": sum(rows[name]["seconds"] for name in leta_names),
    }


def levers_on_val(args) -> str:
    """A markdown section: LETA explainers pre-trained otherwise (``--lever LABEL=DIR``) next to the shipped
    one, each with :data:`LEVER_VARIANTS`, on the validation images only (a lever is judged before any
    test image is read)."""
    explainers_ = {"shipped": args.explainer, **{k: Path(v) for k, v in (i.split("=", 1) for i in args.lever)}}
    lines = [
        "## Re-pretraining levers (validation only)",
        "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}` on {machine()}. Each LETA "
        f"explainer on the first {args.select_images} images of the `{args.select_split}` split, with "
        "λ⁻ ∈ {1, 0} (λ⁺ = 1), pooled over its own window or not at all.",
        "",
        "| explainer | radius | pre-training | val loss ψ⁺ / ψ⁻ (R²) |",
        "|---|---:|---|---|",
    ]
    for label, folder in explainers_.items():
        cfg = json.loads((folder / "config.json").read_text())
        train, val = cfg["training"], cfg["training"].get("final_val", {})
        lines.append(
            f"| {label} | {cfg['config']['radius']} | {train['steps']} steps, {train['wall_s']} s: "
            f"`{train['command']}` | {val.get('val_loss_pos', float('nan')):.3f} "
            f"({val.get('val_r2_pos', float('nan')):.2f}) / {val.get('val_loss_neg', float('nan')):.3f} "
            f"({val.get('val_r2_neg', float('nan')):.2f}) |"
        )
    labels = [label for _, _, label in SELECT_METRICS]
    for task in args.tasks:
        print(f"levers: task {task}", file=sys.stderr)
        adapter, _ = task_adapter(task, args)
        candidates = {}
        for label, folder in explainers_.items():
            radius = json.loads((folder / "config.json").read_text())["config"]["radius"]
            for lam_pos, lam_neg, pool in LEVER_VARIANTS:
                pooled = radius if pool is None else pool
                name = f"{label}: λ⁻={lam_neg:g}, pool {pooled}"
                if name not in candidates:
                    candidates[name] = leta_method(adapter, args, (lam_pos, lam_neg, pool), folder)
        rows, _, _ = score_methods(
            adapter, args.select_split, task, args.select_images, candidates, SELECT_METRICS, args
        )
        lines += ["", f"### `{task}`", "", "| explainer: variant | " + " | ".join(labels) + " |"]
        lines.append("|---|" + "---:|" * len(labels))
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[lb][0]:.2f} ± {row[lb][1]:.2f}" for lb in labels) + " |")
    lines.append("")
    return "\n".join(lines)


def methods_for(task: str, adapter, args, chosen: tuple[float, float, int | None]) -> dict[str, Any]:
    out: dict[str, Any] = {"leta": leta_method(adapter, args, DEFAULT_LETA)}
    if chosen != DEFAULT_LETA:
        out[leta_name(chosen)] = leta_method(adapter, args, chosen)
    for name, folder in pltes_for(task, args).items():
        out[name] = get_method("plte", adapter, explainer=folder)
    for name in args.baselines:
        out[name] = get_method(name, adapter, **METHOD_OPTIONS.get(name, {}))
    return out


def evaluate_task(task: str, args) -> dict[str, Any]:
    adapter, probe_dir = task_adapter(task, args)
    selection = select_on_val(task, adapter, args) if args.select_images > 0 else None
    chosen = selection["leta"] if selection else DEFAULT_LETA
    methods = methods_for(task, adapter, args, chosen)
    rows, n, accuracy = score_methods(adapter, "test", task, args.images, methods, METRICS, args)
    return {
        "task": task,
        "images": n,
        "accuracy": accuracy,
        "rows": rows,
        "selection": selection,
        "chosen_leta": leta_name(chosen),
        "plte": selection["plte"] if selection else next(iter(pltes_for(task, args)), None),
        "probe": json.loads((probe_dir / "config.json").read_text()) if probe_dir else None,
        "adapter": adapter,
        "methods": methods,
    }


def latency(result: dict[str, Any], data: str, batch: int, repeats: int) -> dict[str, float]:
    adapter, methods = result["adapter"], result["methods"]
    dataset = open_dataset(data, split="test", task=result["task"])
    images = next(iter_batches(dataset, batch, adapter.input_geometry, list(range(batch)))).images
    fns = {name: (lambda m=m: m(images)) for name, m in methods.items()}
    fns["explainee forward"] = lambda: adapter.predict(images)
    medians = interleaved_medians(fns, repeats=repeats, warmup=1)
    return {name: s / batch for name, s in medians.items()}


def plte_record(folder: Path) -> dict[str, Any]:
    """What a pLTE folder says about its own training: command, best epoch, wall time (the last log record's
    ``time_s``, seconds since the run started)."""
    config = json.loads((folder / "config.json").read_text())
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    timed = [r["time_s"] for r in records if "time_s" in r]
    return {
        "command": config.get("training", {}).get("command"),
        "best_epoch": config.get("training", {}).get("epoch"),
        "epochs": config.get("config", {}).get("epochs"),
        "head": config.get("config", {}).get("head", "patch"),
        "train_s": timed[-1] if timed else None,
    }


def _ratio_cells(label: str, plte: float, leta: float) -> tuple[str, str]:
    """(ratio LETA / pLTE, target met?) — deletion: LETA ≤ 1.10 × pLTE; mIoU: LETA ≥ 0.90 × pLTE."""
    ratio = leta / plte
    met = ratio <= 1.10 if label == DELETION else ratio >= 0.90
    return f"{ratio:.3f}", "**yes**" if met else "no"


def render_summary(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Summary: LETA against the pLTE trained on the task (test images)",
        "",
        "Target: LETA within 10 % of the pLTE trained on the task, on patch-deletion with mean fill (lower is "
        'better: LETA ≤ 1.10 × pLTE) and on mIoU (higher is better: LETA ≥ 0.90 × pLTE). "pLTE" is the one '
        'of the task\'s pLTEs chosen on validation; "LETA chosen" is the λ⁺/λ⁻ variant chosen on validation '
        "(both by the rule below). The target applies to `color` and `size`; `quadrant` (a probe at chance) "
        "and `shape` (the explainee's own head) have no task pLTE and are shown for LETA only.",
        "",
        "| task | metric | pLTE | LETA default (λ⁺=1, λ⁻=1, pooled over its window) | LETA chosen on val "
        "| ratio default | ratio chosen | target met (default) | target met (chosen) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for res in results:
        rows, plte, chosen = res["rows"], res["plte"], res["chosen_leta"]
        for label in (DELETION, MIOU):
            default_v, chosen_v = rows["leta"][label][0], rows[chosen][label][0]
            cells = [res["task"], label.split(" ")[0], "—", f"{default_v:.2f}", f"{chosen_v:.2f} ({chosen})"]
            if plte:
                plte_v = rows[plte][label][0]
                cells[2] = f"{plte_v:.2f} ({plte})"
                r_d, m_d = _ratio_cells(label, plte_v, default_v)
                r_c, m_c = _ratio_cells(label, plte_v, chosen_v)
                cells += [r_d, r_c, m_d, m_c]
            else:
                cells += ["—", "—", "—", "—"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def render_selection(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Validation: the choice of λ⁺/λ⁻ (and of the pLTE)",
        "",
        "Rule: per task, the candidate with the lowest mean patch-deletion (mean fill) on the validation "
        "images wins; a tie goes to the earlier row (the default LETA is first). The same rule picks the "
        "task's pLTE among those given. Since LETA's map is min–max normalised, only λ⁻/λ⁺ matters; the grid "
        "covers λ⁻/λ⁺ ∈ {0, ¼, ½, 1, 2, 4, ∞}, each with the reference's mean pool over the explainer's "
        "3×3 window and without pooling (`pool 0`: the explain-time option `pool_radius=0`). "
        "The `object mask on the patch grid` rows are references, not candidates: the scene's object mask "
        "averaged over each patch and shown as a patch map is drawn (pooled like LETA's map or not), i.e. the "
        "best that a map on the 8×8 patch grid can score on the mask metrics. "
        "No test image is read here. The seconds are the wall time to "
        "explain and score the validation images (LETA's cost of choosing is the sum over its rows).",
        "",
    ]
    for res in results:
        sel = res["selection"]
        if not sel:
            continue
        labels = [label for _, _, label in SELECT_METRICS]
        lines += [
            f"### `{res['task']}`: first {sel['images']} images of the `{sel['split']}` split "
            f"(accuracy {sel['accuracy']:.3f}); LETA's grid took {sel['leta_grid_seconds']:.0f} s",
            "",
            "| candidate | " + " | ".join(labels) + " | s |",
            "|---|" + "---:|" * (len(labels) + 1),
        ]
        for name, row in sel["rows"].items():
            picked = name in (leta_name(sel["leta"]), sel["plte"])
            cells = [f"{row[label][0]:.2f} ± {row[label][1]:.2f}" for label in labels]
            shown = f"**{name}** ← chosen" if picked else name
            lines.append(f"| {shown} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
        lines.append("")
    return lines


def render(results: list[dict[str, Any]], lat: dict[str, float], args, leta_cfg: dict, lat_batch: int) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    train = leta_cfg.get("training", {})
    lines = [
        "# LETA on the embedded benchmark",
        "",
        f"Generated {now} by `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}` on {machine()}.",
        "",
        "One LETA explainer (`src/explainers/assets/leta`), pre-trained once on the unlabelled training images "
        "for the shipped explainee's encoder, explains every task below through the transfer rule "
        "(no training on any task). Each task's classifier is a linear probe on the frozen CLS embedding "
        "(`assets/probes/<task>`; `shape` is the explainee's own head); methods explain the predicted class.",
        "",
        f"Test images: first {results[0]['images']} of the test split per task. Patch metrics: "
        "8×8 = 64 patches ranked by the map's per-patch mean, 65 points, AUC ×100 of the probability of the "
        "explained class (deletion: lower is better; insertion: higher). Removed patches are filled with the "
        "encoder's mean colour (0 in its normalised space, how LETA masks) or black. Against the object's mask: "
        "mIoU (map thresholded at its mean, pooled over the images; ± from 1000 bootstrap resamples of the "
        "images), pointing game and energy in the ground truth (means over images). ± is the 95% CI half-width "
        f"over images. Reduced settings: {json.dumps(METHOD_OPTIONS)}.",
        "",
    ]
    lines += render_summary(results)
    lines += render_selection(results)
    lines += ["## Test tables", ""]
    for res in results:
        probe = res["probe"]
        head = (
            f"linear probe, test accuracy {probe['metrics'].get('test_accuracy', float('nan')):.3f}"
            if probe
            else "the explainee's own head"
        )
        lines += [f"### Task `{res['task']}` ({head}; accuracy on these images {res['accuracy']:.3f})", ""]
        labels = [label for _, _, label in METRICS]
        lines.append("| method | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        order = sorted(res["rows"], key=lambda m: res["rows"][m][labels[0]][0])
        for name in order:
            row = res["rows"][name]
            cells = [f"{row[label][0]:.2f} ± {row[label][1]:.2f}" for label in labels]
            bold = "**" if name.startswith("leta") else ""
            note = ""
            if name == res["chosen_leta"]:
                note = " (chosen on val)"
            if name == res["plte"] and len(pltes_for(res["task"], args)) > 1:
                note = " (chosen on val)"
            lines.append(f"| {bold}{name}{bold}{note} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Latency",
        "",
        f"Median over round-robin repeats of one call on a batch of {lat_batch} images "
        f"(the `{results[0]['task']}` task's adapter; all tasks share the architecture).",
        "",
        "| method | ms / image | × explainee forward |",
        "|---|---:|---:|",
    ]
    fwd = lat["explainee forward"]
    for name, s in sorted(lat.items(), key=lambda kv: kv[1]):
        lines.append(f"| {name} | {1000 * s:.2f} | {s / fwd:.1f} |")
    lines += ["", "## Training cost", ""]
    wall = train.get("wall_s")
    lines.append(
        f"- LETA pre-training, once per encoder (task-agnostic, labels unused): {train.get('steps')} steps × "
        f"{train.get('config', {}).get('batch_size')} images × {train.get('config', {}).get('centres')} centres "
        f"({train.get('masked_targets')} masked encoder forwards), {wall} s wall-clock on "
        f"{train.get('world_size')} process(es), {train.get('device')}. Command: `{train.get('command')}`. "
        "It is shared by every task on this encoder."
    )
    for res in results:
        probe = res["probe"]
        if probe:
            cost = probe.get("cost_s", {})
            lines.append(
                f"- `{res['task']}` probe (needed by every method, the downstream model itself): "
                f"features {cost.get('features')} s + fit {cost.get('fit')} s. LETA's own per-task training: 0 s."
            )
    plte_lines = []
    for res in results:
        sel = res["selection"]
        choice = f"{sel['leta_grid_seconds']:.0f}" if sel else "—"
        for name, folder in pltes_for(res["task"], args).items():
            rec = plte_record(folder)
            chosen = " (chosen on val)" if name == res["plte"] else ""
            plte_lines.append(
                f"| `{res['task']}` | {name}{chosen} | {rec['head']} | {rec['epochs']} (best {rec['best_epoch']}) | "
                f"{rec['train_s']} | 0 | {choice} | `{rec['command']}` |"
            )
    if plte_lines:
        lines += [
            "",
            "Per-task cost: training the task's pLTE (wall time: the last record's `time_s` in the pLTE folder's "
            "`log.jsonl`) against LETA's per-task training (none) and the time LETA's λ/pooling choice took on "
            "the validation images (explaining and scoring its grid; needed only when a variant other than the "
            "default is used).",
            "",
            "| task | pLTE | head | epochs | pLTE training s | LETA training s | LETA choice on val s | pLTE command |",
            "|---|---|---|---|---:|---:|---:|---|",
            *plte_lines,
        ]
    if args.plte_note:
        lines += ["", args.plte_note]
    lines.append("")
    return "\n".join(lines)


def raw_results(results: list[dict[str, Any]], lat: dict[str, float]) -> dict[str, Any]:
    tasks = {
        r["task"]: {
            "images": r["images"],
            "accuracy": r["accuracy"],
            "rows": r["rows"],
            "chosen_leta": r["chosen_leta"],
            "plte": r["plte"],
            "selection": r["selection"],
        }
        for r in results
    }
    return {"tasks": tasks, "latency_s_per_image": lat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="synthetic:DIR of the embedded benchmark")
    parser.add_argument("--encoder", default="embedded", help="the explainee whose encoder LETA explains")
    parser.add_argument("--tasks", nargs="+", default=["color", "size", "quadrant", "shape"])
    parser.add_argument("--images", type=int, default=200, help="test images per task (the first N)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--explainer", type=Path, default=ASSETS / "leta")
    parser.add_argument("--probes", type=Path, default=ASSETS / "probes")
    parser.add_argument("--baselines", nargs="*", default=BASELINES)
    parser.add_argument(
        "--plte", nargs="*", default=[], help="TASK=DIR of a pLTE trained on that task (several per task allowed)"
    )
    parser.add_argument("--plte-note", default="", help="text on pLTE training for the report")
    parser.add_argument("--select-split", default="val", help="split the λ⁺/λ⁻ variant and the pLTE are chosen on")
    parser.add_argument(
        "--select-images", type=int, default=200, help="images of --select-split per task (0: no selection)"
    )
    parser.add_argument(
        "--lever",
        nargs="*",
        default=[],
        help="LABEL=DIR of a LETA explainer pre-trained otherwise: with --levers-only, score it next to the "
        "shipped one on the validation images and write only that table to --out",
    )
    parser.add_argument("--levers-only", action="store_true", help="only the --lever validation table")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/leta.md"))
    args = parser.parse_args()
    if args.select_images > 0 and args.select_split == "test":
        parser.error("--select-split test would choose on the images the report scores; use val")
    torch.set_num_threads(args.threads)
    leta_cfg = json.loads((args.explainer / "config.json").read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.levers_only:
        if args.select_split == "test":
            parser.error("levers are judged on validation images; use --select-split val")
        text = levers_on_val(args)
        write_text_atomic(args.out, text)
        print(text)
        return
    results: list[dict[str, Any]] = []
    lat: dict[str, float] = {}
    for task in args.tasks:
        print(f"task {task}", file=sys.stderr)
        results.append(evaluate_task(task, args))
        if not lat:  # timed on the first task's adapter (all tasks share the architecture)
            lat = latency(results[0], args.data, args.latency_batch, args.repeats)
        # Written after every task, so that an interrupted run leaves the tasks it finished.
        text = render(results, lat, args, leta_cfg, args.latency_batch)
        write_text_atomic(args.out, text)
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(raw_results(results, lat), indent=1))
    print(text)


if __name__ == "__main__":
    main()
