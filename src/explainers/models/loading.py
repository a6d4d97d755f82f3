"""``load_explainee``: turn a directory, hub id, HF/timm model or plain module into an adapter."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from explainers.errors import ModelError
from explainers.models.base import ExplaineeAdapter

log = logging.getLogger(__name__)

#: Name of the small ViT explainee shipped with the package (trained on the embedded benchmark).
EMBEDDED_EXPLAINEE = "embedded"

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def embedded_explainee_dir() -> Path:
    """Directory of the shipped explainee (a Hugging Face model directory)."""
    return Path(str(resources.files("explainers") / "assets" / "explainee"))


def load_explainee(
    spec: str | Path | nn.Module | ExplaineeAdapter,
    *,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    device: str | None = None,
) -> ExplaineeAdapter:
    """Build the adapter for ``spec``.

    - ``"embedded"``: the small ViT shipped with the package;
    - a local Hugging Face model directory, or a hub id (only when the hub is reachable);
    - ``"timm:NAME"``: a timm model by name (needs the ``timm`` extra and the hub, or a local file);
    - ``"probe:DIR"``: the encoder recorded in a linear probe (``explainers train-probe``) with the probe as
      its classifier, i.e. an explainee for the probe's downstream task;
    - an already-built ``transformers`` ViT/DeiT classifier, or a timm ``VisionTransformer``;
    - any other ``nn.Module`` (model-agnostic methods only) with ``image_size``, ``mean`` and ``std``.
    """
    if isinstance(spec, ExplaineeAdapter):
        adapter = spec
    elif isinstance(spec, nn.Module):
        adapter = _adapt_module(spec, image_size, mean, std, num_classes, class_names)
    elif isinstance(spec, str) and spec.startswith("probe:"):
        from explainers.training.probe import load_probe_explainee

        adapter = load_probe_explainee(spec)
    elif isinstance(spec, (str, Path)):
        adapter = _load_by_name(str(spec), image_size=image_size, mean=mean, std=std)
    else:
        raise ModelError(f"cannot make an explainee from a {type(spec).__name__}; pass a path, hub id or nn.Module")
    if device is not None:
        from explainers.devices import resolve_device

        adapter.to(resolve_device(device))
    return adapter


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _adapt_module(model, image_size, mean, std, num_classes, class_names) -> ExplaineeAdapter:
    from explainers.models.timm import is_timm_vit

    if _is_hf_model(model):
        from explainers.models.hf import HFViTAdapter

        return HFViTAdapter(model, mean=mean, std=std, image_size=_size_pair(image_size), class_names=class_names)
    if is_timm_vit(model):
        from explainers.models.timm import TimmViTAdapter

        return TimmViTAdapter(model, mean=mean, std=std, image_size=_size_pair(image_size), class_names=class_names)
    missing = [n for n, v in (("image_size", image_size), ("mean", mean), ("std", std)) if v is None]
    if missing:
        raise ModelError(
            f"{type(model).__name__} is not a Hugging Face or timm ViT, so the adapter cannot read its "
            f"preprocessing: pass {', '.join(missing)} to load_explainee"
        )
    if num_classes is None:
        num_classes = len(class_names) if class_names else _infer_num_classes(model, _size_pair(image_size))
    return ExplaineeAdapter(
        model,
        image_size=_size_pair(image_size),  # type: ignore[arg-type]
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        num_classes=num_classes,
        class_names=class_names,
        identifier=type(model).__name__,
    )


def _infer_num_classes(model: nn.Module, size: tuple[int, int] | None) -> int:
    import torch

    param = next(model.parameters(), None)
    x = torch.zeros(1, 3, *size, device=param.device if param is not None else "cpu")  # type: ignore[misc]
    with torch.no_grad():
        out = model.eval()(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError(f"{type(model).__name__} must return a B×C logits tensor, got {type(out).__name__}")
    return out.shape[1]


def _is_hf_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


def _load_by_name(spec: str, *, image_size, mean, std) -> ExplaineeAdapter:
    if spec == EMBEDDED_EXPLAINEE:
        path = embedded_explainee_dir()
        if not (path / "config.json").exists():
            raise ModelError(f"the embedded explainee is missing from the installation ({path}); reinstall explainers")
        return load_hf_directory(path, image_size=image_size, mean=mean, std=std, identifier=EMBEDDED_EXPLAINEE)
    if spec.startswith("timm:"):
        from explainers.models.timm import load_timm

        return load_timm(spec[len("timm:") :], image_size=_size_pair(image_size), mean=mean, std=std)
    path = Path(spec).expanduser()
    if path.exists():
        return load_hf_directory(path, image_size=image_size, mean=mean, std=std)
    looks_like_path = (
        spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith((".json", ".safetensors"))
    )
    if looks_like_path:
        raise ModelError(f"explainee directory not found: {spec}")
    return _load_from_hub(spec, image_size=image_size, mean=mean, std=std)


def _read_preprocessing(path: Path) -> dict[str, Any]:
    file = path / "preprocessor_config.json"
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON ({exc}); fix or delete it") from None


def _processor_size(pre: dict[str, Any]) -> tuple[int, int] | None:
    size = pre.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        return (int(size["height"]), int(size["width"]))
    if isinstance(size, dict) and "shortest_edge" in size:
        return (int(size["shortest_edge"]),) * 2  # type: ignore[return-value]
    if isinstance(size, int):
        return (size, size)
    return None


def load_hf_directory(path: Path, *, image_size=None, mean=None, std=None, identifier: str | None = None):
    """Load a local Hugging Face image-classification directory (config + weights + preprocessor)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from explainers.models.hf import _SUPPORTED, HFViTAdapter

    if not path.is_dir():
        raise ModelError(f"explainee path {path} is not a directory; pass a Hugging Face model directory")
    if not (path / "config.json").exists():
        raise ModelError(f"{path} has no config.json: not a Hugging Face model directory")
    if not any((path / name).exists() for name in _WEIGHT_FILES):
        raise ModelError(f"model directory {path} has no weights (expected model.safetensors); copy the weights there")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from None
    if config.model_type not in _SUPPORTED:
        raise ModelError(
            f"{path} holds a {config.model_type!r} model; supported Hugging Face types: {', '.join(_SUPPORTED)}"
        )
    try:
        with _quiet_transformers():
            model = AutoModelForImageClassification.from_pretrained(path, attn_implementation="sdpa")
    except Exception as exc:
        raise ModelError(f"cannot load the model in {path}: {exc}") from None
    pre = _read_preprocessing(path)
    return HFViTAdapter(
        model,
        mean=mean if mean is not None else pre.get("image_mean"),
        std=std if std is not None else pre.get("image_std"),
        image_size=_size_pair(image_size) or _processor_size(pre),
        identifier=identifier or str(path),
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor "Loading weights" progress bar for a local load (it floods logs for small models)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_from_hub(name: str, *, image_size, mean, std) -> ExplaineeAdapter:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from explainers.models.hf import HFViTAdapter

    try:
        model = AutoModelForImageClassification.from_pretrained(name, attn_implementation="sdpa")
        processor = AutoImageProcessor.from_pretrained(name)
    except Exception as exc:
        raise ModelError(
            f"could not load {name!r}: it is not a local directory and the Hugging Face hub failed "
            f"({type(exc).__name__}). Offline? Download the model elsewhere and pass its directory."
        ) from None
    pre = processor.to_dict()
    return HFViTAdapter(
        model,
        mean=mean if mean is not None else pre.get("image_mean"),
        std=std if std is not None else pre.get("image_std"),
        image_size=_size_pair(image_size) or _processor_size(pre),
        identifier=name,
    )
