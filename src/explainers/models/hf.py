"""Adapter for Hugging Face ``transformers`` ViT and DeiT image classifiers."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from explainers.data.resize import InputGeometry
from explainers.errors import ModelError
from explainers.models.base import (
    AttentionOutput,
    HeadPart,
    TrainableBackbone,
    ViTAdapterBase,
    ViTBlockParts,
    ViTParts,
)

# model_type -> (attribute holding the encoder model, number of prefix tokens)
_SUPPORTED = {"vit": ("vit", 1), "deit": ("deit", 2)}


class _HFBackbone(TrainableBackbone):
    """pixel values → tokens after the final LayerNorm, for a HF ViT/DeiT encoder (``ViTModel``...)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values).last_hidden_state

    @property
    def blocks(self) -> list[nn.Module]:
        # ``encoder.layers`` in transformers 5, ``encoder.encoder.layer`` before
        layers = getattr(self.encoder, "layers", None)
        return list(layers if layers is not None else self.encoder.encoder.layer)

    @property
    def final_norm(self) -> nn.Module:
        return self.encoder.layernorm

    def attention_mode(self) -> object:
        return self.encoder.config._attn_implementation

    def set_attention_mode(self, mode: object) -> None:
        if self.encoder.config._attn_implementation != mode:
            self.encoder.set_attn_implementation(mode)

    def eager_mode(self) -> object:
        return "eager"

    def fused_mode(self) -> object:
        return "sdpa"

    def architecture(self) -> dict | None:
        emb = self.encoder.embeddings
        return {
            "kind": "hf",
            "class": type(self.encoder).__name__,
            "config": self.encoder.config.to_dict(),
            "kwargs": {
                "add_pooling_layer": getattr(self.encoder, "pooler", None) is not None,
                "use_mask_token": getattr(emb, "mask_token", None) is not None,
            },
        }


class HFViTAdapter(ViTAdapterBase):
    """``ViTForImageClassification``, ``DeiTForImageClassification`` and ``...WithTeacher``."""

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
        """``mean``/``std``: the model's normalisation; else what its config carries (``image_mean``/
        ``image_std``, which ``explainers train-classifier`` writes); else refused — there is no safe default.
        ``geometry``: how images of other sizes are preprocessed (a directory's processor, read by
        :func:`explainers.models.loading.load_hf_directory`); else a direct resize to ``image_size``
        (default: the config's ``image_size``)."""
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in _SUPPORTED:
            raise ModelError(
                f"Hugging Face model type {model_type!r} ({type(model).__name__}) is not supported; "
                f"supported: {', '.join(_SUPPORTED)} image classifiers"
            )
        attr, prefix = _SUPPORTED[model_type]
        self.encoder = getattr(model, attr, None)
        if self.encoder is None:
            raise ModelError(f"{type(model).__name__} has no '{attr}' encoder: pass an image-classification model")
        if geometry is not None:
            size = geometry.size
        else:
            size = config.image_size if image_size is None else image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        patch = config.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if class_names is None and getattr(config, "id2label", None):
            class_names = [config.id2label[i] for i in sorted(config.id2label)]
        super().__init__(
            model,
            image_size=size,
            mean=mean if mean is not None else getattr(config, "image_mean", None),
            std=std if std is not None else getattr(config, "image_std", None),
            num_classes=config.num_labels,
            class_names=class_names,
            identifier=identifier or getattr(config, "_name_or_path", "") or type(model).__name__,
            patch_size=patch,
            num_prefix_tokens=prefix,
            geometry=geometry,
        )
        self._parts: ViTParts | None = None

    # --------------------------------------------------------------------- forward paths
    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Temporarily use the eager attention path (fused SDPA hides the attention probabilities)."""
        config = self.model.config
        previous = config._attn_implementation
        if previous == "eager":
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks (``encoder.layers`` in transformers 5, ``encoder.encoder.layer`` before)."""
        layers = getattr(self.encoder, "layers", None)
        return layers if layers is not None else self.encoder.encoder.layer

    def forward_attentions(self, pixel_values: torch.Tensor) -> AttentionOutput:
        attention_modules = [layer.attention for layer in self.layers]
        with self.eager_attention(), self._capture(attention_modules, lambda out: out[1]) as store:
            logits = self.model(pixel_values=pixel_values).logits
        return AttentionOutput(logits=logits, attentions=list(store))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values).last_hidden_state

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder.embeddings(pixel_values)

    def backbone(self) -> nn.Module:
        return _HFBackbone(self.encoder)

    def trainable_backbone(self) -> TrainableBackbone:
        # The encoder model (ViTModel/DeiTModel) holds no classifier head: a copy of it is the backbone.
        return _HFBackbone(copy.deepcopy(self.encoder))

    def parts(self) -> ViTParts:
        if self._parts is None:
            self._parts = self._build_parts()
        return self._parts

    def _build_parts(self) -> ViTParts:
        config = self.model.config
        blocks = []
        for layer in self.layers:
            attn = layer.attention
            blocks.append(
                ViTBlockParts(
                    norm1=layer.layernorm_before,
                    q_weight=attn.q_proj.weight,
                    q_bias=attn.q_proj.bias,
                    k_weight=attn.k_proj.weight,
                    k_bias=attn.k_proj.bias,
                    v_weight=attn.v_proj.weight,
                    v_bias=attn.v_proj.bias,
                    proj=attn.o_proj,
                    norm2=layer.layernorm_after,
                    fc1=layer.mlp.fc1,
                    act=layer.mlp.activation_fn,
                    fc2=layer.mlp.fc2,
                    num_heads=attn.num_attention_heads,
                    scale=float(attn.scaling),
                )
            )
        if hasattr(self.model, "distillation_classifier"):
            heads = [HeadPart(0, self.model.cls_classifier, 0.5), HeadPart(1, self.model.distillation_classifier, 0.5)]
        else:
            heads = [HeadPart(0, self.model.classifier, 1.0)]
        for head in heads:
            if not isinstance(head.linear, nn.Linear):
                raise ModelError(
                    f"{type(self.model).__name__} has no linear classifier (num_labels={config.num_labels})"
                )
        return ViTParts(
            patch_embed=self.encoder.embeddings.patch_embeddings.projection,
            blocks=blocks,
            final_norm=self.encoder.layernorm,
            heads=heads,
        )
