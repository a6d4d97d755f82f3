"""Import the pLTE checkpoints released with the LTE reference code (PyTorch Lightning ``.ckpt`` files).

A released file holds two Hugging Face ViTs side by side in one Lightning ``state_dict``:

- the explainee, a ``ViTForImageClassification`` (ImageNet head), under one prefix;
- the explainer, a ``ViTModel`` without pooling layer whose embeddings were frozen at the explainee's, plus
  the patch head ``patch_pooler`` (d→d, tanh) and ``patch_classifier`` (d→1, sigmoid), under another.

Tensor names are those of transformers 4.15. They are handed to transformers' own loader, which maps
legacy names onto the installed version's modules, and the explainer is written through
``LTEExplainer.save_pretrained`` so that the result is an ordinary pLTE checkpoint folder plus an ordinary
Hugging Face explainee directory. The file is read with ``torch.load(weights_only=True)``: only tensors
and plain containers are ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from explainers.errors import ExplainersError, ModelError
from explainers.learned.lte.config import CLASS_MODES, LTEConfig
from explainers.learned.lte.explainer import LTEExplainer
from explainers.models import load_explainee
from explainers.models.loading import quiet_transformers

log = logging.getLogger(__name__)

#: The explainee's input normalisation in the reference (the ViT processors' mean = std = 0.5).
REFERENCE_MEAN = (0.5, 0.5, 0.5)
REFERENCE_STD = (0.5, 0.5, 0.5)
#: LayerNorm epsilon of transformers' ViT (the reference's models use the library default).
REFERENCE_LAYER_NORM_EPS = 1e-12
#: Width of one attention head in ViT-S/B/L: the head count is not stored in any tensor.
HEAD_DIM = 64
#: λ_mask of the published pre-training per hidden size (ViT-B, ViT-S); other sizes keep the default.
PUBLISHED_LAMBDA_MASK = {768: 50.0, 384: 30.0}

EXPLAINEE_SUBDIR = "explainee"
_HEAD_KEYS = ("patch_pooler.weight", "patch_pooler.bias", "patch_classifier.weight", "patch_classifier.bias")
_EMBEDDINGS = "embeddings."


class ReferenceCheckpointError(ModelError):
    """A file that is not (or not entirely) a released LTE reference pLTE checkpoint."""


@dataclass
class ReferenceArchitecture:
    """What the tensors say about the ViT (the head count comes from the 64-wide heads, or the caller)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_channels: int
    num_classes: int
    qkv_bias: bool

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def vit_config(self) -> Any:
        from transformers import ViTConfig

        return ViTConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=REFERENCE_LAYER_NORM_EPS,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            qkv_bias=self.qkv_bias,
            num_labels=self.num_classes,
        )


@dataclass
class ReferenceCheckpoint:
    """The parts of a released checkpoint, tensors under transformers-4.15 names without their prefixes.

    explainee: ``vit.*`` and ``classifier.*`` (a ``ViTForImageClassification`` state dict);
    explainer_vit: ``embeddings.*``, ``encoder.layer.N.*``, ``layernorm.*`` (a ``ViTModel`` state dict);
    head: ``patch_pooler.{weight,bias}``, ``patch_classifier.{weight,bias}``.
    """

    path: Path
    architecture: ReferenceArchitecture
    explainee: dict[str, torch.Tensor]
    explainer_vit: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    class_mode: str | None
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    explainer_dir: Path
    explainee_dir: Path
    class_mode: str
    architecture: ReferenceArchitecture
    training: dict[str, Any]


