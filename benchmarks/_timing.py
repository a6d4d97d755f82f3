"""Shared helpers for the benchmark scripts: interleaved repeats, medians, machine facts, test models."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, run round-robin so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def build_vit(image_size: int, patch: int, width: int, depth: int, heads: int, classes: int):
    """A randomly initialised HF ViT classifier (seed 0) of the given shape, in eval mode."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        num_labels=classes,
        # The ViT processors' normalisation, recorded in the config as the shipped explainee does: the
        # adapter refuses a model without one.
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return ViTForImageClassification(config).eval()


def build_hf_classifier(kind: str, *, tiny: bool = False):
    """Random-init HF classifiers: ``vit-b`` (ViT-B/16-224), ``vit-s`` (ViT-S/16-224), ``deit-s-distilled``."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if tiny:  # for tests: the same classes at 32×32 with 2 small blocks
        shape = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        shape["intermediate_size"], labels = 64, 10
    else:
        width, heads = (768, 12) if kind == "vit-b" else (384, 6)
        shape = dict(image_size=224, patch_size=16, hidden_size=width, num_hidden_layers=12, num_attention_heads=heads)
        shape["intermediate_size"], labels = 4 * width, 1000
    if kind == "deit-s-distilled":
        return DeiTForImageClassificationWithTeacher(DeiTConfig(**shape, num_labels=labels)).eval()
    return ViTForImageClassification(ViTConfig(**shape, num_labels=labels)).eval()
