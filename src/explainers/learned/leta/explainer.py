"""The LETA explainer: a pre-trained network bound to its target encoder, and the transfer rule
(docs/learned-explainers.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from explainers._version import __version__
from explainers.errors import ExplainersError, ModelError
from explainers.io.atomic import atomic_path, write_text_atomic
from explainers.io.folder import read_folder_config
from explainers.learned.leta.config import LETAConfig
from explainers.learned.leta.network import LETANetwork, build_network
from explainers.learned.leta.windows import window_masks
from explainers.maps import minmax_normalize
from explainers.models import load_explainee
from explainers.models.base import ExplaineeAdapter, Targets, resolve_targets
from explainers.models.probe import LinearProbe, load_probe
from explainers.models.signature import check_same_encoder, embed_dim, encoder_signature, require_vit
from explainers.models.timm import is_timm_vit

FORMAT_NAME = "explainers-leta"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

HeadLike = nn.Module | ExplaineeAdapter | str | Path | None


@dataclass
class LETAAttribution:
    """What the transfer rule computes for a batch.

    scores: B×gh×gw raw patch attributions a_c = λ⁺·h(ψ⁺_c)[ŷ] − λ⁻·h(ψ⁻_c)[ŷ].
    maps: B×gh×gw after the (2p+1)² mean pool (padding not counted; p = the pooling radius, by default the
    window radius r) and per-image min–max.
    targets: B explained classes ŷ; logits: B×C head logits of the clean images.
    """

    scores: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor


@dataclass
class ResolvedHead:
    linear: nn.Linear
    class_names: list[str] | None
    source: str


def pool_patch_scores(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """(2r+1)×(2r+1) mean pool, stride 1, of B×gh×gw scores; border windows average only real patches."""
    if radius == 0:
        return scores
    pooled = F.avg_pool2d(
        scores[:, None], kernel_size=2 * radius + 1, stride=1, padding=radius, count_include_pad=False
    )
    return pooled[:, 0]


def check_pool_radius(value: object) -> int:
    """A pooling radius: a whole number ≥ 0 (as given, or as the text of one from ``--option``)."""
    try:
        radius = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        radius = None
    if radius is None or radius < 0:
        raise ExplainersError(f"LETA's pool_radius must be a whole number of patches ≥ 0, got {value!r}")
    return radius


def _linear_of_sequential(module: nn.Sequential) -> nn.Linear | None:
    """The last Linear of a Sequential whose other layers do nothing at inference (dropout, identity)."""
    layers = list(module)
    if not layers or not isinstance(layers[-1], nn.Linear):
        return None
    passive = (nn.Dropout, nn.Identity, nn.Flatten)
    return layers[-1] if all(isinstance(m, passive) for m in layers[:-1]) else None


class LETAExplainer:
    """A LETA explainer for one target encoder.

    ``explainer(images, head=...)`` explains any linear head on the encoder's embedding without training
    on the head's task. ``images`` are raw B×3×H×W in [0,1] (resized to the encoder's size).
    """

    def __init__(
        self,
        network: LETANetwork,
        encoder: ExplaineeAdapter,
        config: LETAConfig,
        *,
        encoder_info: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        require_vit(encoder, "LETA")
        self.network = network.eval()
        self.encoder = encoder
        self.config = config
        self.encoder_info = encoder_info if encoder_info is not None else encoder_signature(encoder)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._head_cache: dict[int | str, tuple[Any, ResolvedHead]] = {}

    # ------------------------------------------------------------------ construction / files
    @classmethod
    def build(
        cls, encoder: ExplaineeAdapter | str, config: LETAConfig | None = None, *, seed: int = 0
    ) -> LETAExplainer:
        """A new, untrained explainer for ``encoder`` (an adapter or a ``load_explainee`` spec)."""
        spec = encoder if isinstance(encoder, (str, Path)) else None
        adapter = _as_adapter(encoder)
        config = config or LETAConfig()
        config.validate()
        network = build_network(config, adapter, seed=seed)
        return cls(network, adapter, config, encoder_info=encoder_signature(adapter, spec=spec))

    @property
    def radius(self) -> int:
        return self.config.radius

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> LETAExplainer:
        """Move everything the explainer computes with — its network, the encoder and the heads it has
        resolved (probes read from folders) — to ``device``."""
        self.network.to(device)
        self.encoder.to(device)
        for _obj, resolved in self._head_cache.values():
            resolved.linear.to(device)
        return self

    def windows(self) -> torch.Tensor:
        """P×P window membership (row-major), radius ``config.radius``."""
        return window_masks(self.grid, self.radius, device=self.device)

    def save_pretrained(self, directory: str | Path, *, training: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickle); files are replaced atomically."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        backbone = self.network.backbones[0]
        if training is not None:
            self.metadata["training"] = training
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "library_version": __version__,
            "config": asdict(self.config),
            "encoder": self.encoder_info,
            "backbone": backbone.arch,
            "num_patches": self.network.num_patches,
            "embed_dim": self.network.embed_dim,
            "num_parameters": self.network.num_parameters(),
            **self.metadata,
        }
        with atomic_path(directory / WEIGHTS_FILE) as weights_tmp:
            save_model(self.network, str(weights_tmp), metadata={"format": FORMAT_NAME})
        write_text_atomic(directory / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        encoder: ExplaineeAdapter | str | None = None,
        *,
        device: str | torch.device | None = None,
        allow_other_weights: bool = False,
    ) -> LETAExplainer:
        """Load a saved explainer for ``encoder`` (default: the encoder spec recorded at pre-training).

        An explainer pre-trained for another encoder is refused (architecture and weights are compared;
        ``allow_other_weights`` accepts other weights of the same architecture with a warning).
        """
        directory = Path(directory).expanduser()
        payload = read_leta_config(directory)
        saved_encoder = payload.get("encoder", {})
        if encoder is None:
            if "spec" not in saved_encoder:
                raise ModelError(f"{directory} does not record its encoder; pass encoder=...")
            encoder = saved_encoder["spec"]
        adapter = _as_adapter(encoder)
        check_same_encoder(
            saved_encoder,
            adapter,
            "LETA explainer",
            directory,
            hint="pre-train one for it: `explainers pretrain leta --encoder SPEC --data KIND:PATH --out DIR`",
            allow_other_weights=allow_other_weights,
        )
        config = LETAConfig(**payload["config"])
        network = build_network(config, adapter, arch=payload["backbone"])
        try:
            missing, unexpected = load_model(network, str(directory / WEIGHTS_FILE), strict=False)
        except Exception as exc:
            raise ModelError(f"cannot read the LETA weights in {directory / WEIGHTS_FILE}: {exc}") from None
        if missing or unexpected:
            raise ModelError(
                f"{directory / WEIGHTS_FILE} does not match its config.json "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); re-save the explainer"
            )
        extra = {k: v for k, v in payload.items() if k in ("training",)}
        explainer = cls(network, adapter, config, encoder_info=saved_encoder, metadata=extra)
        if device is not None:
            explainer.to(device)
        return explainer

    # ------------------------------------------------------------------ predictions
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ψ⁺, ψ⁻), each B×P×D, for raw [0,1] images."""
        return self.network(self._prepare(images))

    def resolve_head(self, head: HeadLike = None) -> ResolvedHead:
        """The linear head h on the embedding: ``None`` = the encoder's own classifier; an ``nn.Linear``;
        a probe directory or :class:`~explainers.models.probe.LinearProbe`; an adapter or classifier
        model whose last layer is linear on the CLS embedding."""
        # Cached per head object (probe directories are read and encoders fingerprinted once); the object
        # is kept in the cache so that its id cannot be reused by another object.
        key = str(head) if isinstance(head, (str, Path)) else id(head)
        cached = self._head_cache.get(key)
        if cached is not None and (isinstance(head, (str, Path)) or cached[0] is head):
            return cached[1]
        resolved = self._resolve_head(head)
        dim = embed_dim(self.encoder)
        if resolved.linear.in_features != dim:
            raise ExplainersError(
                f"the head ({resolved.source}) takes {resolved.linear.in_features}-d inputs, but the encoder "
                f"{self.encoder.identifier} has a {dim}-d embedding; LETA explains heads on that embedding"
            )
        if len(self._head_cache) > 64:
            self._head_cache.clear()
        self._head_cache[key] = (head, resolved)
        return resolved

    def _resolve_head(self, head: HeadLike) -> ResolvedHead:
        if head is None:
            return _adapter_head(self.encoder, "the encoder's own classifier")
        if isinstance(head, (str, Path)):
            head = load_probe(head)
        if isinstance(head, LinearProbe):
            check_same_encoder(
                head.encoder,
                self.encoder,
                "linear probe",
                head.source or "the probe",
                hint="train a probe on this encoder with `explainers train-probe --encoder SPEC`",
            )
            return ResolvedHead(head.linear, head.class_names, f"probe {head.task!r}")
        if isinstance(head, nn.Linear):
            return ResolvedHead(head, None, "nn.Linear")
        if isinstance(head, nn.Sequential):
            linear = _linear_of_sequential(head)
            if linear is not None:
                return ResolvedHead(linear, None, "nn.Sequential")
        if isinstance(head, ExplaineeAdapter) or _is_classifier_model(head):
            adapter = load_explainee(head)
            require_vit(adapter, "LETA")
            if adapter is not self.encoder:
                check_same_encoder(
                    encoder_signature(self.encoder), adapter, "classifier given as head", adapter.identifier
                )
            return _adapter_head(adapter, f"classifier {adapter.identifier}")
        raise ExplainersError(
            f"cannot use a {type(head).__name__} as LETA head: pass an nn.Linear on the embedding, a probe "
            "directory, or a classifier whose last layer is linear on the CLS embedding"
        )

    @torch.no_grad()
    def attribute(
        self,
        images: torch.Tensor,
        head: HeadLike = None,
        targets: Targets = None,
        lambda_pos: float = 1.0,
        lambda_neg: float = 1.0,
        pool_radius: int | None = None,
    ) -> LETAAttribution:
        """The transfer rule on the patch grid (see :class:`LETAAttribution`).

        ``pool_radius``: radius of the mean pool over the patch scores; None (the reference) pools over the
        window the explainer was trained for (r), 0 keeps each patch's own window score."""
        pool = check_pool_radius(self.radius if pool_radius is None else pool_radius)
        images = self._prepare(images)
        linear = self.resolve_head(head).linear.to(images.device)
        logits = linear(self.encoder.cls_embedding(self.encoder.normalize(images)).float())
        target_t = resolve_targets(targets, logits)
        psi_pos, psi_neg = self.network(images)
        # h(ψ)[ŷ] for every patch without the full B×P×C product: w_ŷ·ψ + b_ŷ.
        w = linear.weight[target_t].float()  # B×D
        b = linear.bias[target_t].float() if linear.bias is not None else torch.zeros_like(w[:, 0])
        s_pos = torch.einsum("bpd,bd->bp", psi_pos.float(), w) + b[:, None]
        s_neg = torch.einsum("bpd,bd->bp", psi_neg.float(), w) + b[:, None]
        scores = (lambda_pos * s_pos - lambda_neg * s_neg).reshape(-1, *self.grid)
        maps = minmax_normalize(pool_patch_scores(scores, pool))
        return LETAAttribution(scores=scores, maps=maps, targets=target_t, logits=logits)

    def __call__(
        self,
        images: torch.Tensor,
        head: HeadLike = None,
        targets: Targets = None,
        lambda_pos: float = 1.0,
        lambda_neg: float = 1.0,
        pool_radius: int | None = None,
    ) -> torch.Tensor:
        """B×H×W maps in [0,1] at the encoder's input size (bilinear upsampling of :meth:`attribute`)."""
        result = self.attribute(images, head, targets, lambda_pos, lambda_neg, pool_radius)
        return self.encoder.patch_map_to_image(result.maps)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ExplainersError(
                f"LETA expects RGB images B×3×H×W in [0,1], got shape {tuple(images.shape)}; convert "
                "grayscale/RGBA images to RGB first (explainers.data.load_image does)"
            )
        return self.encoder.resize(images.to(self.device, torch.float32))


