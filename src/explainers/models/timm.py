"""Adapter for timm ``VisionTransformer`` models (optional: timm is imported only when asked)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import nn

from explainers._compat import patch_torchvision
from explainers.data.resize import INTERPOLATIONS, InputGeometry
from explainers.errors import ModelError
from explainers.models.base import (
    AttentionOutput,
    HeadPart,
    TrainableBackbone,
    ViTAdapterBase,
    ViTBlockParts,
    ViTParts,
)


def is_timm_vit(model: nn.Module) -> bool:
    """Duck-typed: a timm VisionTransformer without importing timm."""
    return all(
        hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens", "forward_features", "_pos_embed")
    )


def timm_geometry(image_size: tuple[int, int], cfg: dict) -> InputGeometry:
    """timm's evaluation preprocessing (``transforms_imagenet_eval``) from a ``pretrained_cfg``.

    ``crop_mode`` "center" (the default): resize the shorter side to ⌊size / crop_pct⌋, then centre-crop
    (torchvision's rounding of the offset); "squash": resize both sides to ⌊size / crop_pct⌋, then crop.
    ``interpolation`` defaults to bicubic and ``crop_pct`` to 0.875, as in timm. A model without a
    ``pretrained_cfg`` (built directly) is resized straight to its size. The size is the model's own
    (``patch_embed.img_size``), which can differ from the config's ``input_size`` when built with ``img_size``.
    """
    size = (int(image_size[0]), int(image_size[1]))
    if not cfg:
        return InputGeometry(size)
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise ModelError(
            f"timm pretrained_cfg interpolation {interpolation!r} is not supported ({', '.join(INTERPOLATIONS)}); "
            "pass image_size to resize straight to the model size instead"
        )
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    crop_mode = cfg.get("crop_mode") or "center"
    scale = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    if crop_mode == "squash":
        return InputGeometry(size, resize=scale, interpolation=interpolation, crop_rounding="round")
    if crop_mode != "center" or scale[0] != scale[1]:
        raise ModelError(
            f"timm crop_mode {crop_mode!r} with input size {size[0]}×{size[1]} is not supported (only 'center' "
            "on square inputs and 'squash'); pass image_size to resize straight to the model size instead"
        )
    return InputGeometry(size, resize=scale[0], interpolation=interpolation, crop_rounding="round")


class _TimmBackbone(TrainableBackbone):
    """pixel values → ``forward_features`` tokens of a timm VisionTransformer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    @property
    def final_norm(self) -> nn.Module:
        return self.model.norm

    def attention_mode(self) -> object:
        return [bool(getattr(blk.attn, "fused_attn", False)) for blk in self.model.blocks]

    def set_attention_mode(self, mode: object) -> None:
        blocks = self.model.blocks
        flags = [mode] * len(blocks) if isinstance(mode, bool) else list(mode)  # type: ignore[call-overload]
        for blk, flag in zip(blocks, flags, strict=True):
            blk.attn.fused_attn = flag

    def eager_mode(self) -> object:
        return False

    def fused_mode(self) -> object:
        return True


class TimmViTAdapter(ViTAdapterBase):
    """timm ``VisionTransformer`` (class token, optional register tokens; DeiT-distilled via ``dist_token``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mean=None,
        std=None,
        image_size=None,
        identifier=None,
        class_names=None,
        geometry: InputGeometry | None = None,
    ) -> None:
        """``mean``/``std``: explicit, else the model's ``pretrained_cfg`` values, else refused.
        Preprocessing: ``geometry`` if given; else a direct resize to ``image_size`` if given; else what
        ``pretrained_cfg`` says (timm's evaluation transform, see :func:`timm_geometry`)."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if geometry is not None:
            image_size = geometry.size
        elif image_size is None:
            image_size = tuple(model.patch_embed.img_size)
            geometry = timm_geometry(image_size, cfg)
        patch = tuple(model.patch_embed.patch_size)
        num_classes = getattr(model, "num_classes", 0)
        if not num_classes:
            raise ModelError(f"timm model {type(model).__name__} has no classifier head (num_classes=0)")
        super().__init__(
            model,
            image_size=image_size,
            mean=mean if mean is not None else cfg.get("mean"),
            std=std if std is not None else cfg.get("std"),
            num_classes=num_classes,
            class_names=class_names,
            identifier=identifier or f"timm:{cfg.get('architecture', type(model).__name__)}",
            patch_size=patch,
            num_prefix_tokens=model.num_prefix_tokens,
            geometry=geometry,
        )
        self._parts: ViTParts | None = None

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    @contextlib.contextmanager
    def _manual_attention(self) -> Iterator[None]:
        attns = [blk.attn for blk in self.model.blocks]
        previous = [a.fused_attn for a in attns]
        try:
            for a in attns:
                a.fused_attn = False
            yield
        finally:
            for a, prev in zip(attns, previous, strict=True):
                a.fused_attn = prev

    def forward_attentions(self, pixel_values: torch.Tensor) -> AttentionOutput:
        # attn_drop's output is the probability tensor multiplied with v (identity in eval mode).
        drops = [blk.attn.attn_drop for blk in self.model.blocks]
        with self._manual_attention(), self._capture(drops, lambda out: out) as store:
            logits = self.model(pixel_values)
        return AttentionOutput(logits=logits, attentions=list(store))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(pixel_values)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixel_values))))

    def backbone(self) -> nn.Module:
        return _TimmBackbone(self.model)

    def trainable_backbone(self) -> TrainableBackbone:
        model = copy.deepcopy(self.model)
        # forward_features never reaches the classifier: replace it so that no weight sits unused (DDP
        # with find_unused_parameters=False stalls on the second step) or gets saved with the explainer.
        for name in ("head", "head_dist", "fc_norm", "head_drop"):
            if isinstance(getattr(model, name, None), nn.Module):
                setattr(model, name, nn.Identity())
        return _TimmBackbone(model)

    def parts(self) -> ViTParts:
        if self._parts is None:
            self._parts = self._build_parts()
        return self._parts

    def _build_parts(self) -> ViTParts:
        m = self.model
        blocks = []
        for blk in m.blocks:
            attn = blk.attn
            if not isinstance(attn.q_norm, nn.Identity) or not isinstance(
                getattr(attn, "norm", nn.Identity()), nn.Identity
            ):
                raise ModelError("timm ViTs with q/k or attention-output norms are not supported by relevance methods")
            d = attn.qkv.out_features // 3
            w, b = attn.qkv.weight, attn.qkv.bias
            blocks.append(
                ViTBlockParts(
                    norm1=blk.norm1,
                    q_weight=w[:d],
                    q_bias=None if b is None else b[:d],
                    k_weight=w[d : 2 * d],
                    k_bias=None if b is None else b[d : 2 * d],
                    v_weight=w[2 * d :],
                    v_bias=None if b is None else b[2 * d :],
                    proj=attn.proj,
                    norm2=blk.norm2,
                    fc1=blk.mlp.fc1,
                    act=blk.mlp.act,
                    fc2=blk.mlp.fc2,
                    num_heads=attn.num_heads,
                    scale=float(attn.scale),
                    ls1=getattr(blk.ls1, "gamma", None),
                    ls2=getattr(blk.ls2, "gamma", None),
                )
            )
        if getattr(m, "global_pool", "token") != "token" or not isinstance(m.fc_norm, nn.Identity):
            raise ModelError(
                f"timm model pools with {m.global_pool!r}; relevance methods need CLS-token pooling "
                "(global_pool='token')"
            )
        heads = [HeadPart(0, m.head, 1.0)]
        if getattr(m, "head_dist", None) is not None:  # timm DeiT-distilled averages two heads in eval
            heads = [HeadPart(0, m.head, 0.5), HeadPart(1, m.head_dist, 0.5)]
        return ViTParts(patch_embed=m.patch_embed.proj, blocks=blocks, final_norm=m.norm, heads=heads)


def load_timm(name: str, *, image_size=None, mean=None, std=None) -> TimmViTAdapter:
    """Create a timm model by name with pretrained weights (needs the hub or timm's local cache)."""
    patch_torchvision()
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install 'explainers[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise ModelError(f"could not create timm model {name!r} with weights: {exc}") from None
    if not is_timm_vit(model):
        raise ModelError(f"timm model {name!r} is not a VisionTransformer; only timm ViTs are supported")
    return TimmViTAdapter(model, mean=mean, std=std, image_size=image_size)
