"""The LTE explainer (docs/learned-explainers.md): the explainee's own ViT encoder, re-trained to output a patch mask.

``ExplainerNet`` is the trainable module (pixel values → patch scores and upsampled mask);
``LTEExplainer`` bundles it with its explainee and configuration and is the user-facing object:
``LTEExplainer.from_pretrained(dir, explainee=...)``, ``explainer(images)`` (pLTE) and
``explainer.refine(images)`` (LTE).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from explainers._version import __version__
from explainers.errors import ExplainersError, ModelError
from explainers.io.atomic import atomic_path, write_text_atomic
from explainers.io.folder import read_folder_config
from explainers.learned.lte.config import LTEConfig
from explainers.learned.lte.refine import refine_images
from explainers.maps import resize_maps
from explainers.models import load_explainee
from explainers.models.base import ExplaineeAdapter, Targets, TrainableBackbone, resolve_targets
from explainers.models.signature import ARCHITECTURE_KEYS, check_fingerprint

log = logging.getLogger(__name__)

FORMAT = "explainers-lte"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# describe() keys that define what an explainer checkpoint fits: architecture, patch grid, class count.
_COMPAT_KEYS = (*ARCHITECTURE_KEYS, "num_classes")


class CheckpointMismatchError(ModelError):
    """An explainer checkpoint made for a different explainee."""


class PatchHead(nn.Module):
    """``w2 · tanh(W1 t + b1) + b2`` per token (the activation is applied by the caller).

    With ``outputs`` > 1 (a class-conditioned explainer) there is one read-out ``w2_c, b2_c`` per class over
    the shared hidden features, and ``forward`` picks the explained class's: "is this token evidence for
    class c?" is a different linear question for each class.
    """

    def __init__(self, dim: int, init_std: float = 0.02, init_bias: float = 0.0, outputs: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, outputs)
        # Small weights and zero biases: the initial sigmoid mask is ≈ 0.5 everywhere, as published.
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)
        # A positive output bias starts the mask near 1 (the whole image kept; see LTEConfig.head_init_bias).
        nn.init.constant_(self.fc2.bias, init_bias)

    def forward(self, tokens: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        out = self.fc2(torch.tanh(self.fc1(tokens)))  # B×P×outputs
        if classes is None:
            return out[..., 0]
        return out.gather(-1, classes.long().reshape(-1, 1, 1).expand(-1, out.shape[1], 1))[..., 0]


class PixelDecoder(nn.Module):
    """A light upsampling decoder that also sees the image: pixel logits = the bilinear upsampling of the
    patch logits + a correction from the encoder's tokens (projected to ``channels``, upsampled) and the
    image itself (one 3×3 convolution), mixed by a 3×3 and a 1×1 convolution.

    The patch head alone can only draw bilinear blobs of its g×g grid: its maximum covers a quarter of a
    patch wherever the evidence lies in that patch, and its mass spreads over the neighbours. The image
    branch lets the mask follow the evidence's edges. The last convolution starts at zero, so an untrained
    decoder draws exactly the upsampled patch logits and training starts where the reference head does.
    """

    def __init__(self, dim: int, channels: int = 16, init_std: float = 0.02) -> None:
        super().__init__()
        self.tokens = nn.Linear(dim, channels)
        self.image = nn.Conv2d(3, channels, 3, padding=1)
        self.mix = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.normal_(self.tokens.weight, std=init_std)
        nn.init.zeros_(self.tokens.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, tokens: torch.Tensor, patch_logits: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """tokens B×P×D, patch logits B×gh×gw, pixel values B×3×H×W → pixel logits B×H×W."""
        b, gh, gw = patch_logits.shape
        size = pixel_values.shape[-2:]
        feats = self.tokens(tokens).transpose(1, 2).reshape(b, -1, gh, gw)
        feats = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        both = torch.cat([F.gelu(feats), F.gelu(self.image(pixel_values))], dim=1)
        correction = self.out(F.gelu(self.mix(both)))[:, 0]
        coarse = resize_maps(patch_logits, size)
        return coarse + correction


class ExplainerNet(nn.Module):
    """Pixel values → (scores, mask B×H×W): encoder, per-patch head, activation, upsampling.

    ``head="patch"`` (the reference): the scores are the activated patch scores B×gh×gw and the mask their
    bilinear upsampling. ``head="decoder"``: a :class:`PixelDecoder` turns the patch logits into pixel
    logits; the scores are then the activated pixel scores, which are the mask (the mask term reads them).
    ``num_classes`` > 0 conditions the head on the explained class: one read-out of the head per class,
    so one network draws a different mask for each class it is asked about; ``forward`` then needs the
    classes.
    """

    def __init__(
        self,
        backbone: TrainableBackbone,
        *,
        embed_dim: int,
        num_prefix_tokens: int,
        grid: tuple[int, int],
        image_size: tuple[int, int],
        activation: str = "sigmoid",
        freeze_blocks: int = 0,
        head_init_std: float = 0.02,
        head: str = "patch",
        num_classes: int = 0,
        head_init_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = PatchHead(embed_dim, head_init_std, head_init_bias, outputs=max(1, num_classes))
        self.decoder = PixelDecoder(embed_dim, init_std=head_init_std) if head == "decoder" else None
        self.class_conditioned = num_classes > 0
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = (int(grid[0]), int(grid[1]))
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.activation = activation
        blocks, final_norm = backbone.blocks, backbone.final_norm
        if freeze_blocks > len(blocks):
            raise ExplainersError(f"freeze_blocks={freeze_blocks} but the encoder has {len(blocks)} blocks")
        # Trainable: blocks (after the first k), final norm, head. Frozen: everything else — patch and
        # position embeddings, CLS/distillation/register tokens, pre-norms.
        trainable = {id(p) for blk in blocks[freeze_blocks:] for p in blk.parameters()}
        trainable |= {id(p) for p in final_norm.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Use the eager attention path: ``vmap`` has no batching rule for fused CPU attention."""
        with self.backbone.eager_attention():
            yield

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.activation == "relu":
            return torch.relu(logits)
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return logits

    def forward(
        self, pixel_values: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.backbone(pixel_values)[:, self.num_prefix_tokens :]  # B×P, row-major patches
        if self.class_conditioned and classes is None:
            raise ExplainersError("this LTE explainer is class-conditioned: pass the classes to explain")
        logits = self.head(tokens, classes if self.class_conditioned else None)
        if self.decoder is not None:
            pixel_logits = self.decoder(tokens, logits.reshape(-1, *self.grid), pixel_values)
            if tuple(pixel_logits.shape[-2:]) != self.image_size:
                pixel_logits = resize_maps(pixel_logits, self.image_size)
            mask = self.activate(pixel_logits.flatten(1)).reshape(pixel_logits.shape)
            if self.activation in ("relu", "none"):
                mask = mask.clamp(0.0, 1.0)
            return mask, mask
        patch = self.activate(logits).reshape(-1, *self.grid)
        mask = resize_maps(patch, self.image_size)
        if self.activation in ("relu", "none"):
            mask = mask.clamp(0.0, 1.0)  # unbounded scores: the reference clamps the mask to [0, 1]
        return patch, mask


def check_compatible(saved: dict[str, Any], adapter: ExplaineeAdapter, where: str) -> None:
    """Refuse a checkpoint whose explainee differs in architecture, patch grid or class count."""
    current = adapter.describe()
    diffs = [k for k in _COMPAT_KEYS if json.dumps(saved.get(k)) != json.dumps(current.get(k))]
    if diffs:

        def show(d: dict[str, Any]) -> str:
            return f"{d.get('identifier')} (" + ", ".join(f"{k}={d.get(k)}" for k in diffs) + ")"

        raise CheckpointMismatchError(
            f"explainer checkpoint {where} was made for explainee {show(saved)}, but the given explainee is "
            f"{show(current)}; pre-train an explainer for this explainee (`explainers pretrain lte`)"
        )
    for k in ("mean", "std"):
        if saved.get(k) is not None and saved.get(k) != current.get(k):
            log.warning(
                "explainer %s was trained with input %s %s, the explainee now uses %s",
                where,
                k,
                saved.get(k),
                current.get(k),
            )


class LTEExplainer:
    """A (pre-)trained LTE explainer bound to its explainee.

    ``explainer(images)`` gives pLTE masks (one forward pass); ``explainer.refine(images)`` gives LTE masks
    (per-image refinement, batched). Images are raw B×3×H×W in [0, 1]; maps are B×H×W in [0, 1] at the
    explainee's input size (not min–max normalised; the ``plte``/``lte`` methods do that).
    """

    def __init__(self, explainee: ExplaineeAdapter, config: LTEConfig | None = None) -> None:
        """A fresh explainer: the explainee's encoder weights plus a new head (where pre-training starts)."""
        self.adapter = explainee
        self.config = config or LTEConfig()
        if not explainee.supports_attention:
            raise ModelError(
                f"LTE needs a ViT explainee (its encoder initialises the explainer); {explainee.identifier} "
                f"({type(explainee.model).__name__}) is not one"
            )
        backbone = explainee.trainable_backbone()
        self.net = ExplainerNet(
            backbone,
            embed_dim=explainee.embed_dim,  # type: ignore[attr-defined]
            num_prefix_tokens=explainee.num_prefix_tokens,
            grid=explainee.grid,
            image_size=explainee.image_size,
            activation=self.config.activation,
            freeze_blocks=self.config.freeze_blocks,
            head_init_std=self.config.head_init_std,
            head=self.config.head,
            head_init_bias=self.config.head_init_bias,
            num_classes=explainee.num_classes if self.config.class_conditioned else 0,
        ).to(explainee.device)
        self.net.eval()
        #: Free-form facts about how the weights were made (epoch, validation score, command), saved along.
        self.training_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ convenience
    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> LTEExplainer:
        """Move everything the explainer computes with — its network and the explainee — to ``device``."""
        self.net.to(device)
        self.adapter.to(device)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    @property
    def class_conditioned(self) -> bool:
        """Whether the masks depend on the class asked about (``config.class_conditioned``)."""
        return self.net.class_conditioned

    def masks(
        self, images: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, mask) for raw [0,1] images already at the explainee's size (keeps the graph).
        ``classes`` (B) is read only by a class-conditioned explainer, which needs it."""
        return self.net(self.adapter.normalize(images), classes if self.class_conditioned else None)

    # ------------------------------------------------------------------ explaining
    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """pLTE masks B×H×W in [0, 1]. The reference explainer is class-agnostic (trained for one class
        convention, see ``config.class_mode``): its mask does not depend on ``targets``. A class-conditioned
        one (``config.class_conditioned``) draws the mask of ``targets`` (None: the predicted class)."""
        images = self.adapter.resize(images.to(self.device, torch.float32))
        classes = None
        if self.class_conditioned:
            # The explainee's logits resolve None (the prediction) and check the classes' range.
            classes = resolve_targets(targets, self.adapter.predict(images)).to(self.device)
        was_training = self.net.training
        self.net.eval()
        try:
            return self.masks(images, classes)[1]
        finally:
            self.net.train(was_training)

    def refine(
        self,
        images: torch.Tensor,
        targets: Targets = None,
        *,
        steps: int | None = None,
        lr: float | None = None,
        select: str | None = None,
        stop_below: float | None = None,
        stop_above: float | None = None,
        batch_size: int = 16,
        parallel: bool = True,
        return_details: bool = False,
        memory_budget: str | int | None = None,
    ) -> Any:
        """LTE masks: each image refined from these weights with a fresh AdamW.

        Unset options come from ``config`` (``refine_*``). ``targets`` None explains the predicted class.
        ``batch_size`` images are refined together (``parallel``: per-image weights through ``torch.func``);
        ``parallel=False`` is the one-by-one reference loop. ``memory_budget`` (bytes or e.g. ``"4GiB"``;
        default ``config.memory_budget``, else 80 % of the device's free memory) refines fewer images at
        once when ``batch_size`` would not fit (same results). Returns the maps, or with ``return_details`` a
        :class:`~explainers.learned.lte.refine.RefineResult` (maps, selected_step, selected_score).
        """
        result = refine_images(
            self,
            images,
            targets,
            steps=steps,
            lr=lr,
            select=select,
            stop_below=stop_below,
            stop_above=stop_above,
            batch_size=batch_size,
            parallel=parallel,
            memory_budget=memory_budget,
        )
        return result if return_details else result.maps

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` (config, explainee description) and ``model.safetensors`` into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "explainee": self.adapter.describe(),
            "explainee_weights_fingerprint": self.adapter.weights_fingerprint(),
            "training": {**self.training_info, **(extra or {})},
        }
        meta["library_version"] = __version__
        # config.json last: a directory with a config.json always has matching weights.
        write_text_atomic(path / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @staticmethod
    def read_metadata(path: str | Path) -> dict[str, Any]:
        """The checkpoint's ``config.json`` (format checked)."""
        return read_folder_config(
            Path(path).expanduser(),
            what="an LTE explainer checkpoint",
            format_name=FORMAT,
            newest_version=FORMAT_VERSION,
            version_key="format_version",
            how_to_make="make one with `explainers pretrain lte`",
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        explainee: ExplaineeAdapter | str | Path | nn.Module,
        *,
        device: str | torch.device | None = None,
        allow_other_weights: bool = False,
        **config_overrides: Any,
    ) -> LTEExplainer:
        """Load a checkpoint written by :meth:`save_pretrained` for ``explainee`` (adapter, spec or model).

        A checkpoint made for a different explainee (architecture, patch grid or class count) is refused,
        and so is one made for other weights of the same architecture unless ``allow_other_weights``.
        ``config_overrides`` change settings that do not affect the weights (e.g. ``refine_lr``).
        """
        path = Path(path).expanduser()
        meta = cls.read_metadata(path)
        adapter = load_explainee(explainee, device=None if device is None else str(device))
        check_compatible(meta.get("explainee", {}), adapter, str(path))
        check_fingerprint(
            meta.get("explainee_weights_fingerprint"),
            adapter.weights_fingerprint(),
            what="LTE explainer",
            source=str(path),
            model=f"explainee {adapter.identifier}",
            hint="pre-train one for these weights (`explainers pretrain lte`)",
            allow_other_weights=allow_other_weights,
        )
        config = LTEConfig.from_dict(meta.get("config", {}))
        structural = {"activation", "freeze_blocks", "head_init_std", "head", "class_conditioned"} & set(
            config_overrides
        )
        if structural:
            raise ExplainersError(
                f"cannot override {', '.join(sorted(structural))} when loading a checkpoint"
            )
        if config_overrides:
            config = config.replace(**config_overrides)
        explainer = cls(adapter, config)
        try:
            state = load_file(str(path / WEIGHTS_NAME))
        except (FileNotFoundError, SafetensorError, OSError) as exc:
            raise ModelError(f"cannot read the weights {path / WEIGHTS_NAME}: {exc}") from None
        try:
            explainer.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointMismatchError(
                f"weights in {path} do not fit explainee {adapter.identifier}: {exc}"
            ) from None
        explainer.training_info = dict(meta.get("training", {}))
        explainer.net.eval()
        return explainer
