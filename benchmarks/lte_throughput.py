"""pLTE and LTE explaining speed, measured side by side in one run (interleaved repeats, medians).

- pLTE throughput relative to one explainee forward on the same batch (target ≥ 0.8×);
- LTE batched refinement (per-image parameters through ``torch.func``) relative to the one-by-one loop on
  the same images, with early stopping off so both do the same work (target ≥ 2× at batch 16).

    python benchmarks/lte_throughput.py --data synthetic:DIR [--explainer DIR] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path

import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import interleaved_medians, machine
from explainers.data import iter_batches, open_dataset
from explainers.learned import LTEExplainer
from explainers.methods import get_method
from explainers.methods.plte import resolve_explainer_dir
from explainers.models import load_explainee


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--explainee", default="embedded")
    parser.add_argument("--explainer", default=None, help="pLTE checkpoint (default: the shipped one)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch", type=int, default=64, help="images per pLTE / forward call")
    parser.add_argument("--refine-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="refinement steps (no early stop)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adapter = load_explainee(args.explainee)
    explainer_dir = resolve_explainer_dir(adapter, args.explainer)
    explainer = LTEExplainer.from_pretrained(explainer_dir, explainee=adapter)
    dataset = open_dataset(args.data, split=args.split)
    n = max(args.batch, args.refine_batch)
    batch = next(iter_batches(dataset, n, adapter.input_geometry))
    images, labels = batch.images, batch.labels
    x, y = images[: args.batch], labels[: args.batch]
    plte = get_method("plte", adapter, explainer=str(explainer_dir))
    r_images, r_labels = images[: args.refine_batch], labels[: args.refine_batch]
    refine = dict(steps=args.steps, stop_below=-1.0, batch_size=args.refine_batch)

    with torch.inference_mode():
        fwd = interleaved_medians(
            {
                "explainee forward": lambda: adapter.predict(x),
                "pLTE explainer(images)": lambda: explainer(x),
                "pLTE method (min-max, targets given)": lambda: plte(x, y),
            },
            repeats=args.repeats,
        )
    ref = interleaved_medians(
        {
            "LTE parallel": lambda: explainer.refine(r_images, r_labels, parallel=True, **refine),
            "LTE one-by-one": lambda: explainer.refine(r_images, r_labels, parallel=False, **refine),
        },
        repeats=max(3, args.repeats // 2),
        warmup=1,
    )
    base = fwd["explainee forward"]
    rows = [f"| {k} | {args.batch} | {args.batch / v:.0f} | {base / v:.2f}× |" for k, v in fwd.items()]
    lte_rows = [
        f"| {k} | {args.refine_batch} | {args.steps} | {v:.2f} | {args.refine_batch / v:.2f} | "
        f"{ref['LTE one-by-one'] / v:.2f}× |"
        for k, v in ref.items()
    ]
    load = os.getloadavg()
    report = "\n".join(
        [
            f"Measured {datetime.date.today().isoformat()} on {machine()}; load average during the run "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min).",
            f"Command: `python benchmarks/{Path(__file__).name} {shlex.join(sys.argv[1:])}`",
            f"Explainee `{adapter.identifier}` ({adapter.image_size[0]}×{adapter.image_size[1]}, grid "
            f"{adapter.grid[0]}×{adapter.grid[1]}, {adapter.num_blocks} blocks, width {adapter.embed_dim}); "
            f"explainer `{explainer_dir}`.",
            "",
            "| pLTE vs forward | batch | images/s | relative to explainee forward |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "| LTE refinement (no early stop) | images | steps | s per batch | images/s "
            "| speed-up vs one-by-one |",
            "|---|---:|---:|---:|---:|---:|",
            *lte_rows,
        ]
    )
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
