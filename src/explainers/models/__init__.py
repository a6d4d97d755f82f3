"""Explainee adapters: one interface over HF ViT/DeiT, timm ViT and plain modules."""

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
from explainers.models.loading import EMBEDDED_EXPLAINEE, embedded_explainee_dir, load_explainee

__all__ = [
    "EMBEDDED_EXPLAINEE",
    "AttentionOutput",
    "ExplaineeAdapter",
    "HeadPart",
    "Targets",
    "ViTAdapterBase",
    "ViTBlockParts",
    "ViTParts",
    "embedded_explainee_dir",
    "load_explainee",
    "resolve_targets",
]
