"""Validation sweeps for the learned explainers of a benchmark scenario (pLTE training levers, LTE
refinement settings), scored with every benchmark metric on the scenario's **validation** split.

The benchmark's leaderboard reports test images; every choice here is made on the ``val`` split of the
same generated dataset, which neither pLTE training (it draws its own train/validation subsets from the
``train`` split) nor the leaderboard reads.

    # pLTE runs: each --run is NAME:KEY=VALUE,KEY=VALUE (LTE config keys), trained into WORK/NAME
    python benchmarks/lte_sweep.py train --explainee cue-vit --data synthetic:cue-data --work /tmp/sw \\
        --base lambda_mask=10,epochs=15,train_per_class=250,val_per_class=25 \\
        --run ref: --run lam3:lambda_mask=3 --images 200 --out rows.md
    # LTE refinement settings on one pLTE: each --refine is NAME:OPTION=VALUE,... (refine options)
    python benchmarks/lte_sweep.py refine --explainee cue-vit --explainer cue-plte --data synthetic:cue-data \\
        --refine plte: --refine ref:steps=25,lr=1e-4 --images 100 --out rows.md

Rows are printed as Markdown table rows as they finish (``--out`` appends them), so a long sweep can be
read while it runs and resumed (a pLTE run folder is resumed by ``pretrain_lte``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from explainers.data import iter_batches, open_dataset
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.pretrain import pretrain_lte
from explainers.methods.base import minmax_normalize
from explainers.metrics.base import BatchContext, MetricInputs, get_metric
from explainers.models import load_explainee

METRICS = ("pos", "neg", "deletion", "insertion", "miou", "pointing-game", "energy-in-gt")
HEADER = (
    "| setting | pos ↓ | neg ↑ | deletion ↓ | insertion ↑ | miou ↑ | pointing ↑ | energy ↑ "
    "| class-sens. ↑ | extra |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def parse_settings(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:K=V,K=V`` → (NAME, {K: V}) with JSON values where they parse."""
    name, _, rest = text.partition(":")
    out: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return name, out


def load_validation(data: str, adapter, images: int, split: str = "val") -> list:
    """The first ``images`` samples of the dataset's validation split, as batches of 50."""
    dataset = open_dataset(data, split=split)
    n = min(images, len(dataset))
    return list(iter_batches(dataset, 50, adapter.input_geometry, list(range(n))))


def score(adapter, batches: list, explain) -> dict[str, float]:
    """Mean of every benchmark metric (pooled mIoU) over the batches; ``explain(batch, classes)`` → maps."""
    per: dict[str, list[float]] = {m: [] for m in METRICS}
    per["class-sensitivity"] = []
    miou_counts = None
    for batch in batches:
        x = batch.images.to(adapter.device)
        with torch.no_grad():
            clean = adapter.predict(x).float()
        classes = batch.labels.to(x.device)
        maps = minmax_normalize(explain(batch, classes).float())
        inputs = MetricInputs(
            images=x,
            maps=maps,
            classes=classes,
            clean_logits=clean,
            ids=list(batch.ids),
            gt=None if batch.masks is None else batch.masks.to(x.device),
            counter=None if batch.counter is None else batch.counter.to(x.device),
        )
        ctx = BatchContext(adapter, inputs, max_batch=256)
        names = list(METRICS) + (["class-sensitivity"] if batch.counter is not None else [])
        for name in names:
            metric = get_metric(name)
            result = metric.compute(ctx)
            if metric.aggregation == "pooled":
                miou_counts = result.counts.sum(0) if miou_counts is None else miou_counts + result.counts.sum(0)
            else:
                per[name] += result.values.tolist()
    out = {k: sum(v) / len(v) for k, v in per.items() if v}
    if miou_counts is not None:
        out["miou"] = get_metric("miou").pooled_value(miou_counts[None])
    return out


