"""Throughput of ``explain`` on a ``folder:`` of 224×224 JPEGs, with images decoded by DataLoader workers,
against the same images pre-decoded in memory (the ceiling: no decoding at all).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/dataloader.py [--images 200] [--out benchmarks/results/dataloader.md]

The JPEGs are synthetic scenes (textured background, clutter, one shape) rendered at 224×224 and saved at
quality 90 into a temporary folder. Each setting runs the whole ``explain_dataset`` (load, predicted
class, method, mask-file writing) over every image; settings are interleaved and repeated, medians kept.
Models are random-init HF ViTs built from configs (cost does not depend on the weights):

* ViT-Ti/16 (224², 12 blocks, width 192) with ``random`` — a forward for the predicted class and no
  method work: the decode-heavy case, where loading is the largest share (7 repeats).
* ViT-S/16 (224², 12 blocks, width 384) with ``raw-attention`` — one forward per image: the cheapest
  real method on a realistic explainee (2 repeats: slow on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import build_vit, machine
from explainers.data import open_dataset
from explainers.data.base import ImageDataset, Sample
from explainers.data.loader import default_workers
from explainers.data.synthetic import SyntheticConfig, render_scenes
from explainers.explain import explain_dataset
from explainers.methods import get_method
from explainers.models import load_explainee

CONFIGS = [
    # label, (size, patch, width, depth, heads, classes), method, repeats (the slow one fewer)
    ("ViT-Ti/16, random", (224, 16, 192, 12, 3, 1000), "random", 7),
    ("ViT-S/16, raw-attention", (224, 16, 384, 12, 6, 1000), "raw-attention", 2),
]


class InMemory(ImageDataset):
    """Already decoded samples: what loading costs nothing looks like."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.name = "in-memory"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self.samples[index]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


def write_jpegs(folder: Path, n: int) -> float:
    """``n`` synthetic 224×224 scenes as JPEG (quality 90); returns the mean file size in KB."""
    config = SyntheticConfig(image_size=224, train_size=0, val_size=0, test_size=n)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for start in range(0, n, 50):
        scenes = render_scenes(config, "test", start, min(50, n - start))
        for k, image in enumerate(scenes["images"]):
            path = folder / f"{start + k:05d}.jpg"
            Image.fromarray(image).save(path, quality=90)
            sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat-factor", type=int, default=1, help="multiply every config's repeats")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dataloader.md")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    workers = default_workers()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        kb = write_jpegs(folder, args.images)
        dataset = open_dataset(f"folder:{folder}")
        start = time.perf_counter()
        decoded = [dataset[i] for i in range(len(dataset))]
        decode_ms = (time.perf_counter() - start) / len(dataset) * 1e3
        memory = InMemory(decoded)
        sections = []
        for label, cfg, method_name, repeats in CONFIGS:
            method = get_method(method_name, load_explainee(build_vit(*cfg), mean=[0.5] * 3, std=[0.5] * 3))
            out = Path(tmp) / "maps.h5"

            def run(ds, n_workers, limit=None, method=method, out=out):
                explain_dataset(
                    method, ds, out, batch_size=args.batch_size, progress=False, resume=False,
                    overwrite=True, workers=n_workers, limit=limit,
                )  # fmt: skip

            settings = {
                "pre-decoded in memory": (memory, 0),
                "folder, --workers 0 (in process)": (dataset, 0),
                f"folder, --workers {workers} (default)": (dataset, workers),
            }
            print(f"timing {label} …", file=sys.stderr)
            for ds, n_workers in settings.values():  # warm-up: two batches each
                run(ds, n_workers, limit=2 * args.batch_size)
            times: dict[str, list[float]] = {name: [] for name in settings}
            for _ in range(repeats * args.repeat_factor):
                for name, (ds, n_workers) in settings.items():  # interleaved: load changes hit all alike
                    start = time.perf_counter()
                    run(ds, n_workers)
                    times[name].append(time.perf_counter() - start)
            t = {name: statistics.median(values) for name, values in times.items()}
            ceiling = args.images / t["pre-decoded in memory"]
            rows = []
            for name, seconds in t.items():
                rate = args.images / seconds
                spread = f"{min(times[name]):.2f}–{max(times[name]):.2f}"
                rows.append(f"| {name} | {seconds:.2f} | {spread} | {rate:.2f} | {rate / ceiling:.0%} |")
            per_image_ms = t["pre-decoded in memory"] / args.images * 1e3
            with_workers = args.images / t[f"folder, --workers {workers} (default)"] / ceiling
            sections.append(
                f"### {label}, batch {args.batch_size}, {args.images} images, {len(times[name])} repeats\n\n"
                f"Explaining costs {per_image_ms:.1f} ms per image without any loading; loading one image "
                f"(JPEG decode + conversion to float, in this process) {decode_ms:.1f} ms, "
                f"{decode_ms / (per_image_ms + decode_ms):.0%} of the in-process total.\n\n"
                "| setting | median s | min–max s | images/s | of pre-decoded |\n|---|---|---|---|---|\n"
                + "\n".join(rows)
                + f"\n\nTarget ≥ 90 % of pre-decoded with workers: {'met' if with_workers >= 0.9 else 'MISSED'} "
                f"({with_workers:.0%}).\n"
            )
            print(sections[-1], file=sys.stderr)
    load_after = os.getloadavg()
    policy = os.environ.get("OMP_WAIT_POLICY", "default (active)")
    text = (
        "# Data loading: explain on a folder of JPEGs, with workers vs. pre-decoded\n\n"
        f"Measured {datetime.date.today()} on {machine()}, OMP_WAIT_POLICY={policy}, with\n"
        "`OMP_WAIT_POLICY=PASSIVE python benchmarks/dataloader.py`. "
        f"{args.images} synthetic scenes, 224×224 JPEG quality 90 (mean {kb:.0f} KB), `folder:` reader; "
        f"the default worker count here is {workers}. Whole `explain_dataset` runs (predicted class, method, "
        "mask-file writing), settings interleaved, medians. The machine was shared with other jobs "
        f"(1-minute load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end, on "
        f"{os.cpu_count()} cores): absolute times are inflated, compare within a table.\n\n"
        + "\n".join(sections)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
