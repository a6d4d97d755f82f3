"""``load_explainee``: turn a directory, hub id, HF/timm model or plain module into an adapter."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainers.data.resize import InputGeometry
from explainers.devices import resolve_device
from explainers.errors import ModelError
from explainers.models.base import ExplaineeAdapter
from explainers.models.hf import _SUPPORTED, HFViTAdapter
from explainers.models.probe import LinearProbe, load_probe
from explainers.models.signature import check_same_encoder
from explainers.models.timm import TimmViTAdapter, is_timm_vit, load_timm

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

    Normalisation (``mean``/``std``) is never guessed: given values win, else the directory's
    ``preprocessor_config.json`` / the model config's ``image_mean``/``image_std`` / timm's
    ``pretrained_cfg``; without any of them the load is refused. Input size and preprocessing come from the
    processor (the crop size when it centre-crops; see :func:`processor_geometry`), else the model config;
    an explicit ``image_size`` means: resize straight to it (bilinear, no crop).
    """
    fixed = isinstance(spec, ExplaineeAdapter) or (isinstance(spec, str) and spec.startswith("probe:"))
    if fixed and any(v is not None for v in (image_size, mean, std)):
        raise ModelError(
            "image_size/mean/std cannot be changed for an already-built adapter or a probe:DIR explainee "
            "(the probe's encoder records its own)"
        )
    if isinstance(spec, ExplaineeAdapter):
        adapter = spec
    elif isinstance(spec, nn.Module):
        adapter = _adapt_module(spec, image_size, mean, std, num_classes, class_names)
    elif isinstance(spec, str) and spec.startswith("probe:"):
        adapter = load_probe_explainee(spec)
    elif isinstance(spec, (str, Path)):
        adapter = _load_by_name(str(spec), image_size=image_size, mean=mean, std=std)
    else:
        raise ModelError(f"cannot make an explainee from a {type(spec).__name__}; pass a path, hub id or nn.Module")
    if device is not None:
        adapter.to(resolve_device(device))
    return adapter


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _adapt_module(model, image_size, mean, std, num_classes, class_names) -> ExplaineeAdapter:
    if _is_hf_model(model):
        return HFViTAdapter(model, mean=mean, std=std, image_size=_size_pair(image_size), class_names=class_names)
    if is_timm_vit(model):
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


#: Pillow's resample codes, as Hugging Face processors store them (``resample``).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

#: What Hugging Face's ViT/DeiT image processors do when their config leaves a key out.
_PROCESSOR_DEFAULTS = {
    "vit": {"size": {"height": 224, "width": 224}, "do_center_crop": False, "resample": 2},
    "deit": {"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": 224, "resample": 3},
}


