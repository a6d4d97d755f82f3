"""Shared fixtures: tiny models built from configs (no hub access) and made-up images."""

from __future__ import annotations

import os

# Before torch loads OpenMP: busy-waiting threads make 2-core runs up to 10× slower under any other load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

import explainers  # (also applies the torchvision import workaround before transformers)

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules with tiny models opt in with ``pytestmark``): a second
    OpenMP thread only adds contention on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_vit_config(model_type: str = "vit", image_size: int = 32, patch_size: int = 8, num_labels: int = 5, **kw):
    from transformers import DeiTConfig, ViTConfig

    cls = {"vit": ViTConfig, "deit": DeiTConfig}[model_type]
    return cls(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=kw.pop("hidden_size", 32),
        num_hidden_layers=kw.pop("num_hidden_layers", 3),
        num_attention_heads=kw.pop("num_attention_heads", 4),
        intermediate_size=kw.pop("intermediate_size", 64),
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kw,
    )


def build_hf_model(kind: str = "vit", seed: int = 0, **kw):
    """kind: vit | deit | deit-distilled. Random weights, eval mode, SDPA attention (the default).

    The config carries mean = std = 0.5 (as ``explainers train-classifier`` writes them), so adapters
    built from it have a normalisation without being told one."""
    from transformers import (
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        ViTForImageClassification,
    )

    torch.manual_seed(seed)
    model_type = "vit" if kind == "vit" else "deit"
    config = tiny_vit_config(model_type, **kw)
    cls = {
        "vit": ViTForImageClassification,
        "deit": DeiTForImageClassification,
        "deit-distilled": DeiTForImageClassificationWithTeacher,
    }[kind]
    config.image_mean, config.image_std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    model = cls(config).eval()
    # Random init leaves LayerNorms at identity and small weights; perturb so tests are not degenerate.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def build_timm_vit(seed: int = 0):
    """A tiny random timm ViT (32 px, patch 8, 2 blocks × 32-d, 3 classes) in eval mode; skips without timm."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_classes=3,
        embed_dim=32,
        depth=2,
        num_heads=4,
    )
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g)


def pytest_addoption(parser):
    parser.addoption(
        "--optimizer-noop",
        action="store_true",
        help="patch torch.optim.AdamW.step to do nothing: every test marked 'trainer' must then FAIL "
        "(proves that the trainer tests check that training learns)",
    )


def pytest_configure(config):
    # Patched for the whole session (module-scoped fixtures that train included), never undone.
    if config.getoption("--optimizer-noop"):
        torch.optim.AdamW.step = lambda self, closure=None: None


# A tiny HF ViT directory (16×16 input, 2×2 patch grid) and its adapter, shared by the explain/evaluate,
# provenance and loader tests (module scope: each module gets its own, as before).
@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    from evalkit import save_tiny_vit

    return save_tiny_vit(tmp_path_factory.mktemp("vit") / "vit", image_size=16, patch_size=8)


@pytest.fixture(scope="module")
def adapter(vit_dir):
    return explainers.load_explainee(str(vit_dir))
