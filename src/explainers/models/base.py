"""The explainee adapter: one object per classifier that hides where a model keeps things."""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from explainers.data.resize import InputGeometry
from explainers.errors import ModelError
from explainers.maps import resize_maps

Targets = int | Sequence[int] | torch.Tensor | None


@dataclass
class ViTBlockParts:
    """One pre-norm transformer block as plain pieces (views of the model's own parameters).

    ``x = x + ls1 * proj(attn(norm1(x)))``, ``x = x + ls2 * fc2(act(fc1(norm2(x))))``; attention
    ``softmax(q kᵀ · scale) v`` per head. Fused qkv projections are exposed as their three slices.
    """

    norm1: nn.LayerNorm
    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    k_weight: torch.Tensor
    k_bias: torch.Tensor | None
    v_weight: torch.Tensor
    v_bias: torch.Tensor | None
    proj: nn.Linear
    norm2: nn.LayerNorm
    fc1: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    fc2: nn.Linear
    num_heads: int
    scale: float
    ls1: torch.Tensor | None = None
    ls2: torch.Tensor | None = None


@dataclass
class HeadPart:
    """A linear classifier reading one token; DeiT-distilled averages two (weight 0.5 each)."""

    token_index: int
    linear: nn.Linear
    weight: float = 1.0


@dataclass
class ViTParts:
    patch_embed: nn.Conv2d
    blocks: list[ViTBlockParts]
    final_norm: nn.Module
    heads: list[HeadPart]


@dataclass
class AttentionOutput:
    """Logits and per-block attention probabilities (B×heads×T×T, first block first).

    The attention tensors are the ones used in the forward graph, so ``torch.autograd.grad`` on them works.
    """

    logits: torch.Tensor
    attentions: list[torch.Tensor]


#: Slack on the [0, 1] range of raw images (float rounding of resizing and interpolation paths).
_RAW_TOLERANCE = 1e-3


def _check_raw(images: torch.Tensor) -> None:
    """Refuse a batch that cannot be raw [0, 1] images (one min/max reduction)."""
    if images.numel() == 0:
        return
    lo, hi = torch.aminmax(images.detach())
    lo, hi = float(lo), float(hi)
    if lo < -_RAW_TOLERANCE or hi > 1 + _RAW_TOLERANCE:
        raise ModelError(
            f"predict() takes raw images in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: for pixel values that "
            "are already normalised call adapter.logits(pixel_values)"
        )


