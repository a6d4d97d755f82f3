"""Quality of LTE / pLTE against the random floor on the embedded benchmark, with the shared metrics.

Explains the first ``--limit`` images of the synthetic test split with ``random``, ``plte`` and ``lte``
(mask files in ``--work``, resumable), then scores them: POS/NEG accuracy AUC, deletion / insertion and
the segmentation tests. POS/NEG/deletion/insertion explain and score the ground-truth class (the LTE
reference convention: LTE refines towards the class its pLTE was trained for and selects steps on the
ground truth); the segmentation tests use maps of the predicted class (docs/metrics.md) — LTE is refined again,
towards and selected on the prediction (``refine_class``/``select_class=predicted``), for the images the
explainee gets wrong (pLTE and random maps do not depend on the class, so their target-class files are
scored there with ``allow_mismatch``, recorded in the report).

    python benchmarks/lte_eval.py --data synthetic:DIR --work /tmp/lte-eval [--limit 500] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import machine
from explainers.data import open_dataset
from explainers.explain import explain_dataset
from explainers.io.maskfile import MaskFile
from explainers.methods import get_method
from explainers.metrics import evaluate_maskfiles
from explainers.metrics.report import to_markdown
from explainers.models import load_explainee

PERTURBATION = ["pos", "neg", "deletion", "neg-deletion", "insertion"]
SEGMENTATION = ["pixel-accuracy", "miou", "map"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--explainee", default="embedded")
    parser.add_argument("--explainer", default=None, help="pLTE checkpoint (default: the shipped one)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--work", type=Path, required=True, help="folder for the mask files")
    parser.add_argument("--lte-option", action="append", default=[], help="LTE option KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    from explainers.cli.explain import parse_key_values

    adapter = load_explainee(args.explainee)
    dataset = open_dataset(args.data, split=args.split)
    explainer = {} if args.explainer is None else {"explainer": args.explainer}
    methods = {
        "random": get_method("random", adapter),
        "plte": get_method("plte", adapter, **explainer),
        "lte": get_method("lte", adapter, **explainer, **parse_key_values(args.lte_option, "--lte-option")),
    }
    seconds: dict[str, float] = {}
    files: dict[str, Path] = {}
    for name, method in methods.items():
        path = args.work / f"{name}-target.h5"
        summary = explain_dataset(
            method, dataset, path, batch_size=16, targets="target", limit=args.limit, dataset_spec=args.data
        )
        files[name] = path
        seconds[name] = (
            summary.seconds / max(1, summary.written) if summary and summary.written else float("nan")
        )
    # Segmentation: maps of the predicted class. Only LTE depends on the class.
    seg_files = dict(files)
    with MaskFile(files["lte"]) as mf:
        wrong = int((mf.labels != mf.predicted).sum())
        steps, scores = mf.extra("selected_step"), mf.extra("selected_score")
    if wrong:
        path = args.work / "lte-predicted.h5"
        lte_options = parse_key_values(args.lte_option, "--lte-option")
        explain_dataset(
            get_method("lte", adapter, **explainer, **lte_options, refine_class="predicted", select_class="predicted"),
            dataset,
            path,
            batch_size=16,
            targets="predicted",
            limit=args.limit,
            dataset_spec=args.data,
        )
        seg_files["lte"] = path
    pert = evaluate_maskfiles(
        adapter, dataset, list(files.values()), PERTURBATION, classes="target", dataset_spec=args.data
    )
    seg = evaluate_maskfiles(
        adapter,
        dataset,
        list(seg_files.values()),
        SEGMENTATION,
        classes="predicted",
        allow_mismatch=True,  # random/pLTE maps do not depend on the class they were made for
        dataset_spec=args.data,
    )
    load = os.getloadavg()
    hist = np.bincount(steps, minlength=int(steps.max()) + 1)
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.",
        f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`",
        f"LTE options: {methods['lte'].config()}",
        f"Explainee misclassifies {wrong} of {len(steps)} images (segmentation maps: predicted class).",
        "",
        "## Perturbation tests (ground-truth class)",
        "",
        to_markdown(pert),
        "## Segmentation tests (predicted class)",
        "",
        to_markdown(seg),
        "## LTE step selection",
        "",
        f"- selected step: mean {steps.mean():.2f}, median {np.median(steps):.0f}; histogram (step: images) "
        + ", ".join(f"{i}: {c}" for i, c in enumerate(hist) if c),
        f"- selected POS-AUC: mean {scores.mean():.2f}; below the 6.0 stop: {(scores < 6.0).mean():.1%}",
        "",
        "## Explaining time (wall clock, s per image, one process)",
        "",
        *[f"- {k}: {v:.4f}" for k, v in seconds.items()],
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
