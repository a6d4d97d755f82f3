"""ViT-B-sized CPU smoke: the learned explainers and two baselines at the real job's model size.

Random-init Hugging Face ViT-B/16-224 and DeiT-S/16 distilled (``DeiTForImageClassificationWithTeacher``):
one pLTE training step at batch 4, LTE refinement of 2 images × 3 steps, one LETA training step, and
Transformer Attribution and GAE on 4 images. Records wall time and peak resident memory per phase
(``VmHWM``, reset before each phase through ``/proc/self/clear_refs``), plus the estimated and measured
bytes per refined image (saved activations counted with autograd's saved-tensor hooks).

    python benchmarks/vit_b_smoke.py --out benchmarks/results/vit_b_smoke.md

Uses only public APIs (``LTEExplainer``, ``lte_loss``, ``LETAExplainer`` + ``leta.objective``, methods),
so it does not depend on how the training commands loop.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import build_hf_classifier, machine


def peak_rss_reset() -> None:
    """Start a new peak-RSS window (Linux ≥ 4.0: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def phase(rows: list[dict], model: str, name: str, fn: Callable[[], object]) -> object:
    gc.collect()
    peak_rss_reset()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    rows.append({"model": model, "phase": name, "seconds": seconds, "peak_rss": peak_rss_bytes()})
    print(f"{model:18s} {name:34s} {seconds:8.2f} s  peak RSS {fmt(rows[-1]['peak_rss'])}", flush=True)
    return result


def fmt(size: int | None) -> str:
    from explainers.devices import format_bytes

    return "n/a" if size is None else format_bytes(size)


def measured_refine_activations(explainer, image: torch.Tensor) -> int:
    """Bytes autograd saves for the backward pass of one refinement step of one image (parameters and
    their copies excluded): the quantity ``bytes_per_image`` estimates as activations."""
    from explainers.learned.lte.loss import lte_loss

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    weights = {p.untyped_storage().data_ptr() for p in explainer.net.parameters()}
    weights |= {p.untyped_storage().data_ptr() for p in explainer.adapter.model.parameters()}
    params = explainer.trainable_parameters()
    with explainer.net.eager_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        patch, mask = explainer.net(explainer.adapter.normalize(image))
        classes = explainer.adapter.predict(image).argmax(1)
        loss = lte_loss(explainer.adapter, image, patch, mask, classes, explainer.config).total.sum()
    torch.autograd.grad(loss, params)
    return sum(n for ptr, n in saved.items() if ptr not in weights)


def smoke(kind: str, rows: list[dict], memory: dict[str, dict], *, tiny: bool = False, device: str = "cpu") -> None:
    from explainers.learned import LTEConfig, LTEExplainer
    from explainers.learned.leta import LETAConfig, LETAExplainer
    from explainers.learned.leta.objective import compute_targets, leta_loss, sample_centres
    from explainers.learned.lte.loss import lte_loss
    from explainers.learned.lte.refine import bytes_per_image
    from explainers.methods import get_method
    from explainers.models import load_explainee

    adapter = phase(
        rows,
        kind,
        "load (random init)",
        lambda: load_explainee(build_hf_classifier(kind, tiny=tiny), mean=[0.5] * 3, std=[0.5] * 3, device=device),
    )
    size = adapter.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, *size, generator=g).to(device)

    # --- one pLTE step at batch 4
    explainer = LTEExplainer(adapter, LTEConfig())
    opt = torch.optim.AdamW(explainer.trainable_parameters(), lr=1e-4)

    def plte_step() -> float:
        explainer.net.train()
        with torch.no_grad():
            classes = adapter.predict(images).argmax(1)
        patch, mask = explainer.masks(images)
        loss = lte_loss(adapter, images, patch, mask, classes, explainer.config).total.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        explainer.net.eval()
        return float(loss)

    phase(rows, kind, "pLTE step (batch 4)", plte_step)

    # --- LTE refinement: 2 images × 3 steps (no early stop)
    phase(
        rows,
        kind,
        "LTE refine (2 images × 3 steps)",
        lambda: explainer.refine(images[:2], steps=3, stop_below=-1.0, batch_size=2, memory_budget="1TiB"),
    )
    estimate = bytes_per_image(explainer)
    memory[kind] = {
        "trainable": estimate.trainable_parameters,
        "parameter_bytes": estimate.parameter_bytes,
        "activation_estimate": estimate.activation_bytes,
        "activation_measured": measured_refine_activations(explainer, images[:1]),
    }

    # --- one LETA step (shared layout, encoder copy as backbone, the defaults)
    leta = LETAExplainer.build(adapter, LETAConfig(), seed=0)
    leta.network.to(device).train()
    leta_opt = torch.optim.AdamW(leta.network.parameters(), lr=1e-3)
    windows = leta.windows()

    def leta_step() -> float:
        centres = sample_centres(4, 4, adapter.num_patches, torch.Generator().manual_seed(1)).to(device)
        t_pos, t_neg = compute_targets(adapter, adapter.normalize(images), centres, windows)
        psi_pos, psi_neg = leta.network(images)
        loss, _, _ = leta_loss(psi_pos, psi_neg, centres, t_pos, t_neg)
        loss.backward()
        leta_opt.step()
        leta_opt.zero_grad(set_to_none=True)
        return float(loss)

    phase(rows, kind, "LETA step (batch 4, 4 centres)", leta_step)

    # --- baselines on 4 images
    for name in ("transformer-attribution", "gae"):
        method = get_method(name, adapter)
        phase(rows, kind, f"{name} (4 images)", lambda method=method: method(images))


