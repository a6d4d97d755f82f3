"""Datasets, named ``KIND:PATH`` on the command line (see :func:`open_dataset`)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from explainers.data.base import Batch, ImageDataset, Sample, collate, iter_batches, load_image
from explainers.data.resize import InputGeometry
from explainers.errors import DatasetError

# kind -> "module:factory"; factories take (path, **options) and return an ImageDataset.
# Imported lazily so that e.g. pycocotools is only needed for COCO.
DATASET_KINDS: dict[str, str] = {
    "synthetic": "explainers.data.synthetic:SyntheticDataset",
    "folder": "explainers.data.folder:FolderDataset",
    "imagenet-val": "explainers.data.imagenet:ImageNetValDataset",
    "imagenet-seg": "explainers.data.imagenet_seg:ImageNetSegDataset",
    "coco": "explainers.data.coco:CocoDataset",
    "voc": "explainers.data.voc:VocDataset",
    "masks": "explainers.data.masks:MasksDataset",
}


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """Split ``KIND:PATH`` and check the kind; the path is not checked here."""
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(
            f"dataset spec {spec!r} is not KIND:PATH; valid kinds: {', '.join(DATASET_KINDS)} (e.g. synthetic:./scenes)"
        )
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r} in {spec!r}; valid kinds: {', '.join(DATASET_KINDS)}")
    return kind, Path(path).expanduser()


def open_dataset(spec: str, **options: Any) -> ImageDataset:
    """Open ``KIND:PATH``. Options (``split``, ``task``, ``labels``, ...) go to the kind's reader;
    ``None`` values are dropped so callers can pass CLI options straight through."""
    kind, path = parse_dataset_spec(spec)
    if not path.exists():
        raise DatasetError(f"{kind} dataset path does not exist: {path}")
    module_name, _, factory_name = DATASET_KINDS[kind].partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
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
    "DATASET_KINDS",
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
