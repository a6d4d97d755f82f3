"""Cost of the batched evaluation metrics, against the bare forwards they need and a naive per-image loop.

    python benchmarks/perturbation.py [--images 32] [--naive-images 8] [--max-batch 64] [--repeats 3] \
        [--threads 2] [--out benchmarks/results/evaluation.md]

Explainee: a small HF ViT built from a config (random weights; cost does not depend on them): 64×64
input, patch 8, 6 blocks, width 192, 3 heads, 10 classes, default SDPA attention.

1. Perturbation test (docs/metrics.md). One POS curve needs 10 explainee forwards per image (p = 0 … 0.9). Timed
   round-robin in one run (medians): the bare forwards alone (10·N pre-built images through
   ``adapter.predict`` in chunks of ``max_batch``), the batched metric (clean forward + POS curve: masks from
   one sort per image, perturbed copies of all images together, chunked), and a naive loop (per image and
   per point: top-k, zero the pixels, one forward of that single image — how the LTE reference scores a
   mask; run on ``--naive-images`` of the images and compared per image). Also the four POS/NEG and (neg-)deletion
   curves together (POS, NEG, deletion, neg-deletion), which share forwards.
2. Segmentation metrics: pixel accuracy + mIoU counts and the vectorised per-image AP, images per
   second at 64×64 and 224×224, against scikit-learn's ``average_precision_score`` called per image.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import interleaved_medians, machine
from explainers.metrics import BatchContext, MetricInputs, get_metric
from explainers.metrics.base import chunked_logits
from explainers.metrics.segmentation import segmentation_ap, segmentation_counts
from explainers.models import load_explainee


def build_explainee():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    return load_explainee(ViTForImageClassification(config).eval(), mean=[0.5] * 3, std=[0.5] * 3)


def batched(adapter, images, maps, names, max_batch):
    clean = chunked_logits(adapter, images, max_batch)
    inputs = MetricInputs(
        images=images,
        maps=maps,
        classes=clean.argmax(1),
        clean_logits=clean,
        ids=[str(i) for i in range(len(images))],
    )
    ctx = BatchContext(adapter, inputs, max_batch=max_batch)
    return {n: get_metric(n).compute(ctx).values for n in names}


@torch.inference_mode()
def naive_curve(adapter, images, maps, *, descending=True, probability=False):
    """Per image and per point, one forward of a single image (how the LTE reference scores a mask)."""
    out = []
    h, w = images.shape[-2:]
    for x, v in zip(images, maps, strict=True):
        cls = adapter.predict(x[None]).argmax(1)
        ys = []
        for i in range(10):
            k = h * w * i // 10
            xp = x.clone().reshape(3, -1)
            if k:
                xp[:, torch.topk(v.flatten() if descending else -v.flatten(), k).indices] = 0.0
            logits = adapter.predict(xp.reshape(1, 3, h, w))
            y = torch.softmax(logits, 1)[0, cls] if probability else logits.argmax(1) == cls
            ys.append(float(y))
        out.append(100 * np.trapezoid(ys, dx=0.1))
    return np.array(out)


def naive_four(adapter, images, maps):
    """POS, NEG, deletion and neg-deletion, each its own loop (nothing shared), as separate scripts do."""
    return [
        naive_curve(adapter, images, maps, descending=d, probability=p)
        for d, p in ((True, False), (False, False), (True, True), (False, True))
    ]


def sklearn_ap(maps, gt):
    from sklearn.metrics import average_precision_score

    from explainers.maps import minmax_normalize

    r = minmax_normalize(maps).flatten(1).numpy()
    g = gt.flatten(1).numpy()
    return np.array(
        [average_precision_score(np.r_[~gi, gi], np.r_[1 - ri, ri]) for ri, gi in zip(r, g, strict=True)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--naive-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, mb, nn_ = args.images, args.max_batch, args.naive_images

    adapter = build_explainee()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 64, 64, generator=g)
    maps = torch.rand(n, 64, 64, generator=g)
    ten = torch.rand(10 * n, 3, 64, 64, generator=g)

    # Sanity: the batched POS equals the naive loop on these inputs (random maps: no ties).
    np.testing.assert_allclose(
        batched(adapter, images[:4], maps[:4], ["pos"], mb)["pos"], naive_curve(adapter, images[:4], maps[:4])
    )

    four = ["pos", "neg", "deletion", "neg-deletion"]
    t = interleaved_medians(
        {
            "bare 10 forwards/img": lambda: chunked_logits(adapter, ten, mb),
            "bare 20 forwards/img": lambda: (
                chunked_logits(adapter, ten, mb),
                chunked_logits(adapter, ten, mb),
            ),
            "batched pos": lambda: batched(adapter, images, maps, ["pos"], mb),
            "batched 4 curves": lambda: batched(adapter, images, maps, four, mb),
            "naive pos loop": lambda: naive_curve(adapter, images[:nn_], maps[:nn_]),
            "naive 4 loops": lambda: naive_four(adapter, images[:nn_], maps[:nn_]),
        },
        repeats=args.repeats,
        warmup=1,
    )
    per = {k: v / (nn_ if k.startswith("naive") else n) for k, v in t.items()}  # seconds per image
    rows = [
        ("bare forwards: 10 per image (1 curve)", per["bare 10 forwards/img"], "1.00×"),
        (
            "batched POS (clean + 9 perturbed per image)",
            per["batched pos"],
            f"{per['batched pos'] / per['bare 10 forwards/img']:.2f}× bare 10",
        ),
        (
            f"naive per-image loop, POS ({nn_} images)",
            per["naive pos loop"],
            f"{per['naive pos loop'] / per['batched pos']:.1f}× the batched time",
        ),
        ("bare forwards: 20 per image (2 curves)", per["bare 20 forwards/img"], "1.00×"),
        (
            "batched POS+NEG+deletion+neg-deletion",
            per["batched 4 curves"],
            f"{per['batched 4 curves'] / per['bare 20 forwards/img']:.2f}× bare 20",
        ),
        (
            f"naive loops, the same 4 curves ({nn_} images)",
            per["naive 4 loops"],
            f"{per['naive 4 loops'] / per['batched 4 curves']:.1f}× the batched time",
        ),
    ]

    seg_rows = []
    for size in (64, 224):
        b = 64
        sm = torch.rand(b, size, size, generator=g)
        sg = torch.rand(b, size, size, generator=g) > 0.6
        ts = interleaved_medians(
            {
                "counts": lambda sm=sm, sg=sg: segmentation_counts(sm, sg),
                "ap": lambda sm=sm, sg=sg: segmentation_ap(sm, sg),
                "sklearn": lambda sm=sm, sg=sg: sklearn_ap(sm, sg),
            },
            repeats=args.repeats,
            warmup=1,
        )
        np.testing.assert_allclose(segmentation_ap(sm, sg).numpy(), sklearn_ap(sm, sg), atol=1e-9)
        both = ts["counts"] + ts["ap"]
        seg_rows.append(
            (size, b / ts["counts"], b / ts["ap"], b / both, b / ts["sklearn"], ts["sklearn"] / ts["ap"])
        )

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Evaluation suite cost",
        "",
        f"Measured {datetime.date.today()} on {machine()}; load average at the end {load:.1f} "
        "(a shared machine).",
        f"Command: `python {' '.join(sys.argv)}` (torch threads: {args.threads})",
        "",
        "Explainee: HF `ViTForImageClassification` from a config (random weights): 64×64, patch 8, 6 blocks, "
        "width 192, 3 heads, 10 classes, SDPA attention.",
        "",
        f"## Perturbation test, {n} images, max_batch {mb} (medians of {args.repeats} interleaved runs)",
        "",
        "| what | ms per image | relative |",
        "|---|---|---|",
        *[f"| {name} | {1000 * sec:.1f} | {rel} |" for name, sec, rel in rows],
        "",
        "Targets: batched POS ≤ 1.2× the bare 10 forwards per image; ≥ 5× faster than the naive loop.",
        "",
        "## Segmentation metrics (64 images per call)",
        "",
        "| size | counts img/s | AP img/s | both img/s | sklearn AP img/s | AP speed-up |",
        "|---|---|---|---|---|---|",
        *[
            f"| {s}×{s} | {c:.0f} | {a:.0f} | {bth:.0f} | {sk:.1f} | {sp:.1f}× |"
            for s, c, a, bth, sk, sp in seg_rows
        ],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - t0:.0f}s)")
