"""Cost of each attribution method as a multiple of one explainee forward on the same batch.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/methods.py [--out benchmarks/results/methods.md] [--quick]
        [--methods attention-gradcam,gae] [--configs small,vit-b]

(On a shared 2-core machine, OpenMP's default busy-waiting made 2-thread torch ops up to 10× slower
while other processes ran; passive waiting keeps the numbers meaningful. The policy is recorded.)

Two explainees built from configs (random weights; cost does not depend on the weights): a small ViT
(64×64, patch 8, 6 blocks, width 192) and a ViT-B/16-sized one (224, patch 16, 12 blocks, width 768).
Every method is called the uniform way, ``method(images)`` (targets=None: explain the predicted class,
so a method that needs the class pays for finding it). The reference is ``adapter.predict(images)``
under ``torch.no_grad`` (the model's default SDPA attention). All methods of one explainee are timed
round-robin with the forward in the same run (medians), so load changes hit all alike.
RISE and IG costs are linear in their number of masks / steps; where the run uses fewer than the
defaults (N = 4000, 50 steps), the table also gives the cost extrapolated to the defaults.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import build_vit, interleaved_medians, machine
from explainers.methods import get_method
from explainers.models import load_explainee

METHODS = [
    "raw-attention",
    "rollout",
    "attention-gradcam",
    "gae",
    "partial-lrp",
    "transformer-attribution",
    "lrp",
    "attnlrp",
    "legrad",
    "integrated-gradients",
    "rise",
]
TARGETS = {"gae": 3.0, "rollout": 3.0, "transformer-attribution": 6.0}
#: Targets set for the ViT-B-sized explainee only (on the small one a backward's fixed costs weigh more).
VIT_B_TARGETS = {"attention-gradcam": 1.2}

NOTES = """### Where the cost goes

- raw attention, rollout: one forward on the eager attention path (the attention maps), no class needed.
- attention Grad-CAM: eager forward + a backward that stops at the last block's attention (the only
  gradient it reads), ≈ 1.1×; the predicted class comes from that same forward.
- GAE: eager forward + backward to every block's attention map (≈ 2×); the class from that forward.
- partial LRP: the hand-written forward over the adapter's parts + relevance through the last block only.
- Transformer Attribution: forward (kept for autograd) + backward to every attention map (≈ 1×) +
  relevance through every block. α1β0 costs three matmuls per linear layer (the denominator
  ½(xWᵀ + |x||W|ᵀ) reuses xWᵀ from the forward; the numerator needs SW and S|W|), so the relevance
  pass is ≈ 3× a forward, and ≈ 5× in all is close to the floor of this rule set.
- full LRP: forward + relevance through every block and the zβ convolution; no gradients.
- AttnLRP: one forward over the adapter's parts with the rules as gradient modifications (a few cheap
  extra element-wise ops: detached σ, the GELU ratio, gradient halving) + one backward to the pixels;
  so ≈ 3× a forward (lxt itself was measured at 10.4× a forward on a ViT-B-sized model).
- LeGrad: one no-grad forward keeping each block's input, attention and values, then every block's
  attention-to-output part (A v, projection, MLP, final norm, head) recomputed from A as a leaf, and one
  backward for all layers at once (s^l depends on A^l only through block l); ≈ 3× a forward. torchcam's
  implementation instead runs one backward through the whole graph per layer.