def _hw(value: Any, what: str) -> tuple[int, int] | int:
    """A processor size as Hugging Face's ViT/DeiT processors read it: an int or {height, width} is a
    (height, width) pair (their ``default_to_square``); {shortest_edge} is an int (shorter side)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, dict) and set(value) == {"shortest_edge"}:
        return int(value["shortest_edge"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ModelError(f"preprocessor {what} {value!r} is not supported (an int, height/width or shortest_edge)")


def _processor_kind(pre: dict[str, Any], model_type: str | None) -> str:
    name = str(pre.get("image_processor_type") or pre.get("feature_extractor_type") or "")
    if name.startswith("DeiT"):
        return "deit"
    if name.startswith("ViT"):
        return "vit"
    return "deit" if model_type == "deit" and not name else "vit"


def processor_geometry(
    pre: dict[str, Any], model_size: tuple[int, int], model_type: str | None = None
) -> InputGeometry:
    """The preprocessing a Hugging Face ``preprocessor_config.json`` describes, as an :class:`InputGeometry`.

    - input size: ``crop_size`` when the processor centre-crops (``do_center_crop``), else the resize
      ``size`` (DeiT-B/16-224: resize 256×256, crop 224 → 224×224), else the model's ``image_size``;
    - ``size`` read as the processor reads it: an int or height/width → that exact size (ViT and DeiT
      processors resize to a square); ``shortest_edge`` → shorter side, aspect kept;
    - ``resample`` 2 → bilinear, 3 → bicubic (DeiT), both antialiased as PIL does; others are refused;
    - keys left out take the processor class's defaults (``image_processor_type``: ViT or DeiT).
    """
    kind = _processor_kind(pre, model_type)
    # Keys left out, or saved as null, take the processor class's defaults.
    pre = {**_PROCESSOR_DEFAULTS[kind], **{k: v for k, v in pre.items() if v is not None}}
    resample = pre["resample"]
    interpolation = _PIL_RESAMPLE.get(resample, str(resample))
    if interpolation not in ("bilinear", "bicubic"):
        raise ModelError(
            f"preprocessor resample {interpolation!r} is not supported (bilinear or bicubic); pass image_size= "
            "to resize straight to the model size with bilinear instead"
        )
    resize = _hw(pre["size"], "size") if pre.get("do_resize", True) else None
    if pre["do_center_crop"]:
        size = _hw(pre.get("crop_size", 224), "crop_size")
        if isinstance(size, int):
            raise ModelError("preprocessor crop_size must be a size, not shortest_edge")
        if resize is None:
            raise ModelError(
                "preprocessor centre-crops without resizing (do_resize false), so the crop would show a different "
                "part of each image depending on its size; pass image_size= to resize straight to the model size"
            )
    elif isinstance(resize, tuple):
        size, resize = resize, None
    elif resize is None:
        size = model_size
    else:  # shorter side only, no crop: the input size would vary with the image
        raise ModelError(
            f"preprocessor resizes the shorter side to {resize} without a centre crop, so inputs have no fixed "
            "size; pass image_size= (command line: use a directory whose processor has a fixed size)"
        )
    try:
        return InputGeometry(size, resize=resize, interpolation=interpolation, crop_rounding="floor")
    except ValueError as exc:
        raise ModelError(f"preprocessor config: {exc}") from None


def _checked_geometry(geometry: InputGeometry, config: Any, where: str) -> InputGeometry:
    model_size = _size_pair(getattr(config, "image_size", None))
    if model_size is not None and geometry.size != model_size:
        raise ModelError(
            f"{where}: the image processor makes {geometry.size[0]}×{geometry.size[1]} inputs but the model "
            f"takes {model_size[0]}×{model_size[1]} (config image_size); fix preprocessor_config.json or pass "
            "image_size="
        )
    return geometry


def load_hf_directory(path: Path, *, image_size=None, mean=None, std=None, identifier: str | None = None):
    """Load a local Hugging Face image-classification directory (config + weights + preprocessor)."""
    from transformers import AutoConfig, AutoModelForImageClassification

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
        with quiet_transformers():
            model = AutoModelForImageClassification.from_pretrained(path, attn_implementation="sdpa")
    except Exception as exc:
        raise ModelError(f"cannot load the model in {path}: {exc}") from None
    pre = _read_preprocessing(path)
    geometry = None
    if image_size is None and pre:
        model_size = _size_pair(config.image_size)
        geometry = _checked_geometry(processor_geometry(pre, model_size, config.model_type), config, str(path))
    mean, std = _given_or(mean, std, pre, config)
    if mean is None or std is None:
        raise ModelError(
            f"{path} has no normalisation: no image_mean/image_std in preprocessor_config.json or config.json; "
            "pass --mean R,G,B --std R,G,B (Python: mean=, std=) or add them to preprocessor_config.json"
        )
    return HFViTAdapter(
        model,
        mean=mean,
        std=std,
        image_size=_size_pair(image_size),
        geometry=geometry,
        identifier=identifier or str(path),
    )


def _given_or(mean, std, pre: dict[str, Any], config: Any) -> tuple[Any, Any]:
    """Explicit mean/std first, then the processor's, then the model config's (explainers-trained models)."""
    if mean is None:
        mean = pre.get("image_mean") if pre.get("image_mean") is not None else getattr(config, "image_mean", None)
    if std is None:
        std = pre.get("image_std") if pre.get("image_std") is not None else getattr(config, "image_std", None)
    return mean, std


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
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

    try:
        model = AutoModelForImageClassification.from_pretrained(name, attn_implementation="sdpa")
        processor = AutoImageProcessor.from_pretrained(name)
    except Exception as exc:
        raise ModelError(
            f"could not load {name!r}: it is not a local directory and the Hugging Face hub failed "
            f"({type(exc).__name__}). Offline? Download the model elsewhere and pass its directory."
        ) from None
    pre = processor.to_dict()
    geometry = None
    if image_size is None:
        model_size = _size_pair(model.config.image_size)
        geometry = _checked_geometry(processor_geometry(pre, model_size, model.config.model_type), model.config, name)
    mean, std = _given_or(mean, std, pre, model.config)
    return HFViTAdapter(
        model, mean=mean, std=std, image_size=_size_pair(image_size), geometry=geometry, identifier=name
    )


# ------------------------------------------------------------------------------------------------------------
# A probe as an explainee


def probe_explainee(
    probe: LinearProbe | str | Path, encoder: ExplaineeAdapter | str | None = None
) -> ExplaineeAdapter:
    """The encoder with its classifier replaced by the probe: an explainee for the probe's task.

    Every method and metric then runs on the downstream task unchanged (LETA's default head is the
    adapter's own head, i.e. the probe). ``encoder`` defaults to the spec recorded in the probe.
    """
    if not isinstance(probe, LinearProbe):
        probe = load_probe(probe)
    if encoder is None:
        if "spec" not in probe.encoder:
            raise ModelError(f"probe {probe.source} does not record its encoder; pass encoder=...")
        encoder = probe.encoder["spec"]
    adapter = load_explainee(encoder)
    check_same_encoder(probe.encoder, adapter, "linear probe", probe.source or "the probe")
    heads = adapter.parts().heads
    if len(heads) != 1:
        raise ModelError(
            f"{adapter.identifier} has {len(heads)} classifier heads; a probe replaces exactly one"
        )
    model = copy.deepcopy(adapter.model)
    old = heads[0].linear
    name = next(n for n, m in adapter.model.named_modules() if m is old)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, copy.deepcopy(probe.linear).to(adapter.device))
    names = probe.class_names or [str(i) for i in range(probe.num_classes)]
    config = getattr(model, "config", None)
    if config is not None:  # Hugging Face: the adapter reads num_labels and id2label from the config
        config.num_labels = probe.num_classes
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
    if hasattr(model, "num_classes"):  # timm
        model.num_classes = probe.num_classes
    return type(adapter)(
        model,
        mean=adapter.mean.tolist(),
        std=adapter.std.tolist(),
        geometry=adapter.input_geometry,
        identifier=f"{adapter.identifier}+probe:{probe.task}",
        class_names=names,
    )


def load_probe_explainee(spec: str | Path) -> ExplaineeAdapter:
    """``probe:DIR`` (or ``DIR``) → :func:`probe_explainee` with the encoder recorded in the probe."""
    text = str(spec)
    return probe_explainee(text[len("probe:") :] if text.startswith("probe:") else text)
