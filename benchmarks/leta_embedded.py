"""LETA on the embedded benchmark: one pre-trained explainer, several downstream tasks, no task training.

    python benchmarks/leta_embedded.py --data synthetic:DIR [--images 200] [--out benchmarks/results/leta.md]

For each task (``color`` and ``quadrant``: linear probes on the shipped explainee's frozen CLS embedding,
``shape``: the explainee's own head) the explainee is the encoder with that head (``probe_explainee``),
so every method and metric runs on the downstream task unchanged. LETA explains every task with the ONE
shipped explainer (``assets/leta``, pre-trained without labels) through the transfer rule; the baselines
read the same adapter; pLTE is included for a task when a pLTE trained on that task is given
(``--plte TASK=DIR``).

Fidelity: the patch-level deletion / insertion of docs/metrics.md (whole patches in the map's patch order,
g²+1 points, softmax probability of the explained = predicted class, ×100 AUC), with removed patches
filled with the encoder's mean colour (LETA's own masking, ``fill=mean``) and, for deletion, also black.
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

import explainers
from _timing import interleaved_medians, machine
from explainers.data import open_dataset
from explainers.data.base import iter_batches
from explainers.methods import get_method
from explainers.metrics.base import BatchContext, MetricInputs, get_metric
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
METRICS = [
    ("patch-deletion", {"fill": "mean"}, "patch-del ↓ (mean fill)"),
    ("patch-insertion", {"fill": "mean"}, "patch-ins ↑ (mean fill)"),
    ("patch-deletion", {"fill": "black"}, "patch-del ↓ (black)"),
]


def task_adapter(task: str, args):
    if task == "shape":
        return load_explainee(args.encoder), None
    probe_dir = args.probes / task
    return probe_explainee(probe_dir, encoder=args.encoder), probe_dir


def methods_for(task: str, adapter, args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    leta_dir = args.explainer
    out["leta"] = get_method("leta", adapter, explainer=leta_dir)
    out["leta (λ⁻=0)"] = get_method("leta", adapter, explainer=leta_dir, lambda_neg=0.0)
    plte = dict(item.split("=", 1) for item in args.plte)
    if task in plte:
        out["plte (trained on this task)"] = get_method("plte", adapter, explainer=plte[task])
    for name in args.baselines:
        out[name] = get_method(name, adapter, **METHOD_OPTIONS.get(name, {}))
    return out


def evaluate_task(task: str, args) -> dict[str, Any]:
    adapter, probe_dir = task_adapter(task, args)
    dataset = open_dataset(args.data, split="test", task=task)
    n = min(args.images, len(dataset))
    methods = methods_for(task, adapter, args)
    metrics = [(get_metric(name, **opts), label) for name, opts, label in METRICS]
    values: dict[str, dict[str, list[float]]] = {m: {label: [] for _, label in metrics} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    correct = 0
    for batch in iter_batches(dataset, args.batch, adapter.input_geometry, list(range(n))):
        images = batch.images
        with torch.no_grad():
            logits = adapter.predict(images)
        predicted = logits.argmax(1)
        correct += int((predicted == batch.labels).sum())
        for name, method in methods.items():
            start = time.perf_counter()
            maps = method(images, predicted)
            seconds[name] += time.perf_counter() - start
            ctx = BatchContext(adapter, MetricInputs(images, maps, predicted, logits, batch.ids), max_batch=256)
            for metric, label in metrics:
                values[name][label].extend(metric.compute(ctx).values.tolist())
        print(f"  {task}: {len(values['leta'][metrics[0][1]])}/{n} images", file=sys.stderr)
    rows = {}
    for name in methods:
        rows[name] = {label: _mean_ci(v) for label, v in values[name].items()}
        rows[name]["s_per_image_in_eval"] = seconds[name] / n
    return {
        "task": task,
        "images": n,
        "accuracy": correct / n,
        "rows": rows,
        "probe": json.loads((probe_dir / "config.json").read_text()) if probe_dir else None,
        "adapter": adapter,
        "methods": methods,
    }


def _mean_ci(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


def latency(result: dict[str, Any], data: str, batch: int, repeats: int) -> dict[str, float]:
    adapter, methods = result["adapter"], result["methods"]
    dataset = open_dataset(data, split="test", task=result["task"])
    images = next(iter_batches(dataset, batch, adapter.input_geometry, list(range(batch)))).images
    fns = {name: (lambda m=m: m(images)) for name, m in methods.items()}
    fns["explainee forward"] = lambda: adapter.predict(images)
    medians = interleaved_medians(fns, repeats=repeats, warmup=1)
    return {name: s / batch for name, s in medians.items()}


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
        "encoder's mean colour (0 in its normalised space, how LETA masks) or black. ± is the 95% CI half-width "
        f"over images. Reduced settings: {json.dumps(METHOD_OPTIONS)}.",
        "",
    ]
    for res in results:
        probe = res["probe"]
        head = (
            f"linear probe, test accuracy {probe['metrics'].get('test_accuracy', float('nan')):.3f}"
            if probe
            else "the explainee's own head"
        )
        lines += [f"## Task `{res['task']}` ({head}; accuracy on these images {res['accuracy']:.3f})", ""]
        labels = [label for _, _, label in METRICS]
        lines.append("| method | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        order = sorted(res["rows"], key=lambda m: res["rows"][m][labels[0]][0])
        for name in order:
            row = res["rows"][name]
            cells = [f"{row[label][0]:.2f} ± {row[label][1]:.2f}" for label in labels]
            bold = "**" if name.startswith("leta") else ""
            lines.append(f"| {bold}{name}{bold} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Latency",
        "",
        f"Median over round-robin repeats of one call on a batch of {lat_batch} images "
        "(the `color` task's adapter; all tasks share the architecture).",
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
        f"{train.get('world_size')} process(es), {train.get('device')}. Command: `{train.get('command')}`."
    )
    for res in results:
        probe = res["probe"]
        if probe:
            cost = probe.get("cost_s", {})
            lines.append(
                f"- `{res['task']}` probe (needed by every method, the downstream model itself): "
                f"features {cost.get('features')} s + fit {cost.get('fit')} s. LETA's own per-task training: 0 s."
            )
    lines += [f"- Per-task cost LETA saves: training a task-specific learned explainer. {args.plte_note}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="synthetic:DIR of the embedded benchmark")
    parser.add_argument("--encoder", default="embedded", help="the explainee whose encoder LETA explains")
    parser.add_argument("--tasks", nargs="+", default=["color", "size", "quadrant", "shape"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--explainer", type=Path, default=ASSETS / "leta")
    parser.add_argument("--probes", type=Path, default=ASSETS / "probes")
    parser.add_argument("--baselines", nargs="*", default=BASELINES)
    parser.add_argument("--plte", nargs="*", default=[], help="TASK=DIR of a pLTE trained on that task")
    parser.add_argument("--plte-note", default="", help="text on pLTE training cost for the report")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/leta.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for task in args.tasks:
        print(f"task {task}", file=sys.stderr)
        results.append(evaluate_task(task, args))
    lat_task = next((r for r in results if r["task"] == "color"), results[0])
    lat = latency(lat_task, args.data, args.latency_batch, args.repeats)
    leta_cfg = json.loads((args.explainer / "config.json").read_text())
    text = render(results, lat, args, leta_cfg, args.latency_batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {r["task"]: {"images": r["images"], "accuracy": r["accuracy"], "rows": r["rows"]} for r in results}
    args.out.with_suffix(".json").write_text(json.dumps({"tasks": raw, "latency_s_per_image": lat}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
