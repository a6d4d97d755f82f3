"""What a mask file was made with, and the check that it matches what it is asked to score.

``explain`` records, next to the maps: the explainee's weight fingerprint, the dataset (spec, location,
split, labelling task and class names), the class convention (the ``targets`` attribute) and, for methods
that explain another linear head on the explainee's encoder (LETA with ``--head``), that head's source and
fingerprint together with the encoder's. ``evaluate`` compares these with the explainee and the data it is
given (:func:`compare`): any difference is refused with every difference listed in one line, unless the
caller allows mismatches, in which case they are recorded in the report. Files written before these
attributes existed cannot be checked: the missing checks are named and recorded, never silently passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainers.errors import ExplainersError
from explainers.models.base import ExplaineeAdapter

#: Mask-file attributes written by :func:`maskfile_provenance` (absent in files of older versions).
PROVENANCE_ATTRS = ("explainee_fingerprint", "dataset_info", "head")


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, shape, float32 CPU bytes) of each tensor, in name order: device/dtype-free."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        data = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def head_fingerprint(linear: nn.Linear) -> str:
    """Fingerprint of one linear head (weight and bias)."""
    return fingerprint_tensors(linear.state_dict(keep_vars=True).items())


def classifier_head(adapter: ExplaineeAdapter) -> tuple[str, nn.Linear] | None:
    """(module name, linear) of the explainee's single classifier head, or None (no ViT parts, or several
    heads as in distilled DeiT)."""
    try:
        heads = adapter.parts().heads
    except ExplainersError:
        return None
    if len(heads) != 1:
        return None
    linear = heads[0].linear
    name = next((n for n, m in adapter.model.named_modules() if m is linear), None)
    return None if name is None else (name, linear)


def encoder_fingerprint(adapter: ExplaineeAdapter) -> str | None:
    """Fingerprint of every weight except the classifier head's: the encoder a head is read from."""
    head = classifier_head(adapter)
    if head is None:
        return None
    prefix = head[0] + "."
    state = adapter.model.state_dict(keep_vars=True)
    return fingerprint_tensors((k, v) for k, v in state.items() if not k.startswith(prefix))


def explained_head(method: Any) -> dict[str, Any] | None:
    """The head a method explains when it is not the explainee's own classifier (LETA with ``head=``):
    ``{"source", "fingerprint", "encoder_fingerprint"}``; None when the explainee's classifier is explained."""
    head = getattr(getattr(method, "head", None), "linear", None)
    if not isinstance(head, nn.Linear):
        return None
    own = classifier_head(method.adapter)
    fingerprint = head_fingerprint(head)
    if own is not None and head_fingerprint(own[1]) == fingerprint:
        return None
    config = method.config() if hasattr(method, "config") else {}
    return {
        "source": str(config.get("head") or getattr(method.head, "source", "a linear head")),
        "fingerprint": fingerprint,
        "encoder_fingerprint": encoder_fingerprint(method.adapter),
    }


def dataset_record(dataset: Any, spec: str | None = None) -> dict[str, Any]:
    """Where the images and labels came from: spec (as given), kind, resolved location, split, labelling
    task and class names (None where the dataset does not say)."""
    spec = spec or getattr(dataset, "name", "dataset")
    location = getattr(dataset, "root", None) or getattr(dataset, "path", None)
    if location is not None:
        try:
            location = str(Path(location).expanduser().resolve())
        except (OSError, TypeError):
            location = str(location)
    names = getattr(dataset, "class_names", None)
    return {
        "spec": spec,
        "name": getattr(dataset, "name", spec),
        "kind": spec.partition(":")[0] if ":" in spec else None,
        "location": location,
        "split": getattr(dataset, "split", None),
        "task": getattr(dataset, "task", None),
        "class_names": None if names is None else [str(n) for n in names],
    }


def maskfile_provenance(method: Any, dataset: Any, dataset_spec: str | None) -> dict[str, Any]:
    """The provenance attributes :func:`explainers.explain.explain_dataset` writes into a mask file."""
    return {
        "explainee_fingerprint": method.adapter.weights_fingerprint(),
        "dataset_info": dataset_record(dataset, dataset_spec),
        "head": explained_head(method),
    }


