"""Parity of ``attnlrp`` and ``legrad`` with their authors' code, on identical weights.

The authors' implementations run on a torchvision ``VisionTransformer`` (the architecture they support)
that carries exactly the weights of an HF ViT (patch conv, class token, position embedding, per block
the two LayerNorms, q/k/v stacked into ``in_proj``, the output projection, the MLP; final norm, head).
Our methods run on the HF model through its adapter. The script checks the logits agree, then compares
the maps image by image: Pearson r and the largest difference relative to the largest |value| of the
reference map. Two model sizes, random weights (perturbed so the LayerNorms are not identities).

Authors' code (unpacked, not installed — ``lxt`` 2.1 does not import on transformers 5, its package
``__init__`` pulls in transformers' BERT/Llama modules, so the script loads only its rule modules
``lxt/efficient/{rules,patches}.py`` and ``models/vit_torch.py``, unchanged)::

    pip download lxt==2.1 torchcam==0.5.0 --no-deps -d /tmp/authors
    cd /tmp/authors && tar xzf lxt-2.1.tar.gz && mkdir -p tc && (cd tc && unzip -oq ../torchcam-0.5.0-py3-none-any.whl)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/parity.py --authors /tmp/authors --out benchmarks/results/parity.md

What is compared:

- ``attnlrp`` (attention=cp) vs lxt's own torchvision-ViT patch map (``vit_torch.cp_LRP``: identity
  rule on GELU, LayerNorm with σ detached, CP-LRP in ``nn.MultiheadAttention``), linear layers plain
  gradient (the ε-rule; lxt's example adds zennit γ-rules on top, a tuning choice not compared here).
  Map: input × gradient summed over channels, as in lxt's ViT example.
- ``attnlrp`` (attention=attnlrp) vs the same lxt patches plus lxt's own ``wrap_attention_forward``
  (the uniform rule: gradient of q and k divided by 4, of v by 2) around an eager attention function
  over the torchvision weights. lxt has no AttnLRP attention patch for torchvision ViTs (their fused
  ``nn.MultiheadAttention`` has no Python attention function to wrap), so that eager function is ours;
  everything that makes it AttnLRP is lxt's.
- ``legrad`` vs torchcam 0.5's ``LeGrad`` on torchvision ViTs (the authors' ``legrad-torch`` supports
  OpenCLIP models only). torchcam (like legrad-torch) pools the intermediate tokens by their mean
  before the norm and head: compared with ``pool=mean``. ``pool=cls`` (our default, the tokens the
  classifier reads) is compared with torchcam given the CLS projection as its ``score_projection``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import explainers  # noqa: F401  (torchvision workaround before transformers)
from _timing import machine
from explainers._compat import patch_torchvision
from explainers.methods import get_method
from explainers.models import load_explainee

SIZES = {
    "small ViT (64², patch 8, 6×192, 3 heads)": dict(image=64, patch=8, width=192, depth=6, heads=3, classes=10),
    "ViT-B/16 config (224², 12×768, 12 heads)": dict(image=224, patch=16, width=768, depth=12, heads=12, classes=1000),
}


def build_pair(image: int, patch: int, width: int, depth: int, heads: int, classes: int, seed: int = 0):
    """(HF ViT, torchvision ViT with the same weights)."""
    from torchvision.models import VisionTransformer
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image,
        patch_size=patch,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        num_labels=classes,
        layer_norm_eps=1e-6,  # torchvision's
        hidden_act="gelu",
    )
    hf = ViTForImageClassification(config).eval()
    with torch.no_grad():  # random init leaves LayerNorms at identity: perturb everything
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tv = VisionTransformer(
        image_size=image, patch_size=patch, num_layers=depth, num_heads=heads, hidden_dim=width,
        mlp_dim=4 * width, num_classes=classes,
    ).eval()
    parts = load_explainee(hf).parts()
    emb = hf.vit.embeddings
    with torch.no_grad():
        tv.conv_proj.load_state_dict(parts.patch_embed.state_dict())
        tv.class_token.copy_(emb.cls_token)
        tv.encoder.pos_embedding.copy_(emb.position_embeddings)
        for blk, layer in zip(parts.blocks, tv.encoder.layers, strict=True):
            layer.ln_1.load_state_dict(blk.norm1.state_dict())
            layer.self_attention.in_proj_weight.copy_(torch.cat([blk.q_weight, blk.k_weight, blk.v_weight]))
            layer.self_attention.in_proj_bias.copy_(torch.cat([blk.q_bias, blk.k_bias, blk.v_bias]))
            layer.self_attention.out_proj.load_state_dict(blk.proj.state_dict())
            layer.ln_2.load_state_dict(blk.norm2.state_dict())
            layer.mlp[0].load_state_dict(blk.fc1.state_dict())
            layer.mlp[3].load_state_dict(blk.fc2.state_dict())
        tv.encoder.ln.load_state_dict(parts.final_norm.state_dict())
        tv.heads.head.load_state_dict(parts.heads[0].linear.state_dict())
    return hf, tv


def make_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (low-frequency noise plus a bright disc), not white noise."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    disc = ((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2 < 0.03).float()
    return (0.7 * low + 0.5 * disc[:, None]).clamp(0, 1)


def load_lxt(root: Path):
    """lxt's rule modules without its package __init__ (which fails on transformers 5)."""
    base = root / "lxt-2.1" / "lxt"
    packages = {"lxt": base, "lxt.efficient": base / "efficient", "lxt.efficient.models": base / "efficient" / "models"}
    for name, path in packages.items():
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    load("lxt.efficient.rules", base / "efficient" / "rules.py")
    patches = load("lxt.efficient.patches", base / "efficient" / "patches.py")
    vit_torch = load("lxt.efficient.models.vit_torch", base / "efficient" / "models" / "vit_torch.py")
    return patches, vit_torch


