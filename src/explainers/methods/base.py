"""The shared base every attribution method builds on, what a method says about itself, and the
name registry.

Data flow of one batch (:meth:`Method.explain`): the images are checked and brought to the explainee's
size once; the class each image is explained for is decided here and nowhere else — the requested
class, else the argmax of the explained head's logits on the clean images — and those logits come from
exactly one explainee forward: the method's own when it runs the explainee anyway (attention, gradient
and relevance methods, LETA), else one run by the base. The result is an :class:`Explanation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from explainers._compat import StrEnum
from explainers._registry import Registry
from explainers.errors import ExplainersError, InputError
from explainers.maps import minmax_normalize, resize_maps
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


class Need(StrEnum):
    """What a method needs beyond a classifier that maps images to logits."""

    #: A ViT-like explainee whose parts the adapter exposes (Hugging Face ViT/DeiT, timm ViTs).
    VIT = "vit"
    #: The explainee's attention maps and a class token (implies ``VIT``).
    ATTENTION = "attention"
    #: Backpropagation through the explainee.
    GRADIENTS = "gradients"
    #: A learned explainer pre-trained for this explainee (or for its encoder).
    CHECKPOINT = "checkpoint"


class Cost(StrEnum):
    """Cost class of explaining one batch, in explainee forwards on the same batch (the measurements are
    in benchmarks/results/methods.md)."""

    #: About one forward (at most 1.5×).
    FORWARD = "forward"
    #: A forward and a backward or relevance pass, or a second network: 2–5×.
    FEW_PASSES = "few-passes"
    #: Sampling, integration or per-image optimisation: tens to thousands of forwards.
    MANY_PASSES = "many-passes"


#: How the cost classes read in tables.
COST_TEXT: dict[Cost, str] = {
    Cost.FORWARD: "≈ 1 forward",
    Cost.FEW_PASSES: "2–5 forwards",
    Cost.MANY_PASSES: "10–10⁴ forwards",
}


def _per_image(extras: Mapping[str, Any], n: int, who: str) -> Mapping[str, np.ndarray]:
    """``extras`` as read-only NumPy columns with one row per image (a clear error otherwise)."""
    out: dict[str, np.ndarray] = {}
    for name, values in extras.items():
        arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ExplainersError(f"{who}: extra {name!r} must have one row per image ({n}), got shape {arr.shape}")
        out[name] = arr
    return MappingProxyType(out)


@dataclass(frozen=True)
class Explanation:
    """One batch explained: what :meth:`Method.explain` returns.

    maps: B×H×W float maps at the explainee's input size (min–max normalised per image unless the method
        was built with ``normalize=False``).
    classes: B long, the class each map explains.
    logits: B×C float logits of the clean images, from the head the method explains (the explainee's
        classifier; for LETA the head it was given). ``logits.argmax(1)`` is the predicted class.
    extras: per-image values a method reports besides the maps (one row per image; LTE:
        ``selected_step``, ``selected_score``, ``selected_class``), stored in mask files.
    """

    maps: torch.Tensor
    classes: torch.Tensor
    logits: torch.Tensor
    extras: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        n = self.maps.shape[0]
        if self.classes.shape != (n,) or self.logits.dim() != 2 or self.logits.shape[0] != n:
            raise ExplainersError(
                f"explanation of {n} maps has classes of shape {tuple(self.classes.shape)} and logits of shape "
                f"{tuple(self.logits.shape)}; expected ({n},) and ({n}, C)"
            )
        object.__setattr__(self, "extras", _per_image(self.extras, n, "explanation"))

    @property
    def predicted(self) -> torch.Tensor:
        """The predicted class per image (argmax of :attr:`logits`)."""
        return self.logits.argmax(dim=1)


@dataclass(frozen=True)
class Attribution:
    """What :meth:`Method.attribute` may return instead of bare maps.

    maps: raw maps (B×H×W, B×gh×gw or B×P patch scores). logits/classes: for a method that runs the
    explainee on the clean images (``forwards_explainee``), the logits of that forward and the classes
    it explained. extras: per-image values (see :attr:`Explanation.extras`).
    """

    maps: torch.Tensor
    logits: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchInputs:
    """One prepared batch as :meth:`Method.attribute_batch` receives it.

    images: B×3×H×W raw images in [0, 1] at the explainee's size, on its device. classes: the class per
    image, or None when the method runs the explainee itself and the predicted class is asked for.
    logits: the base's forward on the clean images (None for methods that run the explainee themselves,
    and for the short form given explicit classes). labels: the ground truth per image (-1: unknown), when
    the caller has it.
    """

    images: torch.Tensor
    classes: torch.Tensor | None
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None


class Method:
    """An attribution method: built once from an adapter, then called per batch.

    ``method.explain(images, targets)`` gives an :class:`Explanation` (maps, explained classes, clean
    logits, extras); ``method(images, targets)`` is the short form that returns the maps only (and skips
    the clean forward when the classes are given and the method does not need it).
    ``images`` are raw B×3×H×W images in [0,1] (resized to the explainee's size if needed);
    ``targets`` is None (explain the predicted class), an int, or one class per image.

    Subclasses set the descriptors (``summary``, ``needs``, ``cost``, ``reference``) and implement
    :meth:`attribute` (raw maps, any of B×H×W, B×gh×gw or B×P patch scores); the base owns checking,
    resizing, the class decision, upsampling and normalisation.
    """

    name: ClassVar[str] = "method"
    #: One line: what the map is.
    summary: ClassVar[str] = ""
    #: What the method needs (checked against the explainee at construction for VIT/ATTENTION).
    needs: ClassVar[frozenset[Need]] = frozenset()
    #: Cost class of one batch.
    cost: ClassVar[Cost] = Cost.FORWARD
    #: The paper that defines the method.
    reference: ClassVar[str] = ""
    #: :meth:`attribute` runs the explainee on the clean images anyway. It is then given ``classes=None``
    #: when the predicted class is asked for, and returns the logits of that forward and the classes it
    #: explained in an :class:`Attribution`; the base runs no forward of its own.
    forwards_explainee: ClassVar[bool] = False
    #: The maps do not depend on the class (pLTE): the short form ``method(images)`` then skips the
    #: forward that finding the predicted class would cost (:meth:`explain` still reports the class).
    class_blind: ClassVar[bool] = False
    #: The same images give the same maps, in any batch and on any call (False: the method draws new
    #: random numbers per call, so a resumed or re-batched run differs).
    deterministic: ClassVar[bool] = True

    def __init__(self, adapter: ExplaineeAdapter, *, normalize: bool = True) -> None:
        if self.needs & {Need.VIT, Need.ATTENTION} and not adapter.supports_attention:
            what = "attention maps" if Need.ATTENTION in self.needs else "a ViT explainee"
            raise ExplainersError(
                f"method {self.name!r} needs {what}, but explainee {adapter.identifier} "
                f"({type(adapter.model).__name__}) does not expose them; use a ViT explainee or a "
                f"model-agnostic method ({', '.join(model_agnostic_methods())})"
            )
        self.adapter = adapter
        self.normalize = normalize

    # ------------------------------------------------------------------ description
    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The method's descriptors as JSON-able values (``explainers methods``)."""
        return {
            "name": cls.name,
            "summary": cls.summary,
            "needs": [need.value for need in Need if need in cls.needs],
            "cost": cls.cost.value,
            "reference": cls.reference,
        }

    def config(self) -> dict[str, Any]:
        """Options that define the method's output (stored in mask files)."""
        return {"normalize": self.normalize}

    @property
    def num_classes(self) -> int:
        """Classes of the head the method explains (the explainee's own unless the method says otherwise)."""
        return self.adapter.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """Names of the explained head's classes, when known."""
        return self.adapter.class_names

    #: The class convention the maps are bound to (``target`` or ``predicted``), or None when the method
    #: explains whatever class it is given. ``explain_dataset`` uses it as the default and refuses another.
    class_convention: str | None = None
    #: Appended to the refusal of another convention (how to change the method's own).
    class_convention_hint: str = ""

    # ------------------------------------------------------------------ extension points
    def attribute(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor | Attribution:
        """Raw maps for prepared images (see :class:`BatchInputs`) and the classes to explain.

        ``classes`` is None only for a method with ``forwards_explainee``, which then returns an
        :class:`Attribution` carrying its logits and the classes it resolved from them, or for a
        ``class_blind`` method called in the short form.
        """
        raise NotImplementedError  # pragma: no cover

    def attribute_batch(self, inputs: BatchInputs) -> torch.Tensor | Attribution:
        """What the base calls per batch; methods that read more than images and classes (LTE reads the
        labels and the clean logits) override this instead of :meth:`attribute`."""
        return self.attribute(inputs.images, inputs.classes)

    def default_targets(self, labels: torch.Tensor | None) -> Targets:
        """The classes explained when none are requested: None, the predicted class (LTE bound to the
        ground truth: the labels)."""
        return None

    def clean_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the explained head on prepared images: the one explainee forward of a method that
        does not run the explainee itself. (no_grad, not inference_mode: the tensors may go on into
        gradient code.)"""
        with torch.no_grad():
            return self.adapter.predict(images).float()

    # ------------------------------------------------------------------ the pipeline
    def explain(
        self,
        images: torch.Tensor,
        targets: Targets = None,
        *,
        labels: Targets = None,
        ids: list[str] | None = None,
    ) -> Explanation:
        """Explain a batch: maps, the class each explains, the clean images' logits and any extras.

        ``labels``: the ground truth per image (-1: unknown), for methods that read it (LTE selects its
        refinement step on it). ``ids``: image names, used in error messages.
        """
        maps, classes, logits, extras = self._run(images, targets, labels, ids, want_logits=True)
        assert logits is not None and classes is not None
        return Explanation(maps=maps, classes=classes, logits=logits, extras=extras)

    def __call__(self, images: torch.Tensor, targets: Targets = None, *, labels: Targets = None) -> torch.Tensor:
        """The maps only (see :meth:`explain`)."""
        return self._run(images, targets, labels, None, want_logits=False)[0]

    def prepare(self, images: torch.Tensor, ids: list[str] | None = None) -> torch.Tensor:
        """Checked raw images at the explainee's size, on its device, as float32 (the one resize)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ExplainersError(f"{self.name}: expected images B×3×H×W in [0,1], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ExplainersError(f"{self.name}: empty batch (0 images)")
        check_images(images, ids, who=self.name)
        return self.adapter.resize(images.to(self.adapter.device, torch.float32))

    def _run(
        self,
        images: torch.Tensor,
        targets: Targets,
        labels: Targets,
        ids: list[str] | None,
        *,
        want_logits: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, Mapping[str, Any]]:
        images = self.prepare(images, ids)
        n, device = images.shape[0], images.device
        labels_t = None
        if labels is not None:
            labels_t = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
            if labels_t.shape[0] != n:
                raise ExplainersError(f"{self.name}: {labels_t.shape[0]} labels for {n} images; pass one per image")
        if targets is None:
            targets = self.default_targets(labels_t)
        # The class decision: requested classes (checked against the head), else the clean argmax.
        head = torch.empty(n, self.num_classes, device=device)  # shape only: resolve_targets checks the range
        requested = None if targets is None else resolve_targets(targets, head)
        logits = None
        if not self.forwards_explainee and (want_logits or (requested is None and not self.class_blind)):
            logits = self.clean_logits(images)
        classes = requested if requested is not None or logits is None else logits.argmax(dim=1)
        result = self.attribute_batch(BatchInputs(images=images, classes=classes, logits=logits, labels=labels_t))
        if not isinstance(result, Attribution):
            result = Attribution(maps=result)
        if self.forwards_explainee:
            if result.logits is None or result.classes is None:
                raise ExplainersError(f"method {self.name} runs the explainee but returned no logits or classes")
            logits, classes = result.logits.detach().float(), result.classes
        maps = self._to_image_size(result.maps.detach().float())
        if tuple(maps.shape) != (n, *self.adapter.image_size):
            expected = (n, *self.adapter.image_size)
            raise ExplainersError(f"method {self.name} returned maps of shape {tuple(maps.shape)}, expected {expected}")
        maps = minmax_normalize(maps) if self.normalize else maps
        return maps, None if classes is None else classes.to(device), logits, result.extras

    def _to_image_size(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() == 2:  # B×P patch scores, row-major
            return self.adapter.patch_map_to_image(maps)
        if tuple(maps.shape[-2:]) != self.adapter.image_size:
            return resize_maps(maps, self.adapter.image_size)
        return maps


#: Every registered method, by name (``get_method``, ``--method``); importing ``explainers.methods``
#: registers the built-in ones.
METHODS: Registry[type[Method]] = Registry(
    "method",
    builtins=("explainers.methods",),
    unknown="unknown method {name!r}; available: {names}",
    sort=True,
)


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available by ``name`` (``get_method``, ``--method``)."""

    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name, cls)

    return wrap


def available_methods() -> list[str]:
    """Names of every registered method, alphabetically."""
    return METHODS.names()


def model_agnostic_methods() -> list[str]:
    """Registered methods that run on any classifier (no ViT, no learned explainer needed)."""
    agnostic = {Need.VIT, Need.ATTENTION, Need.CHECKPOINT}
    return [
        name for name, cls in METHODS.items() if not cls.needs & agnostic and cls.__module__.startswith("explainers.")
    ]


def get_method(name: str, adapter: ExplaineeAdapter, **options: Any) -> Method:
    """Build the method registered as ``name`` for ``adapter``."""
    cls = METHODS.get(name)
    try:
        return cls(adapter, **options)
    except TypeError as exc:
        raise ExplainersError(f"bad options for method {name!r}: {exc}") from None
