"""Training linear probes: downstream tasks on a frozen encoder's CLS embedding (what LETA explains).

A probe (:class:`~explainers.models.probe.LinearProbe`) is ``h(z) = W z + b`` on the post-LayerNorm CLS
embedding z. Training extracts the features once (batched, no gradients) and fits a multinomial logistic
regression with full-batch L-BFGS on standardised features (the standardisation is folded back into W and
b, so the saved head reads raw z). The L2 weight is chosen on the validation split when there is one. The
saved format is :mod:`explainers.models.probe`; the probe as an explainee, ``probe:DIR``, is
:func:`explainers.models.probe_explainee`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from explainers.data import open_dataset
from explainers.data.base import ImageDataset, iter_batches
from explainers.errors import ExplainersError
from explainers.models.base import ExplaineeAdapter
from explainers.models.loading import load_probe_explainee, probe_explainee  # noqa: F401  (re-exported)
from explainers.models.probe import FORMAT_NAME, FORMAT_VERSION, LinearProbe, load_probe  # noqa: F401
from explainers.models.signature import encoder_signature, require_vit
from explainers.training.loop import validate_device

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)


# ------------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def extract_features(
    encoder: ExplaineeAdapter,
    dataset: ImageDataset,
    *,
    batch_size: int = 256,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings N×D float32, labels N int64) of the CLS embedding for ``dataset`` (or ``indices``)."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    feats, labels = [], []
    device = encoder.device
    with tqdm(total=len(order), desc=desc, unit="img", disable=not progress) as bar:
        for batch in iter_batches(dataset, batch_size, encoder.input_geometry, order):
            z = encoder.cls_embedding(encoder.normalize(batch.images.to(device)))
            feats.append(z.float().cpu())
            labels.append(batch.labels)
            bar.update(len(batch.ids))
    return torch.cat(feats), torch.cat(labels)


def fit_linear(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    seed: int = 0,
) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS; deterministic for a given seed."""
    if (labels < 0).any():
        raise ExplainersError("the training data has unlabelled images (label -1): a probe needs labels")
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(num_classes, x.shape[1], generator=gen, dtype=torch.float64) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, labels) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    linear = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        # Fold the standardisation in: W(x − μ)/σ + b = (W/σ) x + (b − (W/σ) μ).
        w_raw = w.detach() / std
        linear.weight.copy_(w_raw.float())
        linear.bias.copy_((b.detach() - w_raw @ mean).float())
    return linear.eval()


def accuracy(linear: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((linear(features).argmax(1) == labels).float().mean())


@dataclass
class ProbeConfig:
    """Settings of ``explainers train-probe`` (``--config FILE`` / ``--set KEY=VALUE``, or options).

    split / val_split (picks the L2 weight) / test_split (accuracy recorded): "" for none;
    max_images: at most N images per split (null: all); batch_size: images per feature-extraction
    batch; max_iter: L-BFGS iterations; device: ``auto``, ``cpu`` or ``cuda`` for feature extraction.
    """

    task: str = "shape"
    split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_images: int | None = None
    batch_size: int = 256
    max_iter: int = 300
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        validate_device(self.device)
        for key in ("batch_size", "max_iter"):
            if getattr(self, key) < 1:
                raise ExplainersError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.max_images is not None and self.max_images < 1:
            raise ExplainersError(f"max_images must be at least 1 (or null: all), got {self.max_images}")

    @property
    def torch_device(self) -> str:
        return ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device


def train_probe(
    encoder: ExplaineeAdapter,
    data: str,
    task: str,
    *,
    encoder_spec: str | None = None,
    split: str = "train",
    val_split: str | None = "val",
    test_split: str | None = "test",
    max_images: int | None = None,
    batch_size: int = 256,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_iter: int = 300,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
) -> LinearProbe:
    """Fit a probe for ``task`` of ``data`` (``KIND:PATH``) on the frozen ``encoder``.

    ``max_images`` caps each split (the first images, which are an i.i.d. sample for synthetic data).
    """
    require_vit(encoder, "a linear probe on the CLS embedding")
    kind = data.partition(":")[0]
    task_opt = {"task": task} if kind == "synthetic" else {}

    def load(split_name: str) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
        ds = open_dataset(data, split=split_name, **task_opt)
        idx = list(range(min(len(ds), max_images) if max_images else len(ds)))
        z, y = extract_features(
            encoder, ds, batch_size=batch_size, indices=idx, progress=progress, desc=f"features {split_name}"
        )
        return ds, z, y

    start = time.perf_counter()
    train_ds, z_train, y_train = load(split)
    class_names = train_ds.class_names
    num_classes = len(class_names) if class_names else int(y_train.max()) + 1
    val = _maybe(load, val_split)
    test = _maybe(load, test_split)
    feature_s = time.perf_counter() - start

    start = time.perf_counter()
    candidates = list(weight_decays) if val is not None else [sorted(weight_decays)[len(weight_decays) // 2]]
    scored = []
    for wd in candidates:
        linear = fit_linear(z_train, y_train, num_classes, weight_decay=wd, max_iter=max_iter, seed=seed)
        score = accuracy(linear, val[1], val[2]) if val is not None else accuracy(linear, z_train, y_train)
        scored.append((score, -wd, linear, wd))  # ties → the stronger regularisation
    _, _, best, best_wd = max(scored, key=lambda s: (s[0], s[1]))
    fit_s = time.perf_counter() - start

    metrics = {"train_accuracy": accuracy(best, z_train, y_train)}
    if val is not None:
        metrics["val_accuracy"] = accuracy(best, val[1], val[2])
    if test is not None:
        metrics["test_accuracy"] = accuracy(best, test[1], test[2])
    metadata = {
        "data": data,
        "splits": {"train": split, "val": val_split if val else None, "test": test_split if test else None},
        "num_images": {
            "train": len(y_train),
            "val": len(val[2]) if val else 0,
            "test": len(test[2]) if test else 0,
        },
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "fit": {
            "method": "lbfgs-logistic",
            "weight_decay": best_wd,
            "weight_decays_tried": candidates,
            "max_iter": max_iter,
            "seed": seed,
        },
        "cost_s": {"features": round(feature_s, 2), "fit": round(fit_s, 2)},
        "command": command,
    }
    return LinearProbe(
        best,
        task=task,
        class_names=class_names,
        encoder=encoder_signature(encoder, encoder_spec),
        metadata=metadata,
    )


def _maybe(load, split_name: str | None):
    if not split_name:
        return None
    try:
        return load(split_name)
    except ExplainersError:
        return None  # the dataset has no such split