def lxt_attnlrp_forward(patches):
    """nn.MultiheadAttention.forward for self-attention, eager, wrapped with lxt's AttnLRP attention patch."""

    def eager(module, query, key, value, scaling):
        attn = torch.softmax((query @ key.transpose(-1, -2)) * scaling, dim=-1)
        return attn @ value, attn

    wrapped = patches.wrap_attention_forward(eager)

    def forward(self, query, key, value, *args, **kwargs):
        b, t, d = query.shape
        q, k, v = (
            p.view(b, t, self.num_heads, -1).transpose(1, 2)
            for p in F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        )
        out, _ = wrapped(self, q, k, v, scaling=(d // self.num_heads) ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d)), None

    return forward


def input_times_gradient(model, pixels, targets) -> torch.Tensor:
    x = pixels.detach().clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, targets[:, None]).sum().backward()
    return (x * x.grad).sum(1).detach()


def torchcam_legrad(tv, pixels, targets, pool: str) -> torch.Tensor:
    from torchcam.methods import LeGrad

    projection = None if pool == "mean" else (lambda tokens: tv.heads(tv.encoder.ln(tokens[:, 0])))
    with LeGrad(tv, list(tv.encoder.layers), score_projection=projection) as extractor:
        scores = tv(pixels)
        (cam,) = extractor(class_idx=targets.tolist(), scores=scores, normalized=False)
    return cam.flatten(1).detach()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def patch_sums(maps: torch.Tensor, patch: int) -> torch.Tensor:
    return F.avg_pool2d(maps[:, None], patch)[:, 0].flatten(1) * patch * patch


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> list[tuple[float, float]]:
    """Per image: (Pearson r, max |difference| / max |reference|)."""
    out = []
    for a, b in zip(ours, theirs, strict=True):
        out.append((pearson(a, b), float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", type=Path, required=True, help="folder with lxt-2.1/ and tc/ unpacked")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    patch_torchvision()
    sys.path.insert(0, str(args.authors / "tc"))
    torch.set_grad_enabled(True)

    # phase 1: ours and torchcam, before lxt patches torch.nn classes globally
    runs = {}
    for label, size in SIZES.items():
        hf, tv = build_pair(**size)
        adapter = load_explainee(hf)
        images = make_images(args.images, size["image"])
        pixels = adapter.normalize(images)
        with torch.no_grad():
            hf_logits, tv_logits = hf(pixel_values=pixels).logits, tv(pixels)
        targets = hf_logits.argmax(1)
        run = {"size": size, "tv": tv, "pixels": pixels, "targets": targets}
        run["logits"] = float((hf_logits - tv_logits).abs().max()), float(hf_logits.abs().max())
        run["same_class"] = bool((tv_logits.argmax(1) == targets).all())
        run["control"] = input_times_gradient(tv, pixels, targets)  # no LRP rules: shows the check discriminates
        for attention in ("attnlrp", "cp"):
            method = get_method("attnlrp", adapter, normalize=False, attention=attention)
            run[f"ours attnlrp {attention}"] = method(images, targets)
        for pool in ("cls", "mean"):
            method = get_method("legrad", adapter, normalize=False, pool=pool)
            run[f"ours legrad {pool}"] = method.attribute(images, targets).maps
            run[f"theirs legrad {pool}"] = torchcam_legrad(tv, pixels, targets, pool)
        runs[label] = run
        print(f"{label}: ours + torchcam done", flush=True)

    # phase 2: lxt
    patches, vit_torch = load_lxt(args.authors)
    for target, patch in vit_torch.cp_LRP.items():
        assert patch(target), f"lxt could not patch {target}"
    for label, run in runs.items():
        tv = run["tv"]
        run["theirs attnlrp cp"] = input_times_gradient(tv, run["pixels"], run["targets"])
        attnlrp_forward = lxt_attnlrp_forward(patches)
        for layer in tv.encoder.layers:
            layer.self_attention.forward = types.MethodType(attnlrp_forward, layer.self_attention)
        run["theirs attnlrp attnlrp"] = input_times_gradient(tv, run["pixels"], run["targets"])
        print(f"{label}: lxt done", flush=True)

    lines = [
        "# Parity with the authors' implementations (AttnLRP: lxt 2.1; LeGrad: torchcam 0.5)",
        "",
        f"Measured {datetime.date.today()} on {machine()}, with",
        "`OMP_WAIT_POLICY=PASSIVE python benchmarks/parity.py --authors /tmp/authors "
        "--out benchmarks/results/parity.md`",
        "(setup of the authors' code: see the script's docstring). Ours: the HF ViT through its adapter; theirs:",
        "a torchvision VisionTransformer carrying exactly the same weights. Random weights (seed 0, perturbed),",
        f"{args.images} smooth random images per model, the HF model's predicted class. r = Pearson correlation per",
        "image; rel. max diff = max |ours − theirs| / max |theirs|. AttnLRP maps are compared at pixel level and",
        "summed per patch (the patch grid); LeGrad maps are patch grids.",
        "",
    ]
    for label, run in runs.items():
        diff, scale = run["logits"]
        lines += [
            f"## {label}",
            "",
            f"Logits HF vs torchvision: max |difference| {diff:.2e} (max |logit| {scale:.2f}); "
            f"same predicted class for every image: {run['same_class']}.",
            "",
            "| method (ours vs theirs) | image | r (pixels) | r (patch grid) | rel. max diff |",
            "|---|---|---|---|---|",
        ]
        patch = run["size"]["patch"]
        pairs = (("attnlrp", "lxt rules + lxt attention wrapper"), ("cp", "lxt cp_LRP (torchvision patch map)"))
        for attention, theirs in pairs:
            ours, ref = run[f"ours attnlrp {attention}"], run[f"theirs attnlrp {attention}"]
            grid = compare(patch_sums(ours, patch), patch_sums(ref, patch))
            for i, ((r, rel), (rg, _)) in enumerate(zip(compare(ours, ref), grid, strict=True)):
                lines.append(f"| attnlrp attention={attention} vs {theirs} | {i} | {r:.6f} | {rg:.6f} | {rel:.1e} |")
        ours, ref = run["ours attnlrp attnlrp"], run["control"]
        grid = compare(patch_sums(ours, patch), patch_sums(ref, patch))
        for i, ((r, rel), (rg, _)) in enumerate(zip(compare(ours, ref), grid, strict=True)):
            row = f"| {i} | {r:.6f} | {rg:.6f} | {rel:.1e} |"
            lines.append("| control: attnlrp vs plain input × gradient (no rules) " + row)
        for pool, theirs in (("cls", "torchcam LeGrad, CLS projection"), ("mean", "torchcam LeGrad, default")):
            for i, (r, rel) in enumerate(compare(run[f"ours legrad {pool}"], run[f"theirs legrad {pool}"])):
                lines.append(f"| legrad pool={pool} vs {theirs} | {i} | — | {r:.6f} | {rel:.1e} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        from explainers.io.atomic import write_text_atomic

        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