- IG: `steps` forward+backward passes per image, chunked to a 1 GiB activation budget by default.
- RISE: N masked forwards per image; the default N = 4000 makes it by far the slowest baseline.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.md")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats (a smoke run, not for the record)"
    )
    parser.add_argument("--methods", help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--repeats", type=int, help="timed rounds per explainee (default: 7 small, 5 ViT-B)")
    parser.add_argument("--configs", help="comma-separated subset of the explainees: small, vit-b (default: both)")
    args = parser.parse_args()
    methods_run = METHODS if not args.methods else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods_run) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    subset = bool(args.methods or args.configs or args.repeats)
    if subset and "--out" not in sys.argv:
        # A partial run must not replace the full record by accident: it prints, and writes only to --out.
        args.out = None
    torch.set_num_threads(min(2, torch.get_num_threads()))
    configs = [
        # key, label, (size, patch, width, depth, heads, classes), batch, RISE masks, IG steps, repeats
        ("small", "small ViT (64², patch 8, 6×192)", (64, 8, 192, 6, 3, 10), 8, 200, 50, 3 if args.quick else 7),
        ("vit-b", "ViT-B/16 config (224², 12×768)", (224, 16, 768, 12, 12, 1000), 2, 16, 4, 1 if args.quick else 5),
    ]
    if args.configs:
        keys = [k.strip() for k in args.configs.split(",") if k.strip()]
        if set(keys) - {c[0] for c in configs}:
            parser.error(f"--configs takes small and/or vit-b, got {args.configs!r}")
        configs = [c for c in configs if c[0] in keys]
    if args.repeats is not None:
        configs = [(*c[:-1], args.repeats) for c in configs]
    load_before = os.getloadavg()
    sections = []
    for key, label, cfg, batch, masks, steps, repeats in configs:
        targets = {**TARGETS, **(VIT_B_TARGETS if key == "vit-b" else {})}
        adapter = load_explainee(build_vit(*cfg))
        images = torch.rand(batch, 3, *adapter.image_size, generator=torch.Generator().manual_seed(0))
        options = {"rise": {"num_masks": masks}, "integrated-gradients": {"steps": steps}}
        methods = {name: get_method(name, adapter, **options.get(name, {})) for name in methods_run}

        def forward(adapter=adapter, images=images):
            with torch.no_grad():
                return adapter.predict(images)

        fns = {"forward": forward}
        for name, method in methods.items():
            fns[name] = lambda method=method, images=images: method(images)
        print(f"timing {label} …", file=sys.stderr)
        t = interleaved_medians(fns, repeats=repeats, warmup=1)
        base = t["forward"]
        rows = [f"| forward (`adapter.predict`, no_grad) | {base * 1e3:.1f} | 1.00× | |"]
        for name in methods_run:
            ratio = t[name] / base
            note = ""
            if name == "rise":
                note = f"N = {masks} masks; ≈ {ratio * 4000 / masks:.0f}× at the default N = 4000"
            elif name == "integrated-gradients":
                note = f"{steps} steps" + (
                    "" if steps == 50 else f"; ≈ {ratio * 50 / steps:.0f}× at the default 50"
                )
            elif name in targets:
                note = f"target ≤ {targets[name]:g}×: {'met' if ratio <= targets[name] else 'MISSED'}"
            rows.append(f"| {name} | {t[name] * 1e3:.1f} | {ratio:.2f}× | {note} |")
        sections.append(
            f"### {label}, batch {batch}, {repeats} repeats\n\n"
            "| method | median ms per batch | × forward | notes |\n|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n"
        )
        print(sections[-1], file=sys.stderr)
    policy = os.environ.get("OMP_WAIT_POLICY", "default (active)")
    load_after = os.getloadavg()
    command = " ".join(["benchmarks/methods.py", *sys.argv[1:]])
    text = (
        "# Method cost as a multiple of one explainee forward\n\n"
        f"Measured {datetime.date.today()} on {machine()}, OMP_WAIT_POLICY={policy},\n"
        f"with `OMP_WAIT_POLICY=PASSIVE python {command}`. Each method is called as\n"
        "`method(images)` (targets=None, so it includes finding the predicted class where the method needs\n"
        "it); the reference is one `adapter.predict(images)` forward under no_grad on the same batch (SDPA\n"
        "attention). Medians of interleaved repeats, all in one run. The machine was shared with other\n"
        f"jobs (1-minute load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end,\n"
        "on 2 cores): absolute times are inflated, the ratios are the result.\n\n"
        + "\n".join(sections)
        + "\n"
        + NOTES
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
