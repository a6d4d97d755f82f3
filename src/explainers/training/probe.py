"""Training linear probes: downstream tasks on a frozen encoder's CLS embedding (what LETA explains).

A probe (:class:`~explainers.models.probe.LinearProbe`) is ``h(z) = W z + b`` on the post-LayerNorm CLS
embedding z. Training extracts the features once (batched, no gradients) and fits a multinomial logistic
regression with full-batch L-BFGS on standardised features (the standardisation is folded back into W and
b, so the saved head reads raw z). The L2 weight is chosen on the validation split when there is one. The
saved format is :mod:`explainers.models.probe`; the probe as an explainee, ``probe:DIR``, is
:func:`explainers.models.probe_explainee`.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from explainers.data import open_dataset
from explainers.data.base import ImageDataset
from explainers.data.loader import BatchLoader
from explainers.devices import resolve_device
from explainers.errors import ExplainersError
from explainers.models import load_explainee
from explainers.models.base import ExplaineeAdapter
from explainers.models.probe import LinearProbe
from explainers.models.signature import encoder_signature, require_vit
from explainers.training.checkpoint import output_lock
from explainers.training.loop import Learner, Runtime, TrainingLoop

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
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings N×D float32, labels N int64) of the CLS embedding for ``dataset`` (or ``indices``),
    decoded by the shared :class:`~explainers.data.loader.BatchLoader` with ``workers`` processes."""
    order = list(range(len(dataset))) if indices is None else list(indices)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    feats, labels = [], []
    device = encoder.device
    with tqdm(total=len(order), desc=desc, unit="img", disable=not progress) as bar:
        for batch in BatchLoader(dataset, batches, encoder.input_geometry, workers=workers, device=device):
            z = encoder.cls_embedding(encoder.normalize(batch.images))
            feats.append(z.float().cpu())
            labels.append(batch.labels.cpu())
            bar.update(len(batch.ids))
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
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
    workers: int | None = None

    def __post_init__(self) -> None:
        resolve_device(self.device)
        for key in ("batch_size", "max_iter"):
            if getattr(self, key) < 1:
                raise ExplainersError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.max_images is not None and self.max_images < 1:
            raise ExplainersError(f"max_images must be at least 1 (or null: all), got {self.max_images}")

    @property
    def torch_device(self) -> str:
        return str(resolve_device(self.device))


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
    workers: int | None = None,
    progress: bool = True,
    command: str | None = None,
    out: str | Path | None = None,
) -> LinearProbe:
    """Fit a probe for ``task`` of ``data`` (``KIND:PATH``) on the frozen ``encoder``.

    ``max_images`` caps each split (the first images, which are an i.i.d. sample for synthetic data).
    The fits run on the shared training loop: one step per L2 weight tried (a full-batch L-BFGS fit),
    logged to ``out/log.jsonl`` with a resumable state in ``out/train_state/`` — a rerun after an
    interruption keeps the fits already done. ``out`` None: a temporary folder (nothing is kept).
    """
    require_vit(encoder, "a linear probe on the CLS embedding")
    kind = data.partition(":")[0]
    task_opt = {"task": task} if kind == "synthetic" else {}

    def load(split_name: str) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
        ds = open_dataset(data, split=split_name, **task_opt)
        idx = list(range(min(len(ds), max_images) if max_images else len(ds)))
        z, y = extract_features(
            encoder,
            ds,
            batch_size=batch_size,
            indices=idx,
            progress=progress,
            desc=f"features {split_name}",
            workers=workers,
        )
        return ds, z, y

    start = time.perf_counter()
    train_ds, z_train, y_train = load(split)
    class_names = train_ds.class_names
    num_classes = len(class_names) if class_names else int(y_train.max()) + 1
    val = _maybe(load, val_split)
    test = _maybe(load, test_split)
    feature_s = time.perf_counter() - start

    candidates = list(weight_decays) if val is not None else [sorted(weight_decays)[len(weight_decays) // 2]]
    settings = {
        "task": task, "data": data, "split": split, "val_split": val_split, "max_images": max_images,
        "max_iter": max_iter, "seed": seed, "weight_decays": candidates,
    }
    learner = _ProbeLearner(
        (z_train, y_train), None if val is None else (val[1], val[2]), num_classes, candidates, settings
    )
    runtime = Runtime(str(encoder.device), "fp32")
    with contextlib.ExitStack() as stack:
        if out is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        else:
            folder = Path(out).expanduser()
        steps = len(candidates)
        loop = TrainingLoop(runtime, folder, total_steps=steps, steps_per_epoch=steps, progress=progress, unit="fit")
        start = time.perf_counter()
        loop.run(learner)
        fit_s = time.perf_counter() - start
    # The best validation accuracy; ties go to the stronger regularisation.
    best_index = max(range(len(candidates)), key=lambda i: (learner.scores[i], -candidates[i]))
    best, best_wd = learner.linear(best_index), candidates[best_index]

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


class _ProbeLearner(Learner):
    """The probes' part of the shared loop: step k fits the k-th L2 weight by full-batch L-BFGS (its
    own optimiser, not a gradient step of the loop) and scores it on the validation features (or the
    training features when there is no validation split). The fitted heads are the state's weights."""

    state_format = "explainers-probe-train-state"
    name = "probe fits"

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor] | None,
        num_classes: int,
        candidates: list[float],
        settings: dict[str, Any],
    ) -> None:
        self.train, self.val, self.num_classes, self.candidates = train, val, num_classes, candidates
        dim = train[0].shape[1]
        self.model = nn.Module()
        self.model.register_buffer("weight", torch.zeros(len(candidates), num_classes, dim))
        self.model.register_buffer("bias", torch.zeros(len(candidates), num_classes))
        self.scores: list[float] = []
        # The features depend on the encoder's weights and on the images: their digest checks both.
        tensors = [train[0], train[1]] + (list(val) if val is not None else [])
        digest = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in tensors)).hexdigest()
        self.identity = {**settings, "features_digest": digest}

    def linear(self, index: int) -> nn.Linear:
        layer = nn.Linear(self.model.weight.shape[2], self.num_classes)
        with torch.no_grad():
            layer.weight.copy_(self.model.weight[index])
            layer.bias.copy_(self.model.bias[index])
        return layer.eval()

    def train_step(self, loop: TrainingLoop, step: int, epoch: int, index: int) -> None:
        wd = self.candidates[step]
        z, y = self.train
        max_iter, seed = self.identity["max_iter"], self.identity["seed"]
        linear = fit_linear(z, y, self.num_classes, weight_decay=wd, max_iter=max_iter, seed=seed)
        with torch.no_grad():
            self.model.weight[step] = linear.weight
            self.model.bias[step] = linear.bias
        score = accuracy(linear, *self.val) if self.val is not None else accuracy(linear, z, y)
        self.scores.append(score)
        split = "val" if self.val is not None else "train"
        loop.log({"step": step + 1, "weight_decay": wd, "split": split, "accuracy": score})

    def state_dict(self) -> dict[str, Any]:
        return {**self.identity, "scores": list(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = list(state["scores"])

    def check_resume(self, saved: dict[str, Any]) -> None:
        diffs = [k for k, v in self.identity.items() if saved.get(k) != v]
        if diffs:
            why = " (the encoder's weights or the images changed)" if "features_digest" in diffs else ""
            raise ExplainersError(
                f"the interrupted probe run in its --out differs in: {', '.join(diffs)}{why}; rerun with the "
                "same encoder, data and settings, or choose another --out"
            )


def train_probe_to(
    encoder: ExplaineeAdapter | str,
    data: str,
    out: str | Path,
    config: ProbeConfig | None = None,
    *,
    encoder_spec: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> LinearProbe:
    """Train a probe with ``config`` (see :class:`ProbeConfig`) and save it to ``out``, holding ``out``'s
    lock meanwhile (a second run on the same output is refused); an interrupted run in ``out`` is
    resumed. ``encoder``: an adapter or a model spec."""
    config = config or ProbeConfig()
    out = Path(out).expanduser()
    with output_lock(out):
        if not isinstance(encoder, ExplaineeAdapter):
            encoder_spec = encoder_spec or str(encoder)
            encoder = load_explainee(encoder, device=config.torch_device)
        probe = train_probe(
            encoder,
            data,
            config.task,
            encoder_spec=encoder_spec,
            split=config.split,
            val_split=config.val_split or None,
            test_split=config.test_split or None,
            max_images=config.max_images,
            batch_size=config.batch_size,
            max_iter=config.max_iter,
            seed=config.seed,
            workers=config.workers,
            progress=progress,
            command=command,
            out=out,
        )
        (out / "config.json").unlink(missing_ok=True)  # config.json last: it marks a complete probe
        probe.save_pretrained(out)
    return probe


def _maybe(load, split_name: str | None):
    if not split_name:
        return None
    try:
        return load(split_name)
    except ExplainersError:
        return None  # the dataset has no such split