def _normalisation(mean, std, identifier: str) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std as 1×C×1×1 tensors; both required (no default: a wrong one shifts every input)."""
    if mean is None or std is None:
        raise ModelError(
            f"explainee {identifier} has no normalisation (mean/std): pass mean= and std= (command line: "
            "--mean R,G,B --std R,G,B)"
        )
    mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
    if mean_t.numel() not in (1, 3) or std_t.numel() not in (1, 3):
        raise ModelError(f"mean and std need 3 values (one per channel), got {mean_t.tolist()} and {std_t.tolist()}")
    if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()) or bool((std_t <= 0).any()):
        raise ModelError(f"std must be positive and mean/std finite, got mean {mean_t.tolist()}, std {std_t.tolist()}")
    return mean_t.expand(3).reshape(1, 3, 1, 1).clone(), std_t.expand(3).reshape(1, 3, 1, 1).clone()


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """Targets as a LongTensor[B]: None → argmax of ``logits``; an int → that class for every image."""
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=-1)
    if isinstance(targets, int):
        out = torch.full((batch,), targets, dtype=torch.long, device=logits.device)
    else:
        out = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
        if out.numel() == 1 and batch != 1:
            out = out.expand(batch).clone()
    if out.shape[0] != batch:
        raise ModelError(f"got {out.shape[0]} targets for a batch of {batch} images; pass one per image")
    bad = (out < 0) | (out >= num_classes)
    if bad.any():
        raise ModelError(
            f"target class {int(out[bad][0])} is out of range: the explainee has {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
    return out


class TrainableBackbone(nn.Module):
    """What explainers need to know about a copied encoder, whatever library it comes from.

    ``forward(pixel_values)`` gives B×T×D tokens after the final norm (prefix tokens first). Subclasses
    (one per model library, in the adapters) expose the transformer ``blocks`` in order, the ``final_norm``
    and the attention implementation as an opaque value that :meth:`set_attention_mode` restores.
    """

    @property
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def final_norm(self) -> nn.Module:
        raise NotImplementedError

    def attention_mode(self) -> object:
        raise NotImplementedError

    def set_attention_mode(self, mode: object) -> None:
        raise NotImplementedError

    def eager_mode(self) -> object:
        """The mode value that computes attention by hand (``torch.func.vmap`` needs it on CPU)."""
        raise NotImplementedError

    def fused_mode(self) -> object:
        """The mode value of the fastest attention path (explainers never need attention maps)."""
        raise NotImplementedError

    def architecture(self) -> dict | None:
        """A JSON description from which the same module (fresh weights) can be rebuilt offline, or None
        when only a copy of the explainee can rebuild it."""
        return None

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        previous = self.attention_mode()
        self.set_attention_mode(self.eager_mode())
        try:
            yield
        finally:
            self.set_attention_mode(previous)


class ExplaineeAdapter:
    """Uniform access to a classifier.

    Two kinds of input, two entry points:

    - **raw images**: B×3×H×W in [0, 1] at :attr:`image_size` — :meth:`predict` (normalises, then runs the
      model; refuses values outside [0, 1]). :meth:`resize` / :meth:`preprocess` bring images of any size
      there with the model's own preprocessing (:attr:`input_geometry`: resize, centre crop).
    - **pixel values**: normalised with the model's mean/std (what the network sees) — :meth:`logits`,
      :meth:`forward_attentions`, :meth:`features` and every other model call.

    The adapter itself is not callable: ``adapter(x)`` would not say which of the two ``x`` is.
    ViT adapters also describe the token layout (patch grid, prefix tokens) and give attention maps,
    their gradients, the final features and the model's parts.
    """

    #: Whether attention maps can be reached (ViT-like models only).
    supports_attention: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        class_names: list[str] | None = None,
        identifier: str = "model",
        geometry: InputGeometry | None = None,
    ) -> None:
        self.model = model.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if geometry is not None and geometry.size != self.image_size:
            raise ModelError(
                f"{identifier}: the preprocessing makes {geometry.size[0]}×{geometry.size[1]} inputs but the "
                f"model takes {self.image_size[0]}×{self.image_size[1]}"
            )
        #: How images of other sizes become model inputs (resize, centre crop, interpolation).
        self.input_geometry = geometry if geometry is not None else InputGeometry(self.image_size)
        self._mean, self._std = _normalisation(mean, std, identifier)
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.identifier = identifier

    # ----------------------------------------------------------------- description
    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.flatten()

    @property
    def std(self) -> torch.Tensor:
        return self._std.flatten()

    def describe(self) -> dict:
        """A JSON-able description, stored with mask files and checkpoints to recognise the explainee."""
        return {
            "identifier": self.identifier,
            "adapter": type(self).__name__,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
            "preprocessing": self.input_geometry.describe(),
        }

    def weights_fingerprint(self, *, heads: bool = True) -> str:
        """sha256 over every parameter and buffer of the model (float32 bytes, sorted by name).

        The one identity check for "the same weights": mask files, checkpoints and resumed runs store it
        and refuse (or record) a mismatch. Device- and dtype-independent: tensors are hashed as float32 on
        the CPU, so a model moved to a GPU or run in bf16 keeps its fingerprint.

        ``heads=False`` hashes the encoder only (:meth:`backbone`, classifier heads excluded): what LETA
        explainers and linear probes depend on, since a probe is the same encoder with another head.
        """
        if heads:
            items = list(self.model.state_dict(keep_vars=True).items())
        else:
            head_ids = {id(p) for head in self.parts().heads for p in head.linear.parameters()}
            backbone = self.backbone().state_dict(keep_vars=True).items()
            items = [(n, t) for n, t in backbone if id(t) not in head_ids]
        digest = hashlib.sha256()
        for name, tensor in sorted(items, key=lambda kv: kv[0]):
            data = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(name.encode())
            digest.update(str(tuple(data.shape)).encode())
            digest.update(data.numpy().tobytes())
        return digest.hexdigest()

    def to(self, device: torch.device | str) -> ExplaineeAdapter:
        self.model.to(device)
        return self

    # ----------------------------------------------------------------- preprocessing
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images (B×3×H×W) → normalised pixel values with the model's own mean/std."""
        mean = self._mean.to(device=images.device, dtype=images.dtype)
        std = self._std.to(device=images.device, dtype=images.dtype)
        return (images - mean) / std

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images (B×3×H×W, any size) → the explainee's size, as the model's processor does.

        The one place images are brought to the model's size (datasets are collated with
        :attr:`input_geometry` too): resize — the shorter side to the processor's resize size when it
        centre-crops (DeiT: 256, then a 224 crop), else straight to the model size — antialiased with the
        processor's interpolation (PIL-equivalent), then centre-crop. Images already at :attr:`image_size`
        are returned unchanged (taken as already preprocessed).
        """
        return self.input_geometry.images(images)

    def resize_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """B×H×W boolean masks → the explainee's size through the same resize and crop as :meth:`resize`
        (nearest-exact, identical to PIL NEAREST), so they stay aligned with the images."""
        return self.input_geometry.masks(masks)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Raw [0,1] images of any size → normalised pixel values at the model's size (for :meth:`logits`)."""
        return self.normalize(self.resize(images))

    # ----------------------------------------------------------------- forward
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class logits B×C for *normalised* pixel values (``adapter.preprocess(images)``); the fast path:
        the model's own forward. For raw [0, 1] images use :meth:`predict`."""
        return self.model(pixel_values)

    def __call__(self, *args, **kwargs):
        raise ModelError(
            "an explainee adapter is not called directly: use adapter.predict(images) for raw images in "
            "[0, 1], or adapter.logits(pixel_values) for normalised ones (adapter.preprocess(images))"
        )

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits B×C for *raw* images in [0, 1] at :attr:`image_size` (normalises, then :meth:`logits`).

        Refuses values outside [0, 1] (beyond float rounding): those are not raw images — most likely
        already-normalised pixel values, which belong to :meth:`logits`. Normalising them twice would give
        plausible-looking but wrong logits.
        """
        _check_raw(images)
        return self.logits(self.normalize(images))

    # ----------------------------------------------------------------- ViT-only API
    def _needs_vit(self, what: str) -> ModelError:
        return ModelError(
            f"{what} needs a ViT-like explainee with reachable attention, but {self.identifier} "
            f"({type(self.model).__name__}) is a plain module; use a Hugging Face ViT/DeiT or timm "
            "VisionTransformer, or a model-agnostic method (rise, integrated-gradients, random)"
        )

    @property
    def patch_size(self) -> tuple[int, int]:
        raise self._needs_vit("the patch size")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns); tokens after the prefix are in row-major order."""
        raise self._needs_vit("the patch grid")

    @property
    def num_prefix_tokens(self) -> int:
        raise self._needs_vit("the token layout")

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    def forward_attentions(self, pixel_values: torch.Tensor) -> AttentionOutput:
        raise self._needs_vit("attention maps")

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm, B×T×D (prefix tokens first)."""
        raise self._needs_vit("token features")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`features` output."""
        parts = self.parts()
        return sum(h.weight * h.linear(features[:, h.token_index]) for h in parts.heads)  # type: ignore[return-value]

    def cls_embedding(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The post-LayerNorm CLS token, B×D (the embedding LETA explains)."""
        return self.features(pixel_values)[:, 0]

    def parts(self) -> ViTParts:
        raise self._needs_vit("the model's parts")

    def backbone(self) -> nn.Module:
        """The encoder (embeddings, blocks, final norm) as a module: pixel values → features."""
        raise self._needs_vit("the backbone")

    def trainable_backbone(self) -> TrainableBackbone:
        """A deep copy of the encoder that an explainer trains from: pixel values → all tokens after the
        final norm, without any classifier head (an unused head would stall DDP and bloat checkpoints).
        The copy shares nothing with the explainee, so training it leaves the explainee unchanged."""
        raise self._needs_vit("a trainable backbone copy")

    # ----------------------------------------------------------------- derived helpers
    def attention_gradients(
        self, pixel_values: torch.Tensor, targets: Targets = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(logits, attentions, d target-logit / d attention, targets), all per image.

        The gradient is of the sum over the batch of each image's target logit; images do not interact,
        so each image gets its own gradient.
        """
        with torch.enable_grad():
            out = self.forward_attentions(pixel_values)
            targets_t = resolve_targets(targets, out.logits.detach())
            score = out.logits.gather(1, targets_t[:, None]).sum()
            grads = torch.autograd.grad(score, out.attentions)
        return out.logits.detach(), [a.detach() for a in out.attentions], list(grads), targets_t

    def patch_map_to_image(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """B×P (row-major) or B×gh×gw patch scores → B×H×W, bilinear (align_corners=False)."""
        return resize_maps(patch_scores.reshape(-1, *self.grid), self.image_size)


class ViTAdapterBase(ExplaineeAdapter):
    """Shared pieces of the ViT adapters: token layout from the parts, hooks for attention capture."""

    supports_attention = True

    def __init__(self, model: nn.Module, *, patch_size: tuple[int, int], num_prefix_tokens: int, **kw) -> None:
        super().__init__(model, **kw)
        self._patch_size = (int(patch_size[0]), int(patch_size[1]))
        self._num_prefix_tokens = int(num_prefix_tokens)
        gh, gw = self.image_size[0] // self._patch_size[0], self.image_size[1] // self._patch_size[1]
        self._grid = (gh, gw)

    @property
    def patch_size(self) -> tuple[int, int]:
        return self._patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def num_prefix_tokens(self) -> int:
        return self._num_prefix_tokens

    @property
    def num_blocks(self) -> int:
        return len(self.parts().blocks)

    @property
    def num_heads(self) -> int:
        return self.parts().blocks[0].num_heads

    @property
    def embed_dim(self) -> int:
        return self.parts().patch_embed.out_channels

    def describe(self) -> dict:
        desc = super().describe()
        desc.update(
            patch_size=list(self.patch_size),
            grid=list(self.grid),
            num_prefix_tokens=self.num_prefix_tokens,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            embed_dim=self.embed_dim,
        )
        return desc

    def randomized_copy(self, last_blocks: int, *, seed: int = 0, std: float = 0.02) -> ViTAdapterBase:
        """A deep copy whose last ``last_blocks`` transformer blocks are re-initialised, for the
        model-parameter randomisation sanity check: weight matrices drawn from N(0, std²) (the HF and timm
        ViT initialisation), biases zero, LayerNorms reset to identity. Embeddings, the final norm, the head
        and layer-scale factors keep their trained values, so only what the blocks compute changes."""
        if not 1 <= last_blocks <= self.num_blocks:
            raise ModelError(f"last_blocks must be 1…{self.num_blocks} for {self.identifier}, got {last_blocks}")
        # The cached parts are views into the model (views cannot be deep-copied): the copy rebuilds its
        # own. Everything else, submodule references included, is copied consistently through the memo.
        cached = getattr(self, "_parts", None)
        twin = copy.deepcopy(self, {id(cached): None} if cached is not None else {})
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for block in twin.parts().blocks[-last_blocks:]:
                weights = [block.q_weight, block.k_weight, block.v_weight, block.proj.weight, block.fc1.weight]
                for w in [*weights, block.fc2.weight]:
                    w.copy_(torch.randn(w.shape, generator=generator).mul_(std).to(w))
                for b in (block.q_bias, block.k_bias, block.v_bias, block.proj.bias, block.fc1.bias, block.fc2.bias):
                    if b is not None:
                        b.zero_()
                for norm in (block.norm1, block.norm2):
                    if getattr(norm, "weight", None) is not None:
                        norm.weight.fill_(1.0)
                    if getattr(norm, "bias", None) is not None:
                        norm.bias.zero_()
        # Messages about the copy (a learned explainer made for other weights, say) must not read as if
        # they were about the trained model.
        twin.identifier = f"{self.identifier} with its last {last_blocks} block(s) randomised"
        return twin

    @contextlib.contextmanager
    def _capture(self, modules: Sequence[nn.Module], pick: Callable[[object], torch.Tensor]) -> Iterator[list]:
        """Collect ``pick(output)`` of each module's forward; hooks are removed even on error."""
        store: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: store.append(pick(out))) for m in modules]
        try:
            yield store
        finally:
            for handle in handles:
                handle.remove()

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tokens after the embedding layer (prefix tokens and position embeddings added), B×T×D."""
        raise NotImplementedError

    def reference_forward(self, pixel_values: torch.Tensor) -> AttentionOutput:
        """Forward through :meth:`parts` written out by hand. Checks that the parts describe the model
        exactly, and is the template relevance propagation follows."""
        parts = self.parts()
        x = self.embed(pixel_values)
        attentions = []
        for blk in parts.blocks:
            h = blk.norm1(x)
            b, t, _ = h.shape
            heads = blk.num_heads

            def split(w: torch.Tensor, bias: torch.Tensor | None, h=h, b=b, t=t, heads=heads) -> torch.Tensor:
                return F.linear(h, w, bias).reshape(b, t, heads, -1).transpose(1, 2)

            q, k, v = split(blk.q_weight, blk.q_bias), split(blk.k_weight, blk.k_bias), split(blk.v_weight, blk.v_bias)
            attn = torch.softmax(q @ k.transpose(-1, -2) * blk.scale, dim=-1)
            attentions.append(attn)
            out = blk.proj((attn @ v).transpose(1, 2).reshape(b, t, -1))
            x = x + (out * blk.ls1 if blk.ls1 is not None else out)
            mlp = blk.fc2(blk.act(blk.fc1(blk.norm2(x))))
            x = x + (mlp * blk.ls2 if blk.ls2 is not None else mlp)
        x = parts.final_norm(x)
        logits = sum(hd.weight * hd.linear(x[:, hd.token_index]) for hd in parts.heads)
        return AttentionOutput(logits=logits, attentions=attentions)  # type: ignore[arg-type]
