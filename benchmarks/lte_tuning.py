"""Grid search of the pLTE pre-training settings (λ_mask, learning rate, schedule) for an explainee.

Each setting is a full ``pretrain_lte`` run into ``WORK/<name>`` (resumable: rerun to continue), selected
on its validation POS-AUC as the method prescribes; the table also gives the validation NEG-AUC and the
mean mask value of the selected checkpoint, so a setting that wins POS with a degenerate mask shows.

    python benchmarks/lte_tuning.py --data synthetic:DIR --work /tmp/lte-tune \
        --lambda-mask 1,3,10 --lr 2e-3,5e-4 [--set epochs=10 ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import machine
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.pretrain import open_training_data, pretrain_lte, select_subsets
from explainers.learned.lte.scoring import perturbation_auc
from explainers.models import load_explainee


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


@torch.no_grad()
def _validation_extras(out: Path, adapter, dataset, config: LTEConfig) -> dict[str, float]:
    """NEG-AUC and mean mask of the selected checkpoint on the run's own validation images."""
    explainer = LTEExplainer.from_pretrained(out, explainee=adapter)
    ids = set(json.loads((out / "subsets.json").read_text())["val"])
    _, val = select_subsets(list(dataset.labels), config.train_per_class, config.val_per_class, config.seed)
    val = [i for i in val if dataset.ids[i] in ids]
    from explainers.data import iter_batches

    neg, masks = [], []
    for batch in iter_batches(dataset, 64, adapter.input_geometry, val):
        m = explainer(batch.images)
        classes = batch.labels if config.class_mode == "target" else adapter.predict(batch.images).argmax(-1)
        neg.append(perturbation_auc(adapter, batch.images, m, classes, "neg"))
        masks.append(m.mean(dim=(1, 2)))
    return {"val_neg_auc": torch.cat(neg).mean().item(), "mean_mask": torch.cat(masks).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--explainee", default="embedded")
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--lambda-mask", type=_floats, default=[1.0, 3.0, 10.0])
    parser.add_argument("--lr", type=_floats, default=[2e-3])
    parser.add_argument("--schedule", default="linear", help="comma-separated: linear,reference,constant")
    parser.add_argument("--set", action="append", default=[], help="fixed LTE setting KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from explainers.cli.explain import parse_key_values

    fixed = parse_key_values(args.set, "--set")
    adapter = load_explainee(args.explainee)
    rows = []
    for lam, lr, schedule in itertools.product(args.lambda_mask, args.lr, args.schedule.split(",")):
        config = LTEConfig.from_dict({**fixed, "lambda_mask": lam, "lr": lr, "schedule": schedule})
        name = f"lam{lam:g}_lr{lr:g}_{schedule}"
        t0 = time.perf_counter()
        result = pretrain_lte(adapter, args.data, args.work / name, config, progress=False)
        took = time.perf_counter() - t0
        dataset = open_training_data(args.data, config.split)
        extras = _validation_extras(args.work / name, adapter, dataset, config)
        curve = " ".join(f"{r['val_pos_auc']:.1f}" for r in result.log)
        rows.append(
            (
                result.best_val_auc,
                f"| {lam:g} | {lr:g} | {schedule} | {result.best_epoch} | "
                f"{result.best_val_auc:.2f} | {extras['val_neg_auc']:.2f} | {extras['mean_mask']:.3f} | "
                f"{took / 60:.1f} | {curve} |",
            )
        )
        print(rows[-1][1], flush=True)
    rows.sort(key=lambda r: r[0])
    load = os.getloadavg()
    report = "\n".join(
        [
            f"Measured {datetime.date.today().isoformat()} on {machine()}; load average at the end "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.",
            f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`",
            f"Fixed settings: {fixed}",
            "",
            "| λ_mask | lr | schedule | best epoch | val POS-AUC ↓ | val NEG-AUC ↑ | mean mask | minutes "
            "| val POS-AUC per epoch (0 = untrained) |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---|",
            *[r[1] for r in rows],
        ]
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