# ----------------------------------------------------------------------------------------------- reading
def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` on CPU; every failure is one line saying what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReferenceCheckpointError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needed = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if needed:
            raise ReferenceCheckpointError(
                f"{path} needs the Python object {needed.group(1)} to load, and only tensors and plain "
                "values are unpickled here (weights_only); this is not a released LTE reference checkpoint "
                "as published, or it was re-saved with extra objects"
            ) from None
        raise ReferenceCheckpointError(f"cannot read {path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ReferenceCheckpointError(
            f"cannot read {path}: corrupt or truncated PyTorch checkpoint ({_first_line(exc)})"
        ) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("state_dict"), Mapping):
        raise ReferenceCheckpointError(
            f"{path} has no 'state_dict' entry: not a PyTorch Lightning checkpoint of the LTE reference"
        )
    return dict(data)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def class_mode_from_name(name: str) -> str | None:
    """``predicted`` or ``target`` when exactly one of them is a word of the file name."""
    found = set(re.findall(r"(?<![a-z])(predicted|target)(?![a-z])", name.lower()))
    return found.pop() if len(found) == 1 else None


def _split_prefixes(state: Mapping[str, torch.Tensor], path: Path) -> tuple[str, str]:
    """(explainee prefix, explainer prefix). The explainer is the module with a ``patch_classifier``."""
    explainers = sorted({k[: -len("patch_classifier.weight")] for k in state if k.endswith("patch_classifier.weight")})
    if not explainers:
        raise ReferenceCheckpointError(
            f"{path} holds no LTE explainer: no '...patch_classifier.weight' tensor among its {len(state)} tensors"
        )
    if len(explainers) > 1:
        raise ReferenceCheckpointError(f"{path} holds several explainer heads ({', '.join(explainers)})")
    explainer = explainers[0]
    explainees = sorted(
        k[: -len("classifier.weight")]
        for k in state
        if k.endswith("classifier.weight")
        and not k.startswith(explainer)
        and k[: -len("classifier.weight")] + "vit.embeddings.patch_embeddings.projection.weight" in state
    )
    if len(explainees) != 1:
        raise ReferenceCheckpointError(
            f"{path} holds {len(explainees)} ViT classifiers beside the explainer "
            f"(expected exactly one explainee with 'vit.embeddings.*' and 'classifier.weight')"
        )
    return explainees[0], explainer


def _tensor(state: Mapping[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise ReferenceCheckpointError(f"{path} has no tensor {key!r}")
    return value


def infer_architecture(
    explainee: Mapping[str, torch.Tensor], path: Path, *, num_heads: int | None = None
) -> ReferenceArchitecture:
    """Hidden size, depth, MLP width, patch and image size and class count, from the explainee's tensors."""
    proj = _tensor(explainee, "vit.embeddings.patch_embeddings.projection.weight", path)
    if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
        raise ReferenceCheckpointError(f"{path}: patch embedding of shape {tuple(proj.shape)} is not square")
    hidden, channels, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    tokens = int(_tensor(explainee, "vit.embeddings.position_embeddings", path).shape[1])
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ReferenceCheckpointError(
            f"{path}: {tokens} position embeddings are not a CLS token plus a square patch grid"
        )
    layers = sorted({int(m.group(1)) for k in explainee if (m := re.match(r"vit\.encoder\.layer\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ReferenceCheckpointError(f"{path}: encoder layers {layers} are not numbered 0..N-1")
    heads = num_heads if num_heads is not None else hidden // HEAD_DIM
    if heads < 1 or hidden % heads:
        raise ReferenceCheckpointError(
            f"{path}: hidden size {hidden} is not a multiple of {HEAD_DIM}-wide heads; pass the head count "
            "(--num-heads)"
            if num_heads is None
            else f"{path}: hidden size {hidden} cannot be split into {num_heads} heads"
        )
    return ReferenceArchitecture(
        hidden_size=hidden,
        num_layers=len(layers),
        num_heads=heads,
        intermediate_size=int(_tensor(explainee, "vit.encoder.layer.0.intermediate.dense.weight", path).shape[0]),
        patch_size=patch,
        image_size=grid * patch,
        num_channels=channels,
        num_classes=int(_tensor(explainee, "classifier.weight", path).shape[0]),
        qkv_bias="vit.encoder.layer.0.attention.attention.query.bias" in explainee,
    )


def _training_summary(data: Mapping[str, Any]) -> dict[str, Any]:
    """Plain facts from the Lightning entries (epoch, step, best score, optimiser settings), JSON-able."""

    def plain(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else None
        if isinstance(value, (int, float, str, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return None

    out: dict[str, Any] = {}
    for key in ("epoch", "global_step", "pytorch-lightning_version"):
        if key in data:
            out[key.replace("-", "_")] = plain(data[key])
    for entry in (data.get("callbacks") or {}).values():
        if isinstance(entry, Mapping) and "best_model_score" in entry:
            out["best_model_score"] = plain(entry.get("best_model_score"))
            out["monitor"] = plain(entry.get("monitor"))
    optimizers = data.get("optimizer_states") or []
    if optimizers and isinstance(optimizers[0], Mapping):
        groups = optimizers[0].get("param_groups") or []
        if groups and isinstance(groups[0], Mapping):
            out["optimizer"] = {
                k: plain(groups[0][k])
                for k in ("lr", "initial_lr", "betas", "eps", "weight_decay", "amsgrad")
                if k in groups[0]
            }
        steps = [s.get("step") for s in (optimizers[0].get("state") or {}).values() if isinstance(s, Mapping)]
        if steps:
            out["optimizer"] = {**out.get("optimizer", {}), "step": plain(steps[0])}
    schedulers = data.get("lr_schedulers") or []
    if schedulers and isinstance(schedulers[0], Mapping) and "last_epoch" in schedulers[0]:
        out["scheduler_last_epoch"] = plain(schedulers[0]["last_epoch"])
    return out


def read_reference_checkpoint(path: str | Path, *, num_heads: int | None = None) -> ReferenceCheckpoint:
    """Read and check a released pLTE checkpoint: tensors split into explainee, explainer ViT and head."""
    path = Path(path).expanduser()
    data = load_checkpoint_file(path)
    state: Mapping[str, torch.Tensor] = data["state_dict"]
    explainee_prefix, explainer_prefix = _split_prefixes(state, path)
    explainee: dict[str, torch.Tensor] = {}
    explainer_vit: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
        elif key.startswith(explainer_prefix) and key[len(explainer_prefix) :] in _HEAD_KEYS:
            head[key[len(explainer_prefix) :]] = value
        elif key.startswith(explainer_prefix + "vit."):
            explainer_vit[key[len(explainer_prefix) + len("vit.") :]] = value
        elif key.startswith(explainee_prefix) and key[len(explainee_prefix) :].startswith(("vit.", "classifier.")):
            explainee[key[len(explainee_prefix) :]] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:4]) + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else "")
        raise ReferenceCheckpointError(f"{path} holds entries that are not part of a pLTE checkpoint: {shown}")
    missing_head = [k for k in _HEAD_KEYS if k not in head]
    if missing_head:
        raise ReferenceCheckpointError(f"{path}: the explainer head lacks {', '.join(missing_head)}")
    arch = infer_architecture(explainee, path, num_heads=num_heads)
    expected_head = {
        "patch_pooler.weight": (arch.hidden_size, arch.hidden_size),
        "patch_pooler.bias": (arch.hidden_size,),
        "patch_classifier.weight": (1, arch.hidden_size),
        "patch_classifier.bias": (1,),
    }
    for key, shape in expected_head.items():
        if tuple(head[key].shape) != shape:
            raise ReferenceCheckpointError(
                f"{path}: head tensor {key} has shape {tuple(head[key].shape)}, expected {shape}"
            )
    _check_embeddings(explainee, explainer_vit, path)
    return ReferenceCheckpoint(
        path=path,
        architecture=arch,
        explainee=explainee,
        explainer_vit=explainer_vit,
        head=head,
        class_mode=class_mode_from_name(path.name),
        training=_training_summary(data),
    )


def _check_embeddings(
    explainee: Mapping[str, torch.Tensor], explainer_vit: Mapping[str, torch.Tensor], path: Path
) -> None:
    """The reference froze the explainer's embeddings at the explainee's: they must be equal, bit for bit."""
    names = sorted(k[len("vit.") :] for k in explainee if k.startswith("vit." + _EMBEDDINGS))
    missing = [n for n in names if n not in explainer_vit]
    if missing:
        raise ReferenceCheckpointError(f"{path}: the explainer's ViT lacks {', '.join(missing)}")
    differ = []
    for name in names:
        a, b = explainee["vit." + name], explainer_vit[name]
        if a.shape != b.shape:
            differ.append(f"{name} (shape {tuple(b.shape)} vs {tuple(a.shape)})")
        elif not torch.equal(a, b):
            differ.append(f"{name} (max |Δ| {float((a.float() - b.float()).abs().max()):.3g})")
    if differ:
        raise ReferenceCheckpointError(
            f"{path}: the explainer's embeddings differ from the explainee's ({'; '.join(differ)}); the "
            "reference froze them at the explainee's, so the two halves of this file do not belong together"
        )


# ----------------------------------------------------------------------------------------------- building
def _load_vit(model_cls: Any, config: Any, state: Mapping[str, torch.Tensor], what: str, path: Path, **kw: Any) -> Any:
    """A transformers model from legacy-named tensors; any tensor left over or missing is an error."""
    try:
        with quiet_transformers():
            model, info = model_cls.from_pretrained(
                None, config=config, state_dict=dict(state), output_loading_info=True, **kw
            )
    except Exception as exc:  # transformers raises many types for shape/key problems
        raise ReferenceCheckpointError(
            f"{path}: cannot build the {what} from its tensors ({_first_line(exc)})"
        ) from None
    problems = [
        f"{kind} {', '.join(sorted(map(str, info.get(kind) or []))[:4])}"
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(kind)
    ]
    if problems:
        raise ReferenceCheckpointError(f"{path}: the {what}'s tensors do not fit a ViT ({'; '.join(problems)})")
    return model.eval()


def build_explainee_model(ref: ReferenceCheckpoint) -> Any:
    """The explainee as a transformers ``ViTForImageClassification``."""
    from transformers import ViTForImageClassification

    return _load_vit(ViTForImageClassification, ref.architecture.vit_config(), ref.explainee, "explainee", ref.path)


def build_explainer_vit(ref: ReferenceCheckpoint) -> Any:
    """The explainer's encoder as a transformers ``ViTModel`` (no pooling layer, as in the reference)."""
    from transformers import ViTModel

    return _load_vit(
        ViTModel,
        ref.architecture.vit_config(),
        ref.explainer_vit,
        "explainer's ViT",
        ref.path,
        add_pooling_layer=False,
    )


def _write_explainee_dir(model: Any, arch: ReferenceArchitecture, folder: Path) -> None:
    from transformers import ViTImageProcessor

    with quiet_transformers():
        model.save_pretrained(folder)
    # Resize straight to the input size, no centre crop, mean = std = 0.5: the reference's preprocessing.
    ViTImageProcessor(
        do_resize=True,
        size={"height": arch.image_size, "width": arch.image_size},
        image_mean=list(REFERENCE_MEAN),
        image_std=list(REFERENCE_STD),
    ).save_pretrained(folder)


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExplainersError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExplainersError(f"--out {out} is not empty; pick another folder or pass --overwrite")


@contextlib.contextmanager
def _staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``out``, moved onto ``out`` only when everything inside was written."""
    _check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.import-"))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; the result is meant to be shared
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_lte_reference(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    class_mode: str | None = None,
    num_heads: int | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Turn a released pLTE ``.ckpt`` into ``out_dir`` (our pLTE checkpoint) + ``out_dir/explainee``.

    ``class_mode`` (``target``/``predicted``) defaults to the word in the file name; ``num_heads`` to
    hidden size / 64. The explainer's mask is checked against the reference head computed directly on the
    imported encoder before anything is written.
    """
    out = Path(out_dir).expanduser()
    if class_mode is not None and class_mode not in CLASS_MODES:
        raise ExplainersError(f"class mode must be one of {', '.join(CLASS_MODES)}; got {class_mode!r}")
    # Both checks before the slow part (the output is checked again when the result is moved in).
    _check_output(out, overwrite)
    named = class_mode_from_name(Path(checkpoint).name)
    if class_mode is None:
        class_mode = named
        if class_mode is None:
            raise ExplainersError(
                f"cannot tell the class mode from the file name {Path(checkpoint).name!r} (no 'predicted' or "
                "'target' in it); pass --class-mode predicted or --class-mode target"
            )
    elif named is not None and named != class_mode:
        log.warning("%s is named for class mode %r; importing it as %r", Path(checkpoint).name, named, class_mode)
    ref = read_reference_checkpoint(checkpoint, num_heads=num_heads)
    arch = ref.architecture
    explainee_model = build_explainee_model(ref)
    explainer_vit = build_explainer_vit(ref)
    optimizer = ref.training.get("optimizer", {})
    settings: dict[str, Any] = {"class_mode": class_mode, "schedule": "reference"}
    if isinstance(optimizer.get("initial_lr"), float):
        settings["lr"] = optimizer["initial_lr"]
    if isinstance(optimizer.get("weight_decay"), float):
        settings["weight_decay"] = optimizer["weight_decay"]
    if arch.hidden_size in PUBLISHED_LAMBDA_MASK:
        settings["lambda_mask"] = PUBLISHED_LAMBDA_MASK[arch.hidden_size]
    config = LTEConfig.from_dict(settings)

    with _staging_dir(out, overwrite) as staging:
        _write_explainee_dir(explainee_model, arch, staging / EXPLAINEE_SUBDIR)
        del explainee_model
        # The explainee exactly as a user will load it; the recorded identifier is its final place.
        adapter = load_explainee(staging / EXPLAINEE_SUBDIR)
        adapter.identifier = str((out / EXPLAINEE_SUBDIR).resolve())
        explainer = LTEExplainer(adapter, config)
        _load_explainer_weights(explainer, explainer_vit, ref)
        _check_against_reference_head(explainer, explainer_vit, ref)
        explainer.training_info = {
            "imported_from": ref.path.name,
            "imported_sha256": _file_sha256(ref.path),
            "source": "LTE reference pLTE checkpoint (PyTorch Lightning)",
            **ref.training,
        }
        explainer.save_pretrained(staging)
    return ImportResult(
        explainer_dir=out,
        explainee_dir=out / EXPLAINEE_SUBDIR,
        class_mode=class_mode,
        architecture=arch,
        training=ref.training,
    )


def _load_explainer_weights(explainer: Any, explainer_vit: Any, ref: ReferenceCheckpoint) -> None:
    """Encoder: the reference explainer's ViT, read through the same adapter as the explainee (so its
    backbone has the same module layout as ours). Head: patch_pooler → W1, patch_classifier → w2."""
    from transformers import ViTForImageClassification

    holder = ViTForImageClassification(ref.architecture.vit_config())
    holder.vit = explainer_vit
    arch = ref.architecture
    view = load_explainee(holder, mean=list(REFERENCE_MEAN), std=list(REFERENCE_STD), image_size=arch.image_size)
    try:
        explainer.net.backbone.load_state_dict(view.backbone().state_dict(), strict=True)
        explainer.net.head.load_state_dict(
            {
                "fc1.weight": ref.head["patch_pooler.weight"],
                "fc1.bias": ref.head["patch_pooler.bias"],
                "fc2.weight": ref.head["patch_classifier.weight"],
                "fc2.bias": ref.head["patch_classifier.bias"],
            },
            strict=True,
        )
    except RuntimeError as exc:
        raise ReferenceCheckpointError(f"{ref.path}: the explainer does not fit ({_first_line(exc)})") from None
    explainer.net.eval()


@torch.no_grad()
def _check_against_reference_head(explainer: Any, explainer_vit: Any, ref: ReferenceCheckpoint) -> None:
    """Our explainer's patch scores on one random image = the reference head applied by hand to the
    imported encoder's tokens (CLS dropped). Catches a head or encoder mapped onto the wrong weights."""
    arch = ref.architecture
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, arch.num_channels, arch.image_size, arch.image_size, generator=g)
    pixels = explainer.adapter.normalize(images.to(explainer.device))
    ours, _ = explainer.net(pixels)
    tokens = explainer_vit.to(explainer.device)(pixels).last_hidden_state[:, 1:]
    head = {k: v.to(explainer.device, torch.float32) for k, v in ref.head.items()}
    hidden = torch.tanh(F.linear(tokens, head["patch_pooler.weight"], head["patch_pooler.bias"]))
    scores = torch.sigmoid(F.linear(hidden, head["patch_classifier.weight"], head["patch_classifier.bias"]))
    expected = scores[..., 0].reshape(1, arch.grid, arch.grid)
    gap = float((ours - expected).abs().max())
    if gap > 1e-4:
        raise ReferenceCheckpointError(
            f"{ref.path}: the imported explainer's patch scores differ from the reference head's by {gap:.3g}"
        )


__all__ = [
    "ImportResult",
    "ReferenceArchitecture",
    "ReferenceCheckpoint",
    "ReferenceCheckpointError",
    "class_mode_from_name",
    "import_lte_reference",
    "load_checkpoint_file",
    "read_reference_checkpoint",
]
