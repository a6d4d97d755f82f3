"""GPU smoke: the real job's model sizes on an accelerator, end to end, in one command (≤ 8 min on one H200).

Random-init ViT-B/16-224 (fp32, and bf16 autocast) and DeiT-S/16 distilled (fp32):

* explain 256 synthetic 224×224 scenes with every registered method (``explain_dataset``; RISE with
  ``--rise-masks`` masks, LTE refinement on ``--refine-images`` of them);
* evaluate POS/NEG and segmentation (pixel accuracy, mIoU, mAP) of the 256-image mask files;
* 50 pLTE steps (``explainers pretrain lte``) and 50 LETA steps (``explainers pretrain leta``) per model
  and precision, under ``torchrun`` over every GPU when there is more than one;

and prints images/s per method, steps/s and peak GPU memory. Any error is reported and the exit status is 1.

    python benchmarks/gpu_smoke.py                            # on a GPU machine
    python benchmarks/gpu_smoke.py --device cpu --tiny        # tiny models, few images/steps (the test)

It uses only public entry points (``load_explainee``, ``get_method``, ``explain_dataset``,
``evaluate_maskfiles``, ``save_pretrained`` and the ``explainers`` commands), so it does not depend on
the training loop's internals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _timing import build_hf_classifier

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


@dataclass
class Sizes:
    image_size: int
    images: int
    refine_images: int
    refine_steps: int
    plte_steps: int
    plte_batch: int
    leta_steps: int
    leta_batch: int
    rise_masks: int
    ig_steps: int
    batch: int

    @property
    def train_images(self) -> int:
        return self.plte_steps * self.plte_batch  # one epoch of pLTE = plte_steps steps

    @property
    def val_images(self) -> int:
        return 4  # pLTE's validation subset: one per class (the scenes have 4 classes), from the same split


FULL = Sizes(224, 256, 32, 10, 50, 8, 50, 32, 500, 16, 64)
#: Precisions per model (bf16: autocast, fp32 weights), for explaining and for training.
PRECISIONS = {"vit-b": ("fp32", "bf16"), "deit-s-distilled": ("fp32",)}
TINY = Sizes(32, 4, 2, 2, 2, 4, 2, 4, 8, 2, 4)


@dataclass
class Report:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append(row)
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in row.items())
        print(shown, flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def save_model(kind: str, tiny: bool, folder: Path) -> None:
    """The model as a Hugging Face directory, with an image processor (resize to the model's size, mean and
    std 0.5) so that the adapter knows the input geometry, as it would for a hub checkpoint."""
    from transformers import ViTImageProcessor

    model = build_hf_classifier(kind, tiny=tiny)
    model.save_pretrained(folder)
    size = model.config.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )


class Memory:
    """Peak accelerator memory of a phase (CUDA only; None elsewhere)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1024**3


def precision_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def method_options(name: str, sizes: Sizes, explainers_dirs: dict[str, Path], adapter) -> dict[str, Any]:
    options: dict[str, Any] = {
        "rise": {"num_masks": sizes.rise_masks},
        "integrated-gradients": {"steps": sizes.ig_steps},
        "lte": {"steps": sizes.refine_steps, "stop_below": -1.0},
    }.get(name, {})
    if name in ("plte", "lte"):
        options["explainer"] = str(explainers_dirs["lte"])
    if name == "leta":
        options["explainer"] = str(explainers_dirs["leta"])
        # LETA explains a head on the CLS embedding: DeiT-distilled's CLS head (not the two-head average).
        if len(adapter.parts().heads) > 1:
            options["head"] = adapter.parts().heads[0].linear
    return options


