"""Explainee adapters: one interface over HF ViT/DeiT, timm ViT and plain modules; linear probes on an
encoder, and what checkpoints record about the model they were made for."""

from explainers.models.base import (
    AttentionOutput,
    ExplaineeAdapter,
    HeadPart,
    Targets,
    ViTAdapterBase,
    ViTBlockParts,
    ViTParts,
    resolve_targets,
)
from explainers.models.loading import EMBEDDED_EXPLAINEE, embedded_explainee_dir, load_explainee, probe_explainee
from explainers.models.probe import LinearProbe, load_probe

__all__ = [
    "EMBEDDED_EXPLAINEE",
    "AttentionOutput",
    "ExplaineeAdapter",
    "HeadPart",
    "LinearProbe",
    "Targets",
    "ViTAdapterBase",
    "ViTBlockParts",
    "ViTParts",
    "embedded_explainee_dir",
    "load_explainee",
    "load_probe",
    "probe_explainee",
    "resolve_targets",
]