def report(rows: list[dict], memory: dict[str, dict], total: float) -> str:
    from explainers.learned.lte.refine import bytes_per_image  # noqa: F401  (documents the source)

    lines = [
        "# ViT-B-sized CPU smoke (`benchmarks/vit_b_smoke.py`)",
        "",
        f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} "
        "(shared with other jobs). Random-init Hugging Face models at 224×224, fp32, eager attention for "
        f"refinement. Total {total:.0f} s.",
        "",
        "Peak RSS is the process's high-water mark (`VmHWM`) during the phase, reset before it; it includes "
        "the models already loaded and memory that earlier phases of the same model freed but the allocator "
        "kept. Each model runs in its own process.",
        "",
        "| model | phase | seconds | peak RSS |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['phase']} | {r['seconds']:.2f} | {fmt(r['peak_rss'])} |" for r in rows]
    lines += [
        "",
        "## Bytes per refined image (parallel LTE refinement, fp32)",
        "",
        "Parameters: 16 bytes per trainable parameter (the per-image copy, its gradient, two AdamW moments). "
        "Activations: estimated by `bytes_per_image`, measured as the tensors autograd saves for one "
        "refinement step of one image (explainer forward + explainee forward on the masked image).",
        "",
        "| model | trainable parameters | parameters + grads + Adam | activations (estimate) | "
        "activations (measured) | total per image (estimate) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, m in memory.items():
        lines.append(
            f"| {kind} | {m['trainable']:,} | {fmt(m['parameter_bytes'])} | {fmt(m['activation_estimate'])} | "
            f"{fmt(m['activation_measured'])} | {fmt(m['parameter_bytes'] + m['activation_estimate'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit-b,deit-s-distilled", help="vit-b, vit-s, deit-s-distilled")
    parser.add_argument("--out", type=Path, help="Markdown file to write the results to.")
    parser.add_argument("--tiny", action="store_true", help="Tiny models (tests).")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one model, results as JSON here
    args = parser.parse_args(argv)
    rows: list[dict] = []
    memory: dict[str, dict] = {}
    start = time.perf_counter()
    parser_models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.worker:
        smoke(parser_models[0], rows, memory, tiny=args.tiny)
        args.worker.write_text(json.dumps({"rows": rows, "memory": memory}))
        return 0
    # One process per model: the peak RSS of a phase must not include what an earlier model left behind
    # (freed memory stays in the allocator, so RSS does not drop).
    for kind in parser_models:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            command = [sys.executable, __file__, "--models", kind, "--worker", str(result)]
            subprocess.run([*command, *(["--tiny"] if args.tiny else [])], check=True)
            data = json.loads(result.read_text())
        rows += data["rows"]
        memory.update(data["memory"])
    text = report(rows, memory, time.perf_counter() - start)
    print(text)
    if args.out:
        from explainers.io.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
