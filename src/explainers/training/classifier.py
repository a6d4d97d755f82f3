"""Train a small Hugging Face ViT classifier from scratch: the embedded benchmark's explainee (synthetic
scenes), or one for any labelled dataset (``folder:``, ``imagenet-val:``, ...).

The output is an ordinary Hugging Face image-classification directory::

    OUT/config.json                 ViTConfig (+ id2label/label2id, image_mean/image_std)
    OUT/model.safetensors           weights
    OUT/preprocessor_config.json    ViTImageProcessor: size, mean and std (the model sees (x - mean) / std)
    OUT/training.json               config, seed, command, per-epoch history, accuracies, time, versions
    OUT/log.jsonl                   one JSON record per epoch, written as each epoch ends

It runs on the shared :class:`~explainers.training.loop.TrainingLoop` (device, precision, gradient
accumulation, DDP under ``torchrun``, non-finite loss guard, exact resume from ``OUT/train_state/``).

Speed matters (two CPU cores): the whole split is held in memory as one normalised tensor, batches are
index slices of it, and augmentation is one dihedral transform (rotation by k·90° and an optional flip)
per batch, which keeps every label valid (the shape, colour and size tasks are invariant; the quadrant label is
permuted accordingly).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from explainers._compat import patch_torchvision
from explainers.data import open_dataset, parse_dataset_spec
from explainers.data.base import ImageDataset, iter_batches
from explainers.data.synthetic import SyntheticDataset
from explainers.devices import resolve_device
from explainers.errors import DatasetError, ExplainersError
from explainers.models import ExplaineeAdapter, load_explainee
from explainers.models.loading import quiet_transformers
from explainers.training.checkpoint import find_training_state, output_lock, pixel_digest
from explainers.training.config import build
from explainers.training.loop import Learner, Runtime, TrainingLoop, check_precision, load_images

AUGMENTATIONS = ("auto", "dihedral", "none")
# Settings that do not change the trained weights: a resumed run may differ in these.
_RESUME_FREE_KEYS = {"device", "workers", "threads", "eval_batch_size"}
LOG_NAME = "log.jsonl"


@dataclass
class ClassifierTrainConfig:
    """How the explainee is built and trained (defaults: the shipped explainee)."""

    # Model (ViT): the patch grid is image_size / patch_size per side.
    patch_size: int = 8
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_size: int = 256
    # Std of the normal init of every linear layer, the patch embedding, the position embeddings and the
    # CLS token (ViTConfig.initializer_range). HF's default 0.02 left this model on a loss plateau at
    # chance for one to two epochs; 0.06 (about the Xavier scale at width 128) escapes it in ~100 steps.
    init_std: float = 0.06
    # Optimisation: AdamW, linear warm-up then cosine decay to 0, label smoothing, gradient clipping.
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of all steps
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    # auto: the dihedral transform on synthetic scenes (their labels survive it), none on other data
    # (a rotated or mirrored digit or text is another class).
    augment: str = "auto"
    # Data and bookkeeping. image_size: side the images are resized to (None: the synthetic scenes' own
    # size, 224 for other data); val_split/test_split: "" for none.
    image_size: int | None = None
    val_split: str = "val"
    test_split: str = "test"
    task: str = "shape"
    seed: int = 0
    threads: int | None = 2  # torch threads; None leaves torch's default
    eval_batch_size: int = 500
    select: str = "best"  # keep the epoch with the best validation accuracy ("best") or the last ("last")
    device: str = "auto"
    precision: str = "fp32"
    grad_accum: int = 1  # micro-batches per optimiser step (one batch in that many parts)
    workers: int | None = None  # image-decoding processes (non-synthetic data; None: the loader's default)
    # Start from the weights of an earlier train-classifier output (same architecture, classes and image
    # size; its input normalisation is kept) instead of a fresh initialisation: training continues with
    # this run's schedule. None: train from scratch.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ExplainersError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.select not in ("best", "last"):
            raise ExplainersError(f"select must be 'best' or 'last', got {self.select!r}")
        if self.hidden_size % self.num_heads:
            raise ExplainersError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )
        if min(self.epochs, self.batch_size, self.num_layers, self.patch_size, self.grad_accum) < 1:
            raise ExplainersError("epochs, batch_size, num_layers, patch_size and grad_accum must be >= 1")
        resolve_device(self.device)
        check_precision(self.precision)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ExplainersError(f"{f.name} must be a finite number, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierTrainConfig:
        return build(cls, data, "classifier training")


def _vit_classes() -> tuple[Any, Any, Any]:
    patch_torchvision()  # transformers imports torchvision when present (see explainers._compat)
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    return ViTConfig, ViTForImageClassification, ViTImageProcessor


def build_vit(
    config: ClassifierTrainConfig,
    image_size: int,
    class_names: list[str],
    mean: list[float],
    std: list[float],
) -> Any:
    """A freshly initialised ``ViTForImageClassification`` for ``class_names`` (seeded by ``config.seed``)."""
    ViTConfig, ViTForImageClassification, _ = _vit_classes()
    if image_size % config.patch_size:
        raise ExplainersError(f"image size {image_size} is not a multiple of patch_size {config.patch_size}")
    vit_config = ViTConfig(
        image_size=image_size,
        patch_size=config.patch_size,
        num_channels=3,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=config.init_std,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
        # Also kept in config.json so that a model object alone knows its input normalisation.
        image_mean=mean,
        image_std=std,
    )
    torch.manual_seed(config.seed)
    return ViTForImageClassification(vit_config)


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, (-2, -1)) if k else x
    return x.flip(-1) if flip else x


def _quadrant_permutation(k: int, flip: bool) -> torch.Tensor:
    """New quadrant label of each old one under the same dihedral transform as the image."""
    grid = torch.arange(4).view(1, 2, 2)  # [[TL, TR], [BL, BR]]
    moved = _dihedral(grid, k, flip).flatten()  # moved[new position] = old label
    perm = torch.empty(4, dtype=torch.long)
    perm[moved] = torch.arange(4)
    return perm


def _lr_lambda(total: int, warmup: int) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


@torch.no_grad()
def _accuracy(model: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(pixel_values=x[start : start + batch_size]).logits
        correct += int((logits.argmax(-1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


@dataclass
class _Splits:
    """Everything the loop needs from the data, whatever its kind."""

    name: str
    image_size: int
    class_names: list[str]
    train_u8: torch.Tensor  # N×3×H×W uint8
    train_y: torch.Tensor
    val_u8: torch.Tensor
    val_y: torch.Tensor
    test_u8: torch.Tensor
    test_y: torch.Tensor
    synthetic: bool
    info: dict[str, Any]


def _synthetic_splits(data_dir: Path, config: ClassifierTrainConfig) -> _Splits:
    sets = {s: SyntheticDataset(data_dir, split=s, task=config.task) for s in ("train", "val", "test")}
    arrays = {}
    for split, ds in sets.items():
        wanted = {"val": config.val_split, "test": config.test_split}.get(split, split)
        images, _, labels = ds.load_arrays() if wanted else (np.zeros((0, 1, 1, 3), np.uint8), None, np.zeros(0))
        arrays[split] = (torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long())
    size = sets["train"].config.image_size
    return _Splits(
        name=f"synthetic:{data_dir}",
        image_size=size,
        class_names=list(sets["train"].class_names or []),
        train_u8=arrays["train"][0], train_y=arrays["train"][1],
        val_u8=arrays["val"][0], val_y=arrays["val"][1],
        test_u8=arrays["test"][0], test_y=arrays["test"][1],
        synthetic=True,
        info={
            "path": str(data_dir.resolve()),
            "manifest": sets["train"].manifest,
            "task": config.task,
            "split_sizes": {s: len(d) for s, d in sets.items()},
        },
    )


def _labelled_splits(spec: str, config: ClassifierTrainConfig) -> _Splits:
    """Any labelled dataset kind: the train split, and the val/test splits when the dataset has them."""
    size = config.image_size or 224
    try:
        train = open_dataset(spec, split="train")
        has_splits = True
    except DatasetError:  # a dataset without a train split (a plain class-per-folder tree): all of it
        train, has_splits = open_dataset(spec), False
    loaded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    sizes: dict[str, int] = {}
    for split, wanted in (("train", "train"), ("val", config.val_split), ("test", config.test_split)):
        ds = train if split == "train" else None
        if ds is None and wanted and has_splits:
            try:
                ds = open_dataset(spec, split=wanted)
            except DatasetError:
                ds = None  # the dataset has no such split
        if ds is None:
            loaded[split] = (torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
            continue
        images, labels, _ = load_images(ds, list(range(len(ds))), (size, size), config.workers)
        keep = labels >= 0
        if split == "train" and not bool(keep.any()):
            raise ExplainersError(f"{spec} has no labelled training images; train-classifier needs labels")
        loaded[split] = ((images[keep] * 255).round().to(torch.uint8), labels[keep])
        sizes[split] = int(keep.sum())
    names = list(getattr(train, "class_names", None) or [])
    num_classes = int(loaded["train"][1].max()) + 1
    if len(names) < num_classes:
        names = [str(i) for i in range(num_classes)]
    return _Splits(
        name=spec,
        image_size=size,
        class_names=names,
        train_u8=loaded["train"][0], train_y=loaded["train"][1],
        val_u8=loaded["val"][0], val_y=loaded["val"][1],
        test_u8=loaded["test"][0], test_y=loaded["test"][1],
        synthetic=False,
        info={"spec": spec, "split_sizes": sizes},
    )


def _normalise_u8(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return images.float().div_(255.0).sub_(m).div_(s).contiguous()


class _ClassifierLearner(Learner):
    """The classifier's own part of the shared loop: a cross-entropy step on an index slice of the
    in-memory split (with the dihedral augmentation on the scenes), and the validation accuracy that
    selects the epoch. One generator, seeded once, draws each epoch's order and each batch's transform;
    its state is part of the training state, so a resumed run draws what an uninterrupted one would."""

    state_format = "explainers-classifier-train-state"
    name = "classifier training"

    def __init__(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: ClassifierTrainConfig,
        splits: _Splits,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        augment: bool,
        runtime: Runtime,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.runtime = runtime
        self.forward_model = runtime.prepare(model)  # DDP-wrapped with several processes
        self.config, self.augment = config, augment
        self.x_train, self.y_train = train
        self.x_val, self.y_val = val
        self.generator = torch.Generator().manual_seed(config.seed)
        self.generator_state = self.generator.get_state()  # as of the last finished step
        self.order = torch.zeros(0, dtype=torch.long)
        self.sums = torch.zeros(3, dtype=torch.float64)  # loss × images, correct, images (this epoch)
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_started = time.time()
        self.identity = {
            "config": {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE_KEYS},
            "data": splits.name,
            "data_digest": pixel_digest(splits.train_u8.float() / 255, splits.val_u8.float() / 255),
        }

    def train_step(self, loop: TrainingLoop, step: int, epoch: int, index: int) -> None:
        config, device = self.config, loop.device
        if index == 0:
            self.order = torch.randperm(len(self.x_train), generator=self.generator)
            self.sums.zero_()
            self.epoch_started = time.time()
        idx = self.order[index * config.batch_size : (index + 1) * config.batch_size]
        x, y = self.x_train[idx], self.y_train[idx]
        if self.augment:
            k = int(torch.randint(4, (1,), generator=self.generator))
            flip = bool(torch.randint(2, (1,), generator=self.generator))
            x = _dihedral(x, k, flip)
            if config.task == "quadrant":
                y = _quadrant_permutation(k, flip)[y]
        # Several processes (DDP): each takes every world-size-th image of the batch; DDP averages the
        # per-process mean gradients, which is the whole batch's mean (the shares are equal).
        rank, world = self.runtime.rank, self.runtime.world
        x, y = x[rank::world], y[rank::world]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            images, targets = batch
            with loop.autocast():
                logits = self.forward_model(pixel_values=images).logits
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
            correct = (logits.argmax(-1) == targets).sum()
            figures = [loss.detach() * len(targets), correct.to(loss.dtype), loss.new_tensor(len(targets))]
            share = len(targets) / len(y)  # micro-batch means, weighted to the mean over the batch
            return (loss * share if share != 1 else loss), torch.stack(figures)

        parts = [p for p in torch.arange(len(y)).tensor_split(config.grad_accum) if len(p)]
        micro = [(x[p], y[p]) for p in parts] if len(parts) > 1 else [(x, y)]
        figures = loop.gradient_step(self.forward_model, micro, loss_of).cpu()
        loop.optimizer_step(float(figures[0] / figures[2]), list(self.model.parameters()), config.grad_clip)
        self.sums += figures
        self.generator_state = self.generator.get_state()
        if index % 10 == 0:
            loop.set_postfix(loss=f"{self.sums[0] / self.sums[2]:.3f}", acc=f"{self.sums[1] / self.sums[2]:.3f}")

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, step: int) -> None:
        config = self.config
        sums = self.runtime.reduce_sum(self.sums)  # over the processes
        seen = int(sums[2])
        train_s = time.time() - self.epoch_started
        has_val = len(self.x_val) > 0
        val_acc = float("nan")
        if has_val:
            x_val, y_val = self.x_val.to(loop.device), self.y_val.to(loop.device)
            val_acc = _accuracy(self.model, x_val, y_val, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "loss": round(float(sums[0]) / max(1, seen), 5),
            "train_acc": round(float(sums[1]) / max(1, seen), 5),
            "val_acc": round(val_acc, 5),
            "seconds": round(time.time() - self.epoch_started, 2),
            "train_img_per_s": round(seen / max(train_s, 1e-9), 1),
        }
        self.history.append(record)
        loop.log(record)
        loop.write(
            f"epoch {epoch}: loss {record['loss']:.4f}  train acc {record['train_acc']:.4f}  "
            f"val acc {record['val_acc']:.4f}  ({record['seconds']:.0f} s)"
        )
        # With no validation images, "best" degrades to "last".
        if config.select == "last" or not has_val or val_acc > self.best_acc:
            self.best_acc, self.best_epoch = val_acc, epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        # The epoch's running sums, summed over the processes (the main process keeps them).
        total = self.runtime.reduce_sum(self.sums)
        self.sums = total if self.runtime.main else torch.zeros_like(total)
        return {
            **self.identity,
            "generator": self.generator_state,
            "order": self.order,
            "sums": self.sums.clone(),
            "history": self.history,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.generator_state = state["generator"]
        self.order = state["order"]
        self.sums = state["sums"].clone() if self.runtime.main else torch.zeros_like(state["sums"])
        self.history = list(state["history"])
        self.best_acc, self.best_epoch, self.best_state = state["best_acc"], state["best_epoch"], state["best_state"]
        self.epoch_started = time.time()

    def check_resume(self, saved: dict[str, Any]) -> None:
        diffs = [k for k, v in self.identity["config"].items() if saved.get("config", {}).get(k) != v]
        if saved.get("data") != self.identity["data"] or saved.get("data_digest") != self.identity["data_digest"]:
            diffs.append("data")
        if diffs:
            raise ExplainersError(
                f"the interrupted run in its --out differs in: {', '.join(diffs)}; rerun with the same "
                "settings and data to resume it, or pass --overwrite to start over"
            )


def train_classifier(
    data: Path | str,
    out: Path | str,
    config: ClassifierTrainConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train a ViT from scratch on ``data`` and save it to ``out``.

    ``data``: ``KIND:PATH`` of any labelled dataset, or a synthetic dataset folder. Model selection on
    the validation split (``config.select``); the test accuracy is reported for the selected weights.
    Returns the ``training.json`` record. ``OUT/log.jsonl`` grows by one record per epoch; the model
    files are written under a temporary name and renamed at the end; a non-empty ``out`` is refused
    unless ``overwrite=True``.
    """
    config = config or ClassifierTrainConfig()
    out = Path(out).expanduser().resolve()
    with output_lock(out, int(os.environ.get("RANK", "0")) == 0):
        return _train_classifier(data, out, config, progress, overwrite, command)


