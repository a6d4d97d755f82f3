"""Attention Grad-CAM: Grad-CAM on the last block's attention map.

Both the attention A and its gradient ∇A (of the target logit) are restricted to the CLS row's patch
entries; each head is weighted by the mean of its gradient row; map = relu(mean_heads(weight · A_cls)).
"""

from __future__ import annotations

import torch

from explainers.methods._attention import AttentionMethod
from explainers.methods.base import register_method


def attention_gradients(
    method: AttentionMethod, images: torch.Tensor, targets: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Attentions and their gradients for raw images; the input requires grad so that frozen models
    (all parameters ``requires_grad=False``) still put the attention maps in the autograd graph."""
    pixels = method.adapter.normalize(images).detach().requires_grad_(True)
    _, attentions, grads, _ = method.adapter.attention_gradients(pixels, method.targets_or_none(targets))
    return attentions, grads


@register_method("attention-gradcam")
class AttentionGradCAM(AttentionMethod):
    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        attentions, grads = attention_gradients(self, images, targets)
        attn = self.cls_patches(attentions[-1])  # B×heads×P
        grad = self.cls_patches(grads[-1])
        weights = grad.mean(dim=-1, keepdim=True)  # one weight per head
        return (weights * attn).mean(dim=1).clamp_min(0)
