"""Adapter forward overhead against the raw model (target ≤ 5 %), and the cost of the eager
attention path that attention-based methods need.

    python benchmarks/adapter_overhead.py [--out benchmarks/results/adapter_overhead.md]
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import build_vit, interleaved_medians, machine
from explainers.models import load_explainee


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapter_overhead.md")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    configs = {
        "embedded explainee": (None, 256),
        "ViT-B/16 config (224, 12×768)": ((224, 16, 768, 12, 12, 1000), 8),
    }
    rows = []
    for label, (cfg, batch) in configs.items():
        adapter = load_explainee("embedded") if cfg is None else load_explainee(build_vit(*cfg))
        model = adapter.model
        images = torch.rand(batch, 3, *adapter.image_size)
        pixels = adapter.normalize(images)
        with torch.inference_mode():
            t = interleaved_medians(
                {
                    "model": lambda: model(pixel_values=pixels).logits,  # noqa: B023
                    "adapter.logits": lambda: adapter.logits(pixels),  # noqa: B023
                    "adapter.predict": lambda: adapter.predict(images),  # noqa: B023
                    "forward_attentions": lambda: adapter.forward_attentions(pixels),  # noqa: B023
                },
                repeats=args.repeats,
            )
        base = t["model"]
        rows.append(
            f"| {label} | {batch} | {batch / base:.1f} | {t['adapter.logits'] / base - 1:+.1%} | "
            f"{t['adapter.predict'] / base - 1:+.1%} | {t['forward_attentions'] / base:.2f}× |"
        )
    table = "\n".join(
        [
            "| explainee | batch | raw model img/s | adapter.logits overhead "
            "| adapter.predict (incl. normalise) | eager attention path |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        "# Adapter forward overhead\n\n"
        f"Measured {datetime.date.today()} on {machine()} with `python benchmarks/adapter_overhead.py`.\n"
        "Medians of interleaved repeats (inference mode). "
        "Overhead = adapter time / raw `model(pixel_values)` time − 1;\n"
        "target ≤ 5 %. The eager attention path (needed for attention maps and their gradients; SDPA hides them)\n"
        "is reported as a multiple of the raw SDPA forward.\n\n" + table + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