def _train_classifier(
    data: Path | str,
    out: Path,
    config: ClassifierTrainConfig,
    progress: bool,
    overwrite: bool,
    command: str | None,
) -> dict[str, Any]:
    # A training state in OUT: resume it (an interrupted run), unless --overwrite starts over.

    resumable = out.is_dir() and find_training_state(out) is not None
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite and not resumable:
        raise ExplainersError(
            f"{out} already exists and is not empty; choose another --out or pass --overwrite"
        )
    started = time.time()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    runtime = Runtime(config.device, config.precision)
    if config.batch_size % runtime.world:
        raise ExplainersError(
            f"batch_size {config.batch_size} must be divisible by the number of processes ({runtime.world})"
        )

    text = str(data)
    kind, path = parse_dataset_spec(text) if ":" in text and not Path(text).exists() else ("synthetic", text)
    if kind == "synthetic":
        splits = _synthetic_splits(Path(path).expanduser(), config)
        if config.image_size not in (None, splits.image_size):
            raise ExplainersError(
                f"synthetic scenes are {splits.image_size} px; image_size {config.image_size} would resize them"
            )
    else:
        splits = _labelled_splits(text, config)
    if len(splits.train_y) == 0:
        raise ExplainersError(f"{splits.name} has an empty train split; it needs labelled train images")
    augment_mode = config.augment if config.augment != "auto" else ("dihedral" if splits.synthetic else "none")
    if augment_mode == "dihedral" and not splits.synthetic:
        raise ExplainersError("augment 'dihedral' is only label-safe on the synthetic scenes; use 'none'")
    class_names, image_size = splits.class_names, splits.image_size

    init_model, init_info = _initial_model(config, image_size, class_names) if config.init_from else (None, None)
    if init_model is not None:
        # The weights were trained on inputs normalised with these statistics: keep them.
        mean, std = list(init_model.config.image_mean), list(init_model.config.image_std)
    else:
        # Per-channel statistics of the training images, rounded so they read well in the configs.
        # (every (N // 2000)-th pixel of the training set, as the shipped explainee was made)
        pixels = splits.train_u8.permute(0, 2, 3, 1).reshape(-1, 3)
        flat = pixels[:: max(1, len(splits.train_u8) // 2000)].double() / 255.0
        mean = [round(float(v), 4) for v in flat.mean(0)]
        std = [round(float(v), 4) for v in flat.std(0, correction=0).clamp(min=1e-3)]
    x_train, y_train = _normalise_u8(splits.train_u8, mean, std), splits.train_y
    x_val, y_val = _normalise_u8(splits.val_u8, mean, std), splits.val_y
    x_test, y_test = _normalise_u8(splits.test_u8, mean, std), splits.test_y
    load_s = time.time() - started
    device = runtime.device

    model = (init_model if init_model is not None else build_vit(config, image_size, class_names, mean, std)).to(
        device
    )
    model.train()
    # No weight decay on biases, LayerNorms, position embeddings and the CLS token.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    steps_per_epoch = max(1, len(x_train) // config.batch_size)  # drop the ragged last batch
    total = steps_per_epoch * config.epochs
    warmup = max(1, round(config.warmup * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total, warmup))
    learner = _ClassifierLearner(
        model, optimizer, scheduler, config, splits, (x_train, y_train), (x_val, y_val),
        augment=augment_mode == "dihedral",
        runtime=runtime,
    )
    train_started = time.time()
    loop = TrainingLoop(
        runtime,
        out,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        log_name=LOG_NAME,
        progress=progress,
        unit="batch",
        resume=not overwrite,
    )
    loop.run(learner)
    if not runtime.main:  # the main process evaluates and writes the model
        runtime.barrier()
        return {"main_process": False}
    history, best_acc, best_epoch = learner.history, learner.best_acc, learner.best_epoch
    best_state = learner.best_state
    train_wall = loop.elapsed_s if loop.resumed else time.time() - train_started

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    test_acc = _accuracy(model, x_test, y_test, config.eval_batch_size) if len(x_test) else float("nan")
    images_seen = steps_per_epoch * config.batch_size * config.epochs
    model.to("cpu")

    import transformers

    record = {
        "format": "explainers-classifier-training",
        "version": 1,
        "data": {**splits.info, "class_names": class_names},
        "config": {**config.to_dict(), "augment": augment_mode},
        "seed": config.seed,
        "model": {
            "image_size": image_size,
            "patch_grid": image_size // config.patch_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "normalisation": {"mean": mean, "std": std},
        **({"init": init_info} if init_info else {}),
        "command": command or shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "history": history,
        "selected_epoch": best_epoch,
        "val_accuracy": round(best_acc, 5),
        "test_accuracy": round(test_acc, 5),
        "train_wall_seconds": round(train_wall, 3),
        "total_wall_seconds": round(time.time() - started, 3),
        "data_load_seconds": round(load_s, 1),
        "images_seen": images_seen,
        "train_img_per_s": round(images_seen / max(train_wall, 1e-9), 1),
        "device": str(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
    }
    _save(model, out, image_size, mean, std, record, overwrite=True)
    runtime.barrier()
    return record


def resample_position_embeddings(
    embeddings: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], prefix_tokens: int = 1
) -> torch.Tensor:
    """1×(prefix + gh·gw)×C position embeddings on ``old_grid`` → the same on ``new_grid``: the prefix (CLS)
    rows are kept, the patch rows are laid out on their grid and resized bicubically (align_corners=False,
    so that each patch's embedding stays at its patch centre)."""
    (oh, ow), (nh, nw) = old_grid, new_grid
    prefix, patches = embeddings[:, :prefix_tokens], embeddings[:, prefix_tokens:]
    if patches.shape[1] != oh * ow:
        raise ExplainersError(f"{patches.shape[1]} patch position embeddings do not form a {oh}×{ow} grid")
    if (oh, ow) == (nh, nw):
        return embeddings.clone()
    grid = patches.reshape(1, oh, ow, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(nh, nw), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, nh * nw, -1).to(embeddings.dtype)
    return torch.cat([prefix, patches], dim=1)


def _initial_model(config: ClassifierTrainConfig, image_size: int, class_names: list[str]) -> tuple[Any, dict]:
    """The model in ``config.init_from``, checked against this run's architecture and classes, and a record
    of where it came from (its path, weight digest and recorded accuracies). Trained at another image size,
    its position embeddings are resampled to this run's patch grid (recorded too)."""
    import hashlib

    _, ViTForImageClassification, _ = _vit_classes()
    folder = Path(str(config.init_from)).expanduser()
    weights = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise ExplainersError(f"init_from {folder} is not a train-classifier output (config.json, model.safetensors)")
    with quiet_transformers():
        model = ViTForImageClassification.from_pretrained(folder)
    c = model.config
    mismatches = [
        f"{name} {theirs} (this run: {ours})"
        for name, theirs, ours in (
            ("patch_size", c.patch_size, config.patch_size),
            ("hidden_size", c.hidden_size, config.hidden_size),
            ("num_layers", c.num_hidden_layers, config.num_layers),
            ("num_heads", c.num_attention_heads, config.num_heads),
            ("mlp_size", c.intermediate_size, config.mlp_size),
            ("classes", [c.id2label[i] for i in range(c.num_labels)], class_names),
        )
        if theirs != ours
    ]
    if mismatches:
        raise ExplainersError(f"init_from {folder} does not fit this run: {'; '.join(mismatches)}")
    if getattr(c, "image_mean", None) is None or getattr(c, "image_std", None) is None:
        raise ExplainersError(f"init_from {folder} records no input normalisation (image_mean/image_std)")
    info: dict[str, Any] = {"path": str(folder.resolve()), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    if c.image_size != image_size:
        # Another input size: the same weights on a larger/smaller patch grid, the position embeddings
        # resampled to it (how ViTs are fine-tuned at a new resolution); everything else carries over.
        old_grid, new_grid = c.image_size // c.patch_size, image_size // config.patch_size
        resized = build_vit(config, image_size, class_names, list(c.image_mean), list(c.image_std))
        state = model.state_dict()
        key = "vit.embeddings.position_embeddings"
        state[key] = resample_position_embeddings(state[key], (old_grid, old_grid), (new_grid, new_grid))
        resized.load_state_dict(state)
        model = resized
        info["position_embeddings_resampled"] = {"from_grid": old_grid, "to_grid": new_grid, "mode": "bicubic"}
    try:
        earlier = json.loads((folder / "training.json").read_text())
        info.update({k: earlier.get(k) for k in ("command", "val_accuracy", "test_accuracy", "train_wall_seconds")})
    except (OSError, json.JSONDecodeError):
        pass
    return model, info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _save(
    model: Any, out: Path, image_size: int, mean: list[float], std: list[float], record: dict, overwrite: bool
) -> None:
    """Write the HF directory next to ``out`` under a temporary name, then rename it into place."""
    _, _, ViTImageProcessor = _vit_classes()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        processor = ViTImageProcessor(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            do_rescale=True,
            do_normalize=True,
            image_mean=mean,
            image_std=std,
        )
        processor.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        if (out / LOG_NAME).is_file():
            shutil.copyfile(out / LOG_NAME, tmp / LOG_NAME)
        _make_readable(tmp)
        if out.exists():
            if not overwrite and out.is_dir() and any(out.iterdir()):
                raise ExplainersError(
                    f"{out} appeared while training; choose another --out or pass --overwrite"
                )
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_readable(folder: Path) -> None:
    """mkdtemp and some writers create owner-only entries; a model directory is meant to be shared."""
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)


def evaluate_accuracy(explainee: Any, dataset: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of an explainee on a labelled dataset; images scored ``-1`` (unlabelled) are skipped.

    ``explainee`` is anything :func:`explainers.models.load_explainee` accepts (a model directory, a
    built model, ``"embedded"``) or an adapter, so resizing and normalisation are the adapter's own.
    """
    adapter = explainee if isinstance(explainee, ExplaineeAdapter) else load_explainee(explainee)
    was_training = adapter.model.training
    adapter.model.eval()
    device = adapter.device
    if isinstance(dataset, SyntheticDataset) and (dataset.config.image_size,) * 2 == adapter.image_size:
        images_u8, _, labels_np = dataset.load_arrays()  # fast path: no per-image tensors or resizing
        batches: Any = (
            (
                torch.from_numpy(images_u8[i : i + batch_size]).permute(0, 3, 1, 2).float().div_(255.0),
                torch.from_numpy(labels_np[i : i + batch_size]),
            )
            for i in range(0, len(images_u8), batch_size)
        )
    else:
        batches = ((b.images, b.labels) for b in iter_batches(dataset, batch_size, adapter.input_geometry))
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            keep = labels >= 0
            if not bool(keep.any()):
                continue
            logits = adapter.predict(adapter.resize(images[keep]).to(device))
            correct += int((logits.argmax(-1).cpu() == labels[keep]).sum())
            total += int(keep.sum())
    adapter.model.train(was_training)
    if total == 0:
        raise ExplainersError(f"{getattr(dataset, 'name', 'the dataset')} has no labelled images to score")
    return correct / total


__all__ = ["ClassifierTrainConfig", "build_vit", "evaluate_accuracy", "train_classifier"]
