"""What a checkpoint records about the model it was made for, and the checks that it fits the model at hand.

Every checkpoint (LTE, LETA, linear probes) stores the fingerprint of the weights it was made for
(:meth:`~explainers.models.base.ExplaineeAdapter.weights_fingerprint`): the whole explainee for LTE, whose
masks explain its logits; the encoder without its heads for LETA and for probes, because the same encoder
with another head (a linear probe) is the same encoder. :func:`check_fingerprint` is the one check of those
fingerprints: loading a checkpoint for other weights is refused with one line, unless the caller explicitly
allows it (``allow_other_weights``), in which case a warning is logged.

LETA checkpoints and probes also store the encoder's *signature* (:func:`encoder_signature`: the adapter's
description, the backbone fingerprint and how to load it again), checked by :func:`check_same_encoder`.
This lives with the adapters (not with LETA or the trainers) because loading a ``probe:DIR`` explainee
needs it too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from explainers.errors import ExplainersError, ModelError
from explainers.models.base import ExplaineeAdapter

log = logging.getLogger(__name__)


class WeightsMismatchError(ModelError):
    """A checkpoint made for other weights than the model it is being used with."""


def check_fingerprint(
    saved: str | None,
    current: str,
    *,
    what: str,
    source: str,
    model: str,
    hint: str,
    allow_other_weights: bool = False,
) -> None:
    """Refuse ``what`` (saved in ``source``) when it was made for weights other than ``model``'s.

    ``saved`` None or empty: an old checkpoint without a fingerprint, accepted with a warning.
    """
    if not saved:
        log.warning("%s in %s records no weights fingerprint: cannot check it fits %s", what, source, model)
        return
    if saved == current:
        return
    if allow_other_weights:
        log.warning(
            "%s in %s was made for other weights than %s (%s… ≠ %s…); used anyway (allow_other_weights)",
            what, source, model, saved[:12], current[:12],
        )
        return
    raise WeightsMismatchError(
        f"the {what} in {source} was made for other weights than {model} (fingerprint {saved[:12]}… ≠ "
        f"{current[:12]}…); {hint}, or pass allow_other_weights=true to use it anyway"
    )


#: describe() keys of a ViT's architecture and patch grid: what any checkpoint made for a model must share
#: with the model it is loaded for (each checkpoint kind adds what else it depends on).
ARCHITECTURE_KEYS = (
    "adapter",
    "image_size",
    "patch_size",
    "grid",
    "num_prefix_tokens",
    "num_blocks",
    "num_heads",
    "embed_dim",
)
# Description keys that define the embedding: the architecture and the input normalisation (identifier and
# class count do not: a probe changes them).
_STRUCTURAL_KEYS = (*ARCHITECTURE_KEYS, "mean", "std")


def require_vit(adapter: ExplaineeAdapter, what: str) -> None:
    """LETA needs a patch grid and a CLS embedding: refuse plain modules with one clear line."""
    if not adapter.supports_attention:
        raise ModelError(
            f"{what} needs a ViT-like encoder (patch grid + CLS embedding), but {adapter.identifier} "
            f"({type(adapter.model).__name__}) is a plain module; use a Hugging Face ViT/DeiT or timm "
            "VisionTransformer"
        )


def embed_dim(adapter: ExplaineeAdapter) -> int:
    """Size D of the embedding z = post-LayerNorm CLS token."""
    require_vit(adapter, "LETA")
    return int(adapter.embed_dim)  # type: ignore[attr-defined]


def backbone_fingerprint(adapter: ExplaineeAdapter) -> str:
    """The encoder's weights fingerprint, classification heads excluded (the adapter's one hash)."""
    require_vit(adapter, "LETA")
    return adapter.weights_fingerprint(heads=False)


def encoder_signature(adapter: ExplaineeAdapter, spec: str | None = None) -> dict[str, Any]:
    """What a checkpoint stores about its encoder: ``describe()`` + backbone fingerprint + how to load it."""
    desc = dict(adapter.describe())
    desc["fingerprint"] = backbone_fingerprint(adapter)
    if spec is not None:
        desc["spec"] = portable_spec(spec)
    return desc


def portable_spec(spec: str | Path) -> str:
    """A spec that still loads from another working directory: local paths become absolute."""
    text = str(spec)
    if text == "embedded" or text.startswith(("timm:", "probe:")):
        return text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _summary(desc: dict[str, Any]) -> str:
    parts = [str(desc.get("identifier", "?"))]
    if "num_blocks" in desc:
        parts.append(f"{desc['num_blocks']} blocks × {desc.get('embed_dim')}-d")
    if "image_size" in desc:
        parts.append("{}×{} input".format(*desc["image_size"]))
    if desc.get("fingerprint"):
        parts.append(f"weights {desc['fingerprint'][:10]}")
    return f"{parts[0]} ({', '.join(parts[1:])})"


def check_same_encoder(
    saved: dict[str, Any],
    adapter: ExplaineeAdapter,
    what: str,
    source: str | Path,
    hint: str | None = None,
    *,
    allow_other_weights: bool = False,
) -> None:
    """Refuse, naming both, when ``adapter`` is not the encoder ``saved`` describes (architecture; and
    weights, through the shared fingerprint check, which ``allow_other_weights`` relaxes to a warning)."""
    current = encoder_signature(adapter)
    mismatched = [k for k in _STRUCTURAL_KEYS if k in saved and saved[k] != current.get(k)]
    if mismatched:
        raise ExplainersError(
            f"the {what} in {source} was built for encoder {_summary(saved)}, not for the given encoder "
            f"{_summary(current)} (differs in: {', '.join(mismatched)}); "
            + (hint or f"use a {what} made for this encoder")
        )
    check_fingerprint(
        saved.get("fingerprint"),
        current["fingerprint"],
        what=what,
        source=str(source),
        model=f"encoder {_summary(current)}",
        hint=hint or f"use a {what} made for this encoder",
        allow_other_weights=allow_other_weights,
    )