def row(name: str, values: dict[str, float], extra: str = "") -> str:
    cells = [f"{values[m]:.2f}" if m in values else "—" for m in (*METRICS, "class-sensitivity")]
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def emit(line: str, out: Path | None) -> None:
    print(line, flush=True)
    if out is not None:
        with out.open("a") as f:
            f.write(line + "\n")


def cmd_train(args: argparse.Namespace) -> None:
    adapter = load_explainee(args.explainee)
    batches = load_validation(args.data, adapter, args.images, args.split)
    _, base = parse_settings("base:" + args.base)
    emit(f"<!-- train sweep, base {base}, {args.images} {args.split} images, {time.ctime()} -->", args.out)
    for spec in args.run:
        name, settings = parse_settings(spec)
        config = LTEConfig.from_dict({**base, **settings})
        t0 = time.perf_counter()
        result = pretrain_lte(adapter, args.data, args.work / name, config, progress=False)
        took = time.perf_counter() - t0
        explainer = LTEExplainer.from_pretrained(args.work / name, explainee=adapter)
        values = score(adapter, batches, lambda b, c, ex=explainer: ex(b.images, c))
        curve = " ".join(f"{r['val_pos_auc']:.1f}" for r in result.log)
        extra = (
            f"best epoch {result.best_epoch} (train-val POS {result.best_val_auc:.2f}); {took:.0f} s; "
            f"POS/epoch {curve}"
        )
        emit(row(f"{name} {settings}", values, extra), args.out)
        if result.last is not None and result.best_epoch != result.epochs_done:
            last = result.last
            values = score(adapter, batches, lambda b, c, ex=last: ex(b.images, c))
            emit(row(f"{name} {settings}, last epoch {result.epochs_done}", values), args.out)


def cmd_refine(args: argparse.Namespace) -> None:
    from explainers.learned.lte.refine import refine_images

    adapter = load_explainee(args.explainee)
    batches = load_validation(args.data, adapter, args.images, args.split)
    explainer = LTEExplainer.from_pretrained(args.explainer, explainee=adapter)
    emit(f"<!-- refine sweep of {args.explainer}, {args.images} {args.split} images, {time.ctime()} -->", args.out)
    for spec in args.refine:
        name, options = parse_settings(spec)
        steps_taken: list[torch.Tensor] = []
        if name.startswith("plte"):

            def explain(batch, classes):
                return explainer(batch.images, classes)

        elif name.startswith("gt"):  # reference points: the ground truth, and what a patch-grid head can draw

            def explain(batch, classes, patch=name == "gt-patch"):
                gt = batch.masks.float().to(adapter.device)
                if patch:
                    pooled = torch.nn.functional.adaptive_avg_pool2d(gt[:, None], adapter.grid)
                    gt = torch.nn.functional.interpolate(pooled, size=gt.shape[-2:], mode="bilinear")[:, 0]
                return gt

        else:

            def explain(batch, classes, options=options, steps_taken=steps_taken):
                result = refine_images(explainer, batch.images, classes, batch_size=args.batch, **options)
                steps_taken.append(result.selected_step)
                return result.maps

        t0 = time.perf_counter()
        values = score(adapter, batches, explain)
        took = time.perf_counter() - t0
        extra = f"{1000 * took / args.images:.0f} ms/image"
        if steps_taken:
            sel = torch.cat(steps_taken).float()
            extra += f"; selected step mean {sel.mean():.1f}, share >0: {(sel > 0).float().mean():.2f}"
        emit(row(f"{name} {options}", values, extra), args.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("train", "refine"):
        p = sub.add_parser(cmd)
        p.add_argument("--explainee", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--images", type=int, default=200)
        p.add_argument("--split", default="val")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--out", type=Path, default=None)
    t = sub.choices["train"]
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--base", default="")
    t.add_argument("--run", action="append", default=[])
    r = sub.choices["refine"]
    r.add_argument("--explainer", required=True)
    r.add_argument("--refine", action="append", default=[])
    r.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not args.out.exists():
            args.out.write_text(HEADER + "\n")
    {"train": cmd_train, "refine": cmd_refine}[args.cmd](args)


if __name__ == "__main__":
    main()
