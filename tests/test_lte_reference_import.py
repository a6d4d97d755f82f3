"""Importing the LTE reference's released pLTE checkpoints (``explainers import lte-reference``).

The checkpoints here are written in the released files' structure (PyTorch Lightning 1.5.8 top level,
transformers-4.15 tensor names, AdamW/LambdaLR/ModelCheckpoint entries of plain values) from small
configs; one has ViT-S shapes (H = 384, 12 layers, 197 tokens). The imported explainer is checked against
a from-scratch re-implementation of the reference forward on the file's own tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explainers.cli import main
from explainers.learned.lte import LTEExplainer
from explainers.learned.lte.reference_import import (
    ReferenceCheckpointError,
    class_mode_from_name,
    import_lte_reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EXPLAINEE = "vit_for_classification_image."
EXPLAINER = "vit_for_patch_classification."


# ----------------------------------------------------------------------------------------------- file maker
def _legacy_vit(g: torch.Generator, *, hidden: int, layers: int, mlp: int, patch: int, tokens: int) -> OrderedDict:
    """A ViT state dict under transformers-4.15 names (ViTModel, no pooler), in module registration order."""

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1] if len(shape) > 1 else 1)

    def b(n: int) -> torch.Tensor:
        return 0.1 * torch.randn(n, generator=g)

    def ln(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd["embeddings.cls_token"] = 0.5 * torch.randn(1, 1, hidden, generator=g)
    sd["embeddings.position_embeddings"] = 0.5 * torch.randn(1, tokens, hidden, generator=g)
    sd["embeddings.patch_embeddings.projection.weight"] = torch.randn(hidden, 3, patch, patch, generator=g) / (
        patch * math.sqrt(3)
    )
    sd["embeddings.patch_embeddings.projection.bias"] = b(hidden)
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = w(hidden, hidden), b(hidden)
        sd[p + "attention.output.dense.weight"], sd[p + "attention.output.dense.bias"] = w(hidden, hidden), b(hidden)
        sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = w(mlp, hidden), b(mlp)
        sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = w(hidden, mlp), b(hidden)
        for name in ("layernorm_before", "layernorm_after"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = ln(hidden), b(hidden)
    sd["layernorm.weight"], sd["layernorm.bias"] = ln(hidden), b(hidden)
    return sd


def make_reference_checkpoint(
    path: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    mlp: int = 128,
    patch: int = 8,
    image: int = 32,
    classes: int = 10,
    seed: int = 0,
    extra: dict | None = None,
    state_changes: dict | None = None,
) -> Path:
    """Write a file in the released structure: Lightning top level, two ViTs and the patch head."""
    g = torch.Generator().manual_seed(seed)
    tokens = (image // patch) ** 2 + 1
    arch = dict(hidden=hidden, layers=layers, mlp=mlp, patch=patch, tokens=tokens)
    explainee = _legacy_vit(g, **arch)
    explainer = _legacy_vit(g, **arch)
    for key in [k for k in explainer if k.startswith("embeddings.")]:
        explainer[key] = explainee[key].clone()  # frozen at the explainee's in the reference
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in explainee.items():
        state[EXPLAINEE + "vit." + key] = value
    state[EXPLAINEE + "classifier.weight"] = torch.randn(classes, hidden, generator=g) / math.sqrt(hidden)
    state[EXPLAINEE + "classifier.bias"] = 0.1 * torch.randn(classes, generator=g)
    for key, value in explainer.items():
        state[EXPLAINER + "vit." + key] = value
    state[EXPLAINER + "patch_pooler.weight"] = torch.randn(hidden, hidden, generator=g) / math.sqrt(hidden)
    state[EXPLAINER + "patch_pooler.bias"] = 0.1 * torch.randn(hidden, generator=g)
    state[EXPLAINER + "patch_classifier.weight"] = 2 * torch.randn(1, hidden, generator=g) / math.sqrt(hidden)
    state[EXPLAINER + "patch_classifier.bias"] = torch.tensor([0.2])
    state.update(state_changes or {})

    trainable = [k for k in state if k.startswith(EXPLAINER) and ".embeddings." not in k]
    best = str(path.parent / f"{path.name}")
    data = {
        "epoch": 7,
        "global_step": 256,
        "pytorch-lightning_version": "1.5.8",
        "state_dict": state,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/epoch_auc', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None, 'save_on_train_epoch_end': True}": {
                "monitor": "val/epoch_auc",
                "best_model_score": torch.tensor(12.5),
                "best_model_path": best,
                "current_score": torch.tensor(12.5),
                "dirpath": str(path.parent),
                "best_k_models": {best: torch.tensor(12.5)},
                "kth_best_model_path": best,
                "kth_value": torch.tensor(12.5),
                "last_model_path": "",
            }
        },
        "optimizer_states": [
            {
                "state": {
                    i: {
                        "step": 256,
                        "exp_avg": torch.zeros_like(state[k]),
                        "exp_avg_sq": torch.full_like(state[k], 1e-6),
                    }
                    for i, k in enumerate(trainable)
                },
                "param_groups": [
                    {
                        "lr": 0.000164,
                        "betas": (0.9, 0.999),
                        "eps": 1e-08,
                        "weight_decay": 0.01,
                        "amsgrad": False,
                        "initial_lr": 0.002,
                        "params": list(range(len(trainable))),
                    }
                ],
            }
        ],
        "lr_schedulers": [
            {
                "base_lrs": [0.002],
                "last_epoch": 256,
                "_step_count": 257,
                "verbose": False,
                "_get_lr_called_within_step": False,
                "_last_lr": [0.000164],
                "lr_lambdas": [None],
            }
        ],
    }
    data.update(extra or {})
    torch.save(data, path)
    return path


# ----------------------------------------------------------------------------------------------- reference forward
def reference_forward(
    state: dict[str, torch.Tensor], prefix: str, images: torch.Tensor, *, num_heads: int
) -> torch.Tensor:
    """The final-LayerNorm tokens of a transformers-4.15 ViT, written out from its tensors (B×T×H)."""

    def t(name: str) -> torch.Tensor:
        return state[prefix + name]

    pixels = (images - 0.5) / 0.5
    proj = t("embeddings.patch_embeddings.projection.weight")
    hidden, patch = proj.shape[0], proj.shape[-1]
    x = F.conv2d(pixels, proj, t("embeddings.patch_embeddings.projection.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([t("embeddings.cls_token").expand(x.shape[0], -1, -1), x], dim=1)
    x = x + t("embeddings.position_embeddings")
    layer_keys = [k[len(prefix + "encoder.layer.") :] for k in state if k.startswith(prefix + "encoder.layer.")]
    layers = len({k.split(".")[0] for k in layer_keys})
    dh = hidden // num_heads
    for n in range(layers):
        p = f"encoder.layer.{n}."
        h = F.layer_norm(x, (hidden,), t(p + "layernorm_before.weight"), t(p + "layernorm_before.bias"), 1e-12)
        b, tokens, _ = h.shape

        q, k, v = (
            F.linear(h, t(p + f"attention.attention.{name}.weight"), t(p + f"attention.attention.{name}.bias"))
            .reshape(b, tokens, num_heads, dh)
            .transpose(1, 2)
            for name in ("query", "key", "value")
        )
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, tokens, hidden)
        x = x + F.linear(o, t(p + "attention.output.dense.weight"), t(p + "attention.output.dense.bias"))
        h = F.layer_norm(x, (hidden,), t(p + "layernorm_after.weight"), t(p + "layernorm_after.bias"), 1e-12)
        h = F.gelu(F.linear(h, t(p + "intermediate.dense.weight"), t(p + "intermediate.dense.bias")))
        x = x + F.linear(h, t(p + "output.dense.weight"), t(p + "output.dense.bias"))
    return F.layer_norm(x, (hidden,), t("layernorm.weight"), t("layernorm.bias"), 1e-12)


def reference_mask(state: dict[str, torch.Tensor], images: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    """The reference pLTE mask: patch head (Linear → tanh → Linear → sigmoid) on the tokens without CLS,
    14×14 (here g×g) scores upsampled bilinearly to the image."""
    tokens = reference_forward(state, EXPLAINER + "vit.", images, num_heads=num_heads)[:, 1:]
    hidden = torch.tanh(
        F.linear(tokens, state[EXPLAINER + "patch_pooler.weight"], state[EXPLAINER + "patch_pooler.bias"])
    )
    scores = torch.sigmoid(
        F.linear(hidden, state[EXPLAINER + "patch_classifier.weight"], state[EXPLAINER + "patch_classifier.bias"])
    )[..., 0]
    grid = math.isqrt(scores.shape[1])
    return F.interpolate(
        scores.reshape(-1, 1, grid, grid), size=images.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]


def reference_logits(state: dict[str, torch.Tensor], images: torch.Tensor, *, num_heads: int) -> torch.Tensor:
    tokens = reference_forward(state, EXPLAINEE + "vit.", images, num_heads=num_heads)
    return F.linear(tokens[:, 0], state[EXPLAINEE + "classifier.weight"], state[EXPLAINEE + "classifier.bias"])


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


# ----------------------------------------------------------------------------------------------- tests
def test_class_mode_is_read_from_the_released_file_names():
    assert class_mode_from_name("pLTE_vit_base_224_predicted_best_auc__epoch=41_val.ckpt") == "predicted"
    assert class_mode_from_name("pLTE_vit_small_224_target_best_auc__epoch=3_val.ckpt") == "target"
    assert class_mode_from_name("pLTE_vit_base_224_best.ckpt") is None
    assert class_mode_from_name("predicted_or_target.ckpt") is None  # ambiguous: the user must say


def test_imported_explainer_and_explainee_match_the_reference_forward(tmp_path):
    ckpt = make_reference_checkpoint(tmp_path / "pLTE_vit_tiny_32_target_best_auc__epoch=7_val_auc=12.5.ckpt")
    result = import_lte_reference(ckpt, tmp_path / "imported")
    assert result.class_mode == "target"
    state = _state(ckpt)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    explainer = LTEExplainer.from_pretrained(tmp_path / "imported", explainee=tmp_path / "imported" / "explainee")
    expected = reference_mask(state, images, num_heads=1)
    assert expected.std() > 0.01  # not a degenerate constant mask
    torch.testing.assert_close(explainer(images), expected, atol=2e-5, rtol=1e-4)

    logits = explainer.adapter.predict(images)
    torch.testing.assert_close(logits, reference_logits(state, images, num_heads=1), atol=2e-4, rtol=1e-4)
    assert explainer.adapter.mean.tolist() == [0.5, 0.5, 0.5] and explainer.adapter.std.tolist() == [0.5, 0.5, 0.5]

    assert explainer.config.class_mode == "target"
    assert explainer.config.lr == 0.002 and explainer.config.weight_decay == 0.01
    info = explainer.training_info
    assert info["epoch"] == 7 and info["global_step"] == 256 and info["best_model_score"] == 12.5
    assert info["optimizer"]["betas"] == [0.9, 0.999] and info["scheduler_last_epoch"] == 256
    assert info["imported_from"] == ckpt.name and len(info["imported_sha256"]) == 64
    assert not list(tmp_path.glob(".imported.*"))  # no staging folder left behind


def test_cli_import_then_explain_with_plte_and_lte(tmp_path, capsys):
    from explainers.io.maskfile import MaskFile

    ckpt = make_reference_checkpoint(tmp_path / "pLTE_vit_tiny_32_predicted_best_auc__epoch=2.ckpt", seed=3)
    out = tmp_path / "plte"
    code, stdout, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err
    assert "class mode predicted" in stdout and str(out / "explainee") in stdout

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"img{i}.png")
    for method in ("plte", "lte"):
        args = ["explain", "--method", method, "--explainer", str(out), "--explainee", str(out / "explainee")]
        args += ["--data", f"folder:{images}", "--out", str(tmp_path / f"{method}.h5"), "--no-progress"]
        if method == "lte":
            args += ["--option", "steps=2"]
        code, stdout, err = run_cli(args, capsys)
        assert code == 0, err
        with MaskFile(tmp_path / f"{method}.h5") as masks:
            maps = torch.as_tensor(masks.maps())
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys):
    ckpt = make_reference_checkpoint(tmp_path / "a_target.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_unknown_global_is_refused_with_its_name(tmp_path, capsys):
    ckpt = make_reference_checkpoint(tmp_path / "x_target.ckpt", extra={"hyper_parameters": _Unlisted()})
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{__name__}._Unlisted" in err and "weights_only" in err
    assert not (tmp_path / "o").exists()


class _Unlisted:
    """A custom object pickled into a checkpoint: weights_only must refuse to rebuild it."""


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "checkpoint file not found"), (b"not a checkpoint at all", "not a PyTorch checkpoint")],
)
def test_missing_or_garbage_file(tmp_path, capsys, content, message):
    ckpt = tmp_path / "y_target.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_truncated_file(tmp_path, capsys):
    ckpt = make_reference_checkpoint(tmp_path / "z_target.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "corrupt or truncated" in err and err.count("\n") == 1


def test_embeddings_mismatch_is_refused(tmp_path):
    base = _state(make_reference_checkpoint(tmp_path / "ok_target.ckpt"))
    moved = base[EXPLAINER + "vit.embeddings.position_embeddings"] + 0.01
    ckpt = make_reference_checkpoint(
        tmp_path / "bad_target.ckpt", state_changes={EXPLAINER + "vit.embeddings.position_embeddings": moved}
    )
    with pytest.raises(ReferenceCheckpointError, match=r"embeddings differ.*position_embeddings"):
        import_lte_reference(ckpt, tmp_path / "o")


def test_file_without_explainer_head_is_refused(tmp_path):
    ckpt = make_reference_checkpoint(tmp_path / "h_target.ckpt")
    data = torch.load(ckpt, weights_only=True)
    for key in [k for k in data["state_dict"] if "patch_classifier" in k]:
        del data["state_dict"][key]
    torch.save(data, ckpt)
    with pytest.raises(ReferenceCheckpointError, match="no LTE explainer"):
        import_lte_reference(ckpt, tmp_path / "o")


def test_explainer_is_found_by_its_head_not_its_prefix(tmp_path):
    """Other wrapper names (e.g. a ``model.`` prefix) still import: the head identifies the explainer."""
    ckpt = make_reference_checkpoint(tmp_path / "p_target.ckpt")
    data = torch.load(ckpt, weights_only=True)
    renamed = OrderedDict()
    for key, value in data["state_dict"].items():
        renamed["model." + key.replace(EXPLAINER, "expl.").replace(EXPLAINEE, "clf.")] = value
    data["state_dict"] = renamed
    torch.save(data, ckpt)
    import_lte_reference(ckpt, tmp_path / "o")
    explainer = LTEExplainer.from_pretrained(tmp_path / "o", explainee=tmp_path / "o" / "explainee")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    state = _state(make_reference_checkpoint(tmp_path / "again_target.ckpt"))
    torch.testing.assert_close(explainer(images), reference_mask(state, images, num_heads=1), atol=2e-5, rtol=1e-4)


def test_class_mode_needed_when_the_name_does_not_say(tmp_path, capsys):
    ckpt = make_reference_checkpoint(tmp_path / "plte_best.ckpt")
    code, _, err = run_cli(["import", "lte-reference", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--class-mode" in err
    code, _, err = run_cli(
        ["import", "lte-reference", str(ckpt), "--out", str(tmp_path / "o"), "--class-mode", "predicted"], capsys
    )
    assert code == 0, err
    assert LTEExplainer.read_metadata(tmp_path / "o")["config"]["class_mode"] == "predicted"


@pytest.mark.slow
def test_vit_small_shapes(tmp_path):
    """The released ViT-S layout: H = 384, 12 layers, 6 heads, 197 tokens (14×14 at patch 16), 1000 classes."""
    ckpt = make_reference_checkpoint(
        tmp_path / "pLTE_vit_small_224_target_best_auc__epoch=30_val_auc=10.ckpt",
        hidden=384,
        layers=12,
        mlp=1536,
        patch=16,
        image=224,
        classes=1000,
    )
    state = _state(ckpt)
    assert len(state) == 402
    result = import_lte_reference(ckpt, tmp_path / "vit_small")
    arch = result.architecture
    assert (arch.hidden_size, arch.num_layers, arch.num_heads, arch.intermediate_size) == (384, 12, 6, 1536)
    assert (arch.patch_size, arch.image_size, arch.num_classes) == (16, 224, 1000)
    explainer = LTEExplainer.from_pretrained(result.explainer_dir, explainee=result.explainee_dir)
    assert explainer.adapter.grid == (14, 14) and explainer.config.lambda_mask == 30.0
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(explainer(images), reference_mask(state, images, num_heads=6), atol=5e-5, rtol=1e-4)