@dataclass
class ScoredWith:
    """What ``evaluate`` scores with, computed once and compared with every mask file."""

    adapter: ExplaineeAdapter
    dataset: dict[str, Any]
    classes: str
    _cache: dict[str, Any] = field(default_factory=dict)

    def _get(self, key: str, compute: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def fingerprint(self) -> str:
        return self._get("fingerprint", self.adapter.weights_fingerprint)

    @property
    def encoder_fingerprint(self) -> str | None:
        return self._get("encoder", lambda: encoder_fingerprint(self.adapter))

    @property
    def head_fingerprint(self) -> str | None:
        def compute() -> str | None:
            head = classifier_head(self.adapter)
            return None if head is None else head_fingerprint(head[1])

        return self._get("head", compute)


@dataclass
class Comparison:
    """Differences between a mask file and what it is scored with, and the checks that could not be made."""

    mismatches: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def _short(fp: str | None) -> str:
    return "unknown" if not fp else fp[:12]


# Description keys that change when a probe replaces the explainee's classifier.
_HEAD_KEYS = ("identifier", "num_classes")
# Dataset fields compared (the spec text itself may name the same folder by another path).
_DATASET_KEYS = ("kind", "location", "split", "task", "class_names")


def compare(mf: Any, scored: ScoredWith) -> Comparison:
    """Compare the provenance of mask file ``mf`` (a :class:`~explainers.io.maskfile.MaskFile`) with
    ``scored``. Per-image label differences are counted separately, while the images are scored."""
    out = Comparison()
    head = mf.head
    if not mf.has_head_record:
        out.unchecked.append("head")
    # The explainee: with another head explained, the scored explainee must be the encoder + that head.
    ignore = _HEAD_KEYS if head else ("identifier",)
    theirs = {k: v for k, v in mf.explainee.items() if k not in ignore}
    mine = {k: v for k, v in scored.adapter.describe().items() if k not in ignore}
    diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
    if diff:
        out.mismatches.append(
            f"explainee description differs in {', '.join(diff)} (file: {mf.explainee.get('identifier')}, "
            f"explainee: {scored.adapter.identifier})"
        )
    if head:
        if head.get("encoder_fingerprint") != scored.encoder_fingerprint:
            out.mismatches.append(
                f"encoder weights differ (file {_short(head.get('encoder_fingerprint'))}, explainee "
                f"{_short(scored.encoder_fingerprint)})"
            )
        if head.get("fingerprint") != scored.head_fingerprint:
            out.mismatches.append(
                f"maps explain head {head.get('source')} ({_short(head.get('fingerprint'))}) but the "
                f"explainee's classifier is {_short(scored.head_fingerprint)} (score with the explainee whose "
                "classifier is that head, e.g. --explainee probe:DIR)"
            )
    elif mf.explainee_fingerprint is None:
        out.unchecked.append("explainee weights")
    elif mf.explainee_fingerprint != scored.fingerprint:
        out.mismatches.append(
            f"explainee weights differ (file {_short(mf.explainee_fingerprint)}, explainee "
            f"{_short(scored.fingerprint)})"
        )
    info = mf.dataset_info
    if info is None:
        out.unchecked.append("dataset")
    else:
        for key in _DATASET_KEYS:
            a, b = info.get(key), scored.dataset.get(key)
            if a is None or b is None:
                if a != b and a is not None:
                    out.unchecked.append(f"dataset {key}")
                continue
            if a != b:
                shown = (
                    (", ".join(a)[:60], ", ".join(b)[:60]) if isinstance(a, list) else (a, b)
                )
                out.mismatches.append(f"dataset {key}: file {shown[0]}, data {shown[1]}")
    if mf.targets != scored.classes:
        out.mismatches.append(
            f"class convention: maps explain the {mf.targets} class, scored for the {scored.classes} class"
        )
    return out


def mismatch_message(path: Any, mismatches: list[str]) -> str:
    """One line: what differs, and how to score anyway."""
    return (
        f"{path} does not match what it is asked to score: {'; '.join(mismatches)}; score with the explainee, "
        "data and class convention the maps were made for, or pass --allow-mismatch (allow_mismatch=True) "
        "to score anyway (recorded in the report)"
    )
