"""Datasets, named ``KIND:PATH`` on the command line (see :func:`open_dataset`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from explainers._registry import Registry
from explainers.data.base import Batch, ImageDataset, Sample, collate, iter_batches, load_image
from explainers.data.resize import InputGeometry
from explainers.errors import DatasetError

#: Dataset kinds: ``KIND`` → a reader taking ``(path, **options)`` and returning an ImageDataset. The
#: readers are registered lazily (``"module:factory"``, imported on first use) so that e.g. pycocotools
#: is only needed for COCO.
DATASETS: Registry[Callable[..., ImageDataset]] = Registry(
    "dataset kind",
    unknown="unknown dataset kind {name!r} in {spec!r}; valid kinds: {names}",
    error=DatasetError,
)
for _kind, _factory in (
    ("synthetic", "explainers.data.synthetic:SyntheticDataset"),
    ("folder", "explainers.data.folder:FolderDataset"),
    ("imagenet-val", "explainers.data.imagenet:ImageNetValDataset"),
    ("imagenet-seg", "explainers.data.imagenet_seg:ImageNetSegDataset"),
    ("coco", "explainers.data.coco:CocoDataset"),
    ("voc", "explainers.data.voc:VocDataset"),
    ("masks", "explainers.data.masks:MasksDataset"),
):
    DATASETS.register_lazy(_kind, _factory)


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """Split ``KIND:PATH`` and check the kind; the path is not checked here."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(
            f"dataset spec {spec!r} is not KIND:PATH; valid kinds: {', '.join(DATASETS)} (e.g. synthetic:./scenes)"
        )
    if kind not in DATASETS:
        DATASETS.get(kind, spec=spec)  # raises the error that lists the valid kinds
    return kind, Path(path).expanduser()


def open_dataset(spec: str, **options: Any) -> ImageDataset:
    """Open ``KIND:PATH``. Options (``split``, ``task``, ``labels``, ...) go to the kind's reader;
    ``None`` values are dropped so callers can pass CLI options straight through."""
    kind, path = parse_dataset_spec(spec)
    if not path.exists():
        raise DatasetError(f"{kind} dataset path does not exist: {path}")
    factory = DATASETS.get(kind)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        valid = [n for n, p in list(accepted.items())[1:] if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise DatasetError(
                f"{kind} datasets have no option(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
            )
    return factory(path, **options)


__all__ = [
    "DATASETS",
    "Batch",
    "ImageDataset",
    "InputGeometry",
    "Sample",
    "collate",
    "iter_batches",
    "load_image",
    "open_dataset",
    "parse_dataset_spec",
]
