"""The shared base every attribution method builds on, and the name registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from explainers.errors import ExplainersError, InputError
from explainers.maps import minmax_normalize
from explainers.models.base import ExplaineeAdapter, Targets, resolve_targets

#: How far pixel values may stray outside [0, 1] (rounding in resizing or colour conversion) before a
#: batch is refused as being on another scale.
RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor, ids: list[str] | None = None, who: str = "images") -> None:
    """Refuse a batch that cannot be raw images in [0, 1]: NaN/inf pixels (naming the image) or values
    outside [0, 1] beyond rounding (0…255 images, or images already normalised with a mean and std)."""
    flat = images.detach().flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        name = f"image {ids[k]}" if ids is not None else f"image {k} of the batch"
        raise InputError(f"{who}: {name} has NaN or infinite pixel values; fix or drop it")
    lo, hi = float(flat.min()), float(flat.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        per_image = ((flat < -RANGE_TOLERANCE) | (flat > 1 + RANGE_TOLERANCE)).any(dim=1)
        k = int(per_image.nonzero()[0])
        name = f"image {ids[k]}" if ids is not None else f"image {k} of the batch"
        hint = (
            "divide 0…255 images by 255"
            if hi > 1.5 and lo >= 0
            else "pass raw images, not images normalised with a mean and std (the explainee's adapter normalises)"
        )
        raise InputError(
            f"{who}: pixel values must be in [0, 1], got {lo:.3g}…{hi:.3g} (first at {name}); {hint}"
        )


class Method:
    """An attribution method: built once from an adapter, then ``method(images, targets)`` per batch.

    ``images`` are raw B×3×H×W images in [0,1] (resized to the explainee's size if needed);
    ``targets`` is None (explain the predicted class), an int, or one class per image.
    Returns float B×H×W maps at the explainee's input size, min–max normalised per image unless the
    method was built with ``normalize=False``.

    Subclasses implement :meth:`attribute` (raw maps, any of B×H×W, B×gh×gw or B×P patch scores) and may
    set ``needs_attention``; the base owns resizing, target resolution, upsampling and normalisation.
    """

    name: ClassVar[str] = "method"
    #: The method reads attention maps (ViT-like explainees only).
    needs_attention: ClassVar[bool] = False

    def __init__(self, adapter: ExplaineeAdapter, *, normalize: bool = True) -> None:
        if self.needs_attention and not adapter.supports_attention:
            raise ExplainersError(
                f"method {self.name!r} needs attention maps, but explainee {adapter.identifier} "
                f"({type(adapter.model).__name__}) does not expose them; use a ViT explainee or a "
                "model-agnostic method (random, integrated-gradients, rise)"
            )
        self.adapter = adapter
        self.normalize = normalize

    def config(self) -> dict[str, Any]:
        """Options that define the method's output (stored in mask files)."""
        return {"normalize": self.normalize}

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def predicted_classes(self, images: torch.Tensor) -> torch.Tensor:
        """The classes this method explains when told "predicted", for images at the explainee's size: the
        explainee's argmax (LETA overrides it with its head's)."""
        return self.adapter.predict(images).argmax(dim=1)

    def predict_targets(self, images: torch.Tensor, targets: Targets) -> torch.Tensor:
        """Resolve ``targets`` (None → predicted class) for images already at the explainee's size."""
        if targets is None:
            with torch.no_grad():
                logits = self.adapter.predict(images)
        else:
            logits = torch.empty(images.shape[0], self.adapter.num_classes)
        return resolve_targets(targets, logits).to(images.device)

    def __call__(self, images: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ExplainersError(f"{self.name}: expected images B×3×H×W in [0,1], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ExplainersError(f"{self.name}: empty batch (0 images)")
        check_images(images, who=self.name)
        images = self.adapter.resize(images.to(self.adapter.device, torch.float32))
        target_t = self.predict_targets(images, targets)
        maps = self.attribute(images, target_t).detach().float()
        maps = self._to_image_size(maps)
        return minmax_normalize(maps) if self.normalize else maps

    def _to_image_size(self, maps: torch.Tensor) -> torch.Tensor:
        b = maps.shape[0]
        if maps.dim() == 2:  # B×P patch scores, row-major
            return self.adapter.patch_map_to_image(maps)
        if tuple(maps.shape[-2:]) != self.adapter.image_size:
            return torch.nn.functional.interpolate(
                maps.reshape(b, 1, *maps.shape[-2:]), size=self.adapter.image_size, mode="bilinear", align_corners=False
            )[:, 0]
        return maps


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available by ``name`` (``get_method``, ``--method``)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_methods() -> list[str]:
    # (This module is only importable through explainers.methods, whose import registers the built-ins.)
    return sorted(_REGISTRY)


def get_method(name: str, adapter: ExplaineeAdapter, **options: Any) -> Method:
    """Build the method registered as ``name`` for ``adapter``."""
    names = available_methods()
    if name not in _REGISTRY:
        raise ExplainersError(f"unknown method {name!r}; available: {', '.join(names)}")
    cls = _REGISTRY[name]
    try:
        return cls(adapter, **options)
    except TypeError as exc:
        raise ExplainersError(f"bad options for method {name!r}: {exc}") from None
