"""LETA's network: a ViT backbone and token-mixing heads that predict ψ⁺ and ψ⁻ for every patch
(docs/learned-explainers.md).

Backbones are described by an ``arch`` dict stored in the checkpoint's config.json, so that
``from_pretrained`` can rebuild the exact module offline (Hugging Face configs are stored whole; other
backbones are rebuilt from the encoder or spec they were copied from).
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explainers.errors import ModelError
from explainers.learned.leta.config import LETAConfig
from explainers.models import load_explainee
from explainers.models.base import ExplaineeAdapter
from explainers.models.signature import embed_dim

# ---------------------------------------------------------------------------------------------------------
# Token-mixing head


class MixerLayer(nn.Module):
    """LayerNorm → channel Linear → token Linear, with optional GELU (after each linear) and residual.

    Tokens are mixed by a Linear over the token axis (an MLP-Mixer-style layer), which lets ψ_c gather
    evidence from the whole window around patch c and from the prefix tokens.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        tokens_in: int,
        tokens_out: int,
        *,
        act: bool,
        residual: bool,
        token_offset: int = 0,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim_in)
        self.channel = nn.Linear(dim_in, dim_out)
        self.token = nn.Linear(tokens_in, tokens_out)
        self.act = act
        self.residual = residual and dim_in == dim_out and tokens_in == tokens_out
        # Start the token mixing at "each output patch reads its own input token" (offset past the prefix
        # tokens) rather than a random mix: the head then begins as a per-token MLP and learns to mix, which
        # trains faster than unlearning a random blend of all patches.
        with torch.no_grad():
            self.token.weight.zero_()
            self.token.bias.zero_()
            n = min(tokens_out, tokens_in - token_offset)
            idx = torch.arange(n)
            self.token.weight[idx, idx + token_offset] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×T×C
        y = self.channel(self.norm(x))
        if self.act:
            y = F.gelu(y)
        y = self.token(y.transpose(1, 2)).transpose(1, 2)
        if self.act:
            y = F.gelu(y)
        return y + x if self.residual else y


class TokenMixingHead(nn.Module):
    """``depth`` mixer layers: [B, T_in, C] → [B, P, D].

    Layer 0 maps channels C → hidden and tokens T_in → P (prefix tokens dropped from the output); middle
    layers keep the shape with GELU and a residual; the last maps hidden → D, without activation (ψ must
    reach any value of the embedding). A depth-1 head is a single linear layer in each axis.
    """

    def __init__(
        self, depth: int, tokens_in: int, tokens_out: int, dim_in: int, hidden: int, dim_out: int
    ) -> None:
        super().__init__()
        offset = tokens_in - tokens_out if tokens_in > tokens_out else 0
        layers: list[nn.Module] = []
        for i in range(depth):
            first, last = i == 0, i == depth - 1
            layers.append(
                MixerLayer(
                    dim_in if first else hidden,
                    dim_out if last else hidden,
                    tokens_in if first else tokens_out,
                    tokens_out,
                    act=not (first or last),
                    residual=not (first or last),
                    token_offset=offset if first else 0,
                )
            )
        self.layers = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)


# ---------------------------------------------------------------------------------------------------------
# Backbones