# ------------------------------------------------------------------------------------------------------------


def read_leta_config(directory: Path) -> dict[str, Any]:
    """config.json of a saved explainer, with a clear error for anything else."""
    payload = read_folder_config(
        directory, what="a LETA explainer", format_name=FORMAT_NAME, newest_version=FORMAT_VERSION
    )
    if not (directory / WEIGHTS_FILE).is_file():
        raise ModelError(f"{directory} has no {WEIGHTS_FILE}: the explainer was not saved completely")
    return payload


def _as_adapter(encoder: ExplaineeAdapter | str | Path | nn.Module) -> ExplaineeAdapter:
    adapter = load_explainee(encoder)
    require_vit(adapter, "LETA")
    return adapter


def _is_classifier_model(obj: object) -> bool:
    if not isinstance(obj, nn.Module):
        return False
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return is_timm_vit(obj)
    return isinstance(obj, PreTrainedModel) or is_timm_vit(obj)


def _adapter_head(adapter: ExplaineeAdapter, source: str) -> ResolvedHead:
    heads = adapter.parts().heads
    if len(heads) != 1 or heads[0].token_index != 0:
        raise ExplainersError(
            f"{source} averages {len(heads)} heads on different tokens (DeiT distillation); LETA explains "
            "heads on the CLS embedding: pass adapter.parts().heads[0].linear to explain the CLS head"
        )
    return ResolvedHead(heads[0].linear, adapter.class_names, source)