def explain_and_evaluate(
    kind: str, precision: str, model_dir: Path, data: Path, work: Path, args, report: Report
) -> None:
    from explainers.data import open_dataset
    from explainers.explain import explain_dataset
    from explainers.learned import LTEExplainer
    from explainers.learned.leta import LETAExplainer
    from explainers.methods import get_method
    from explainers.metrics import evaluate_maskfiles
    from explainers.models import load_explainee

    sizes, device = args.sizes, args.device
    memory = Memory(device)
    tag = f"{kind}/{precision}"
    adapter = load_explainee(str(model_dir), device=str(device))
    dataset = open_dataset(f"synthetic:{data}", split="test")
    # Random-init learned explainers for this explainee, saved as a user would have them.
    dirs = {"lte": work / "plte-init", "leta": work / "leta-init"}
    if not dirs["lte"].exists():
        torch.manual_seed(0)
        LTEExplainer(adapter).save_pretrained(dirs["lte"])
        LETAExplainer.build(adapter, seed=0).save_pretrained(dirs["leta"])
    files = []
    for name in library_methods():
        n = sizes.refine_images if name == "lte" else sizes.images
        try:
            options = method_options(name, sizes, dirs, adapter)
            method = get_method(name, adapter, **options)
            out = work / "masks" / f"{name}.h5"
            memory.reset()
            start = time.perf_counter()
            with precision_context(device, precision):
                explain_dataset(method, dataset, out, batch_size=sizes.batch, limit=n, progress=False, overwrite=True)
            seconds = time.perf_counter() - start
            report.add(
                phase="explain",
                model=tag,
                method=name,
                images=n,
                seconds=seconds,
                images_per_s=n / seconds,
                peak_gib=memory.peak_gib(),
            )
            # Maps of a head other than the explainee's classifier are not scored against the explainee.
            if n == sizes.images and "head" not in options:
                files.append(out)
        except Exception as exc:  # keep going: report every failure, exit non-zero at the end
            report.errors.append(f"explain {tag} {name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    try:
        memory.reset()
        start = time.perf_counter()
        with precision_context(device, precision):
            evaluate_maskfiles(
                adapter,
                _first(dataset, sizes.images),
                files,
                "pos,neg,pixel-accuracy,miou,map",
                batch_size=sizes.batch,
                progress=False,
            )
        seconds = time.perf_counter() - start
        report.add(
            phase="evaluate",
            model=tag,
            method=f"{len(files)} mask files",
            images=sizes.images,
            seconds=seconds,
            images_per_s=sizes.images * len(files) / seconds,
            peak_gib=memory.peak_gib(),
        )
    except Exception as exc:
        report.errors.append(f"evaluate {tag}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    del adapter
    if device.type == "cuda":
        torch.cuda.empty_cache()


def library_methods() -> list[str]:
    """Every method the library registers (not those a test suite or a user adds)."""
    from explainers.methods import METHODS

    return [name for name, cls in METHODS.items() if cls.__module__.startswith("explainers.")]


def _first(dataset, n: int):
    from explainers.data.base import ImageDataset

    class First(ImageDataset):
        name, class_names = dataset.name, dataset.class_names

        def __len__(self) -> int:
            return min(n, len(dataset))

        def __getitem__(self, index: int):
            if not 0 <= index < len(self):
                raise IndexError(index)
            return dataset[index]

    return First()


def launcher(device: torch.device) -> list[str]:
    """``python -m explainers`` — under torchrun over every GPU when there are several."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            "explainers",
        ]
    return [sys.executable, "-m", "explainers"]


def run_command(name: str, tag: str, command: list[str], steps: int, report: Report, device: torch.device) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu: the training commands must not find a GPU either
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        report.errors.append(f"{name} {tag}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", flush=True)
        return
    report.add(
        phase=name,
        model=tag,
        method=f"{steps} steps",
        images=None,
        seconds=seconds,
        steps_per_s=steps / seconds,
        processes=max(torch.cuda.device_count(), 1) if device.type == "cuda" else 1,
    )


def train(kind: str, model_dir: Path, data: Path, work: Path, args, report: Report) -> None:
    sizes = args.sizes
    base = launcher(args.device)
    per_class = max(1, sizes.train_images // 4)  # the scenes have 4 classes
    for precision in [p for p in PRECISIONS[kind] if p in args.precisions]:
        tag, out = f"{kind}/{precision}", work / precision
        plte = [*base, "pretrain", "lte", "--explainee", str(model_dir), "--data", f"synthetic:{data}"]
        plte += ["--out", str(out / "plte"), "--no-progress"]
        for setting in (
            "epochs=1",
            f"batch_size={sizes.plte_batch}",
            f"train_per_class={per_class}",
            "val_per_class=1",
            "validate_initial=false",
            f"eval_batch_size={sizes.batch}",
            f"precision={precision}",
        ):
            plte += ["--set", setting]
        run_command("pLTE train", tag, plte, sizes.plte_steps, report, args.device)
        leta = [*base, "pretrain", "leta", "--encoder", str(model_dir), "--data", f"synthetic:{data}"]
        leta += ["--out", str(out / "leta"), "--no-progress", "--max-steps", str(sizes.leta_steps)]
        leta += ["--batch-size", str(sizes.leta_batch), "--set", f"precision={precision}"]
        run_command("LETA train", tag, leta, sizes.leta_steps, report, args.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N, cpu (default: the GPU if any, else CPU)")
    parser.add_argument("--tiny", action="store_true", help="Tiny models, a few images and steps (tests, CPU).")
    parser.add_argument("--work", type=Path, help="Working folder (default: a temporary one, removed after).")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--no-training", action="store_true", help="Skip the pLTE and LETA training runs.")
    parser.add_argument("--models", default="vit-b,deit-s-distilled", help="Comma-separated: vit-b, deit-s-distilled.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Comma-separated subset of fp32, bf16 to run.")
    parser.add_argument("--no-explain", action="store_true", help="Skip explaining and evaluating (training only).")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SRC))
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic
    from explainers.devices import resolve_device

    args.device = resolve_device(args.device)
    args.sizes = TINY if args.tiny else FULL
    args.precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    sizes = args.sizes
    report = Report()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    started = time.perf_counter()
    print(
        f"device {args.device}"
        + (
            f" ({torch.cuda.get_device_name(args.device)}, {torch.cuda.device_count()} GPU(s))"
            if args.device.type == "cuda"
            else ""
        )
        + f", torch {torch.__version__}",
        flush=True,
    )
    try:
        start = time.perf_counter()
        cfg = SyntheticConfig(
            image_size=sizes.image_size,
            train_size=sizes.train_images + sizes.val_images,
            val_size=8,
            test_size=sizes.images,
        )
        data = generate_synthetic(work / "scenes", cfg, progress=False)
        report.add(
            phase="data",
            model="-",
            method="synthetic scenes",
            images=cfg.train_size + cfg.test_size,
            seconds=time.perf_counter() - start,
        )
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(PRECISIONS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(PRECISIONS)}")
        for kind in wanted:
            precisions = [p for p in PRECISIONS[kind] if p in args.precisions]
            model_dir = work / kind / "model"
            save_model(kind, args.tiny, model_dir)
            for precision in precisions if not args.no_explain else ():
                explain_and_evaluate(kind, precision, model_dir, data, work / kind / precision, args, report)
            if not args.no_training:
                train(kind, model_dir, data, work / kind, args, report)
    except Exception as exc:
        report.errors.append(f"setup: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; {len(report.errors)} error(s)")
    for error in report.errors:
        print("ERROR " + error.splitlines()[0][:400])
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": str(args.device), "total_s": total, "rows": report.rows, "errors": report.errors}, indent=2
            )
        )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