class _HFTokens(nn.Module):
    """A Hugging Face ViT/DeiT encoder (``ViTModel``...): pixel values → all tokens after the final norm."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values).last_hidden_state


class _MAETokens(nn.Module):
    """A Hugging Face ``ViTMAEForPreTraining`` with mask ratio 0: encoder tokens, or decoder tokens
    (before the pixel predictor) as in the reference encoder–decoder backbone."""

    def __init__(self, mae: nn.Module, decoder: bool) -> None:
        super().__init__()
        mae.config.mask_ratio = 0.0
        self.vit = mae.vit
        self.use_decoder = decoder
        if decoder:
            self.decoder = mae.decoder
            # The pixel predictor is not part of the representation; dropping it keeps its (unused)
            # parameters out of the optimiser and of DDP's gradient bookkeeping.
            self.decoder.decoder_pred = nn.Identity()
            # At mask ratio 0 no token is masked, so the mask token is never used; an unused parameter
            # would make DDP wait forever for its gradient.
            del self.decoder.mask_token
            self.decoder.register_parameter("mask_token", None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        num = self.vit.embeddings.patch_embeddings.num_patches
        # MAE shuffles patches by the order of `noise` even at mask ratio 0: an increasing noise keeps the
        # tokens in row-major order, so no un-shuffling is needed.
        noise = torch.arange(num, device=pixel_values.device, dtype=pixel_values.dtype).expand(b, num)
        latent = self.vit(pixel_values=pixel_values, noise=noise).last_hidden_state
        if not self.use_decoder:
            return latent
        dec = self.decoder
        h = dec.decoder_embed(latent) + dec.decoder_pos_embed
        for layer in dec.decoder_layers:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        return dec.decoder_norm(h)


class TokenBackbone(nn.Module):
    """Raw [0,1] images → backbone tokens B×T×C, with the backbone's own resizing and normalisation."""

    def __init__(self, module: nn.Module, arch: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.arch = arch
        self.image_size = (int(arch["image_size"][0]), int(arch["image_size"][1]))
        self.num_tokens = int(arch["num_tokens"])
        self.num_prefix_tokens = int(arch["num_prefix_tokens"])
        self.dim = int(arch["dim"])
        self.register_buffer(
            "mean", torch.tensor(arch["mean"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(arch["std"], dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return self.module((images - self.mean) / self.std)


def _set_sdpa(model: nn.Module) -> None:
    # Fused attention: the explainer never needs attention maps, and SDPA is the fast path.
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        with contextlib.suppress(ValueError, ImportError):  # eager-only models keep their path
            setter("sdpa")


def _build_hf(arch: dict[str, Any]) -> nn.Module:
    import transformers

    cls = getattr(transformers, arch["class"], None)
    if cls is None:
        raise ModelError(f"transformers has no class {arch['class']!r}; cannot rebuild the LETA backbone")
    config = cls.config_class.from_dict(arch["config"])
    model = cls(config, **arch.get("kwargs", {}))
    _set_sdpa(model)
    return model


def _reset_parameters(module: nn.Module, seed: int) -> None:
    """Fresh init for a copied backbone: modules' own ``reset_parameters`` and N(0, 0.02) for loose
    parameters (CLS token, position embeddings) that no module resets."""
    torch.manual_seed(seed)
    owned = set()
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()
            owned.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in owned:
                nn.init.trunc_normal_(p, std=0.02)


def _adapter_arch(adapter: ExplaineeAdapter, spec: str) -> dict[str, Any]:
    prefix = adapter.num_prefix_tokens
    return {
        "image_size": list(adapter.image_size),
        "mean": [float(v) for v in adapter.mean],
        "std": [float(v) for v in adapter.std],
        "num_prefix_tokens": prefix,
        "num_tokens": prefix + adapter.num_patches,
        "dim": int(adapter.embed_dim),  # type: ignore[attr-defined]
        "spec": spec,
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from None


def _mae_from_dir(path: Path, decoder: bool, pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    if not (path / "config.json").exists():
        raise ModelError(f"mae backbone {path} has no config.json: pass a Hugging Face ViTMAE directory")
    config = ViTMAEConfig.from_pretrained(path)
    config.mask_ratio = 0.0
    if pretrained:
        mae = ViTMAEForPreTraining.from_pretrained(path, config=config)
    else:
        mae = ViTMAEForPreTraining(config)
    _set_sdpa(mae)
    pre = _read_json(path / "preprocessor_config.json")
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else [config.image_size] * 2
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    arch = {
        "kind": "hf-mae",
        "config": config.to_dict(),
        "decoder": decoder,
        "image_size": list(size),
        "mean": list(pre.get("image_mean", [0.485, 0.456, 0.406])),
        "std": list(pre.get("image_std", [0.229, 0.224, 0.225])),
        "num_prefix_tokens": 1,
        "num_tokens": 1 + (size[0] // patch) * (size[1] // patch),
        "dim": config.decoder_hidden_size if decoder else config.hidden_size,
    }
    return _MAETokens(mae, decoder), arch


def build_backbone(config: LETAConfig, encoder: ExplaineeAdapter, seed: int = 0) -> TokenBackbone:
    """A new backbone for a LETA explainer of ``encoder`` (weights per ``config.backbone_init``)."""
    pretrained = config.backbone_init == "pretrained"
    spec = config.backbone
    if spec.startswith("mae:"):
        torch.manual_seed(seed)
        module, arch = _mae_from_dir(Path(spec[4:]).expanduser(), config.mae_decoder, pretrained)
        return TokenBackbone(module, arch)
    if spec == "encoder":
        adapter = encoder
    else:
        adapter = load_explainee(spec)
    if not adapter.supports_attention:
        raise ModelError(f"LETA backbone {spec!r} is not a ViT-like model ({type(adapter.model).__name__})")
    module = adapter.trainable_backbone()  # the adapter knows its library; no classifier head in it
    arch = {**_adapter_arch(adapter, spec), **(module.architecture() or {"kind": "copy"})}
    if pretrained:
        with contextlib.suppress(ValueError, ImportError):  # eager-only models keep their path
            module.set_attention_mode(module.fused_mode())
        return TokenBackbone(module, arch)
    torch.manual_seed(seed)
    if arch["kind"] == "hf":  # same architecture, the library's own fresh init
        return TokenBackbone(_HFTokens(_build_hf(arch)), arch)
    _reset_parameters(module, seed)
    return TokenBackbone(module, arch)


def rebuild_backbone(arch: dict[str, Any], encoder: ExplaineeAdapter) -> TokenBackbone:
    """The module described by a saved ``arch`` (weights are loaded afterwards)."""
    kind = arch.get("kind")
    if kind == "hf":
        return TokenBackbone(_HFTokens(_build_hf(arch)), arch)
    if kind == "hf-mae":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        mae = ViTMAEForPreTraining(ViTMAEConfig.from_dict(arch["config"]))
        _set_sdpa(mae)
        return TokenBackbone(_MAETokens(mae, bool(arch["decoder"])), arch)
    if kind == "copy":
        if arch.get("spec", "encoder") == "encoder":
            module = encoder.trainable_backbone()
        else:
            module = load_explainee(arch["spec"]).trainable_backbone()
        return TokenBackbone(module, arch)
    raise ModelError(f"unknown LETA backbone kind {kind!r} in the checkpoint; upgrade explainers")


# ---------------------------------------------------------------------------------------------------------
# The network


class LETANetwork(nn.Module):
    """[0,1] images → (ψ⁺, ψ⁻), each B×P×D: predicted embeddings of the window-only and window-removed
    images for every patch (row-major)."""

    def __init__(
        self, config: LETAConfig, backbones: list[TokenBackbone], num_patches: int, embed_dim: int
    ) -> None:
        super().__init__()
        expected = 1 if config.layout == "shared" else 2
        if len(backbones) != expected:
            raise ValueError(f"layout {config.layout!r} needs {expected} backbone(s), got {len(backbones)}")
        self.config = config
        self.backbones = nn.ModuleList(backbones)
        bb = backbones[0]
        hidden = config.head_dim or embed_dim
        self.head_pos = TokenMixingHead(
            config.head_depth, bb.num_tokens, num_patches, bb.dim, hidden, embed_dim
        )
        self.head_neg = TokenMixingHead(
            config.head_depth, bb.num_tokens, num_patches, bb.dim, hidden, embed_dim
        )
        self.num_patches = num_patches
        self.embed_dim = embed_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens_pos = self.backbones[0](images)
        tokens_neg = tokens_pos if len(self.backbones) == 1 else self.backbones[1](images)
        return self.head_pos(tokens_pos), self.head_neg(tokens_neg)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_network(
    config: LETAConfig, encoder: ExplaineeAdapter, *, seed: int = 0, arch: dict[str, Any] | None = None
) -> LETANetwork:
    """A LETA network for ``encoder``: new (``arch`` None) or the skeleton of a saved one."""
    dim = embed_dim(encoder)
    if arch is None:
        with torch.random.fork_rng(devices=[]):
            first = build_backbone(config, encoder, seed=seed)
        # Both branches start from the same weights (the reference initialises both from MAE-base).
        backbones = [first] if config.layout == "shared" else [first, copy.deepcopy(first)]
    else:
        backbones = [rebuild_backbone(arch, encoder) for _ in range(1 if config.layout == "shared" else 2)]
    # Seeded, but without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return LETANetwork(config, backbones, encoder.num_patches, dim)
