"""pLTE pre-training: train the explainer on a class-uniform subset, select on validation POS-AUC
(docs/learned-explainers.md).

Output directory layout::

    OUT/config.json, OUT/model.safetensors   the best epoch so far (lowest validation POS-AUC), in
                                             ``LTEExplainer.save_pretrained`` format
    OUT/train_state/                         the last state: model.safetensors (weights) + state.pt
                                             (optimizer, scheduler, epoch/step, best, log, RNG; tensors and
                                             plain values only, read back with ``weights_only=True``)
    OUT/log.jsonl                            one JSON record per epoch (loss terms, LR, validation POS-AUC)
    OUT/training.png                         loss and validation AUC per epoch
    OUT/subsets.json                         the ids of the training and validation images

Runs on the shared :class:`~explainers.training.loop.TrainingLoop`: rerunning with the same arguments
continues an interrupted run from its last saved state (end of an epoch, or every ``checkpoint_every``
steps) and ends with the same weights and log as an uninterrupted run: the data order of an epoch and the
RNG of a step are functions of (seed, epoch, step), not of the run's history.

Runs as one process or under ``torchrun`` / ``accelerate launch`` with several (DDP through
``accelerate.Accelerator``; gloo on CPU). ``batch_size`` is the global batch: each process takes every
world-size-th image of it, and the loss is scaled so that the averaged gradient is the single-process one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explainers.data import ImageDataset, open_dataset, parse_dataset_spec
from explainers.errors import ExplainersError
from explainers.io.atomic import write_text_atomic
from explainers.learned.lte.config import LTEConfig
from explainers.learned.lte.explainer import (
    CONFIG_NAME,
    LTEExplainer,
    check_compatible,
)
from explainers.learned.lte.loss import loss_classes, lte_loss, mask_weight
from explainers.learned.lte.scoring import perturbation_auc
from explainers.models import ExplaineeAdapter, load_explainee
from explainers.models.signature import check_fingerprint
from explainers.training.checkpoint import (
    find_training_state,
    output_lock,
    pixel_digest,
)
from explainers.training.loop import Learner, Runtime, TrainingLoop, load_images

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
PLOT_NAME = "training.png"
SUBSETS_NAME = "subsets.json"
STATE_FORMAT = "explainers-lte-train-state-2"  # 2: the shared training loop's state

# Settings that do not change the trained weights: a resumed run may differ in these.
_FREE_KEYS = {
    "device",
    "workers",
    "eval_batch_size",
    "checkpoint_every",
    "refine_steps",
    "refine_lr",
    "refine_weight_decay",
    "refine_select",
    "refine_stop_below",
    "refine_stop_above",
}


@dataclass
class PretrainResult:
    """What a pre-training run produced (``out_dir`` holds the best checkpoint)."""

    out_dir: Path
    best_epoch: int | None
    best_val_auc: float | None
    epochs_done: int
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False
    #: The explainer as it is after the last epoch (in memory; the best one is in ``out_dir``).
    last: LTEExplainer | None = None
    #: False on the other processes of a distributed run (only the main one writes and reports).
    main_process: bool = True
    #: A warning when the selected epoch's masks collapsed (flat, all-zero or all-one), else None.
    collapse: str | None = None


# ----------------------------------------------------------------------------------------------- data
def select_subsets(
    labels: list[int], train_per_class: int | None, val_per_class: int, seed: int
) -> tuple[list[int], list[int]]:
    """Class-uniform, disjoint train/validation index lists (sorted), drawn with ``seed``.

    ``train_per_class`` None takes every image of a class that is not drawn for validation (classes
    then differ in size only by what the dataset gives them).
    """
    if any(label < 0 for label in labels):
        raise ExplainersError(
            "pLTE pre-training needs labelled images for class-uniform subsets; "
            "this dataset has images without a label"
        )
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    need = (train_per_class or 1) + val_per_class
    short = {c: len(v) for c, v in sorted(by_class.items()) if len(v) < need}
    if short:
        what = (
            f"train_per_class + val_per_class = {need} images per class are needed"
            if train_per_class is not None
            else f"val_per_class + 1 = {need} images per class are needed (one to train on)"
        )
        raise ExplainersError(
            f"{what}, but class(es) "
            + ", ".join(f"{c} ({n})" for c, n in short.items())
            + " have fewer; lower them in the config"
        )
    train: list[int] = []
    val: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        n_train = len(idx) - val_per_class if train_per_class is None else train_per_class
        train += [idx[j] for j in perm[:n_train]]
        val += [idx[j] for j in perm[n_train : n_train + val_per_class]]
    return sorted(train), sorted(val)


def _dataset_labels(dataset: ImageDataset) -> list[int]:
    return [int(v) for v in dataset.labels]  # from the label file / folder names / CSV: no decoding


def open_training_data(data: str | ImageDataset, split: str | None) -> ImageDataset:
    """Open ``KIND:PATH``; synthetic datasets default to their ``train`` split for pre-training."""
    if isinstance(data, ImageDataset):
        return data
    kind, _ = parse_dataset_spec(data)
    if split is None and kind == "synthetic":
        split = "train"
    return open_dataset(data, split=split)


# ----------------------------------------------------------------------------------------------- schedule
def schedule_lengths(config: LTEConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, total steps) of the learning-rate schedule.

    ``linear``: from the real run. ``reference``: as the published code computed them, from a folder of
    ``reference_folder_size`` images (``folder // batch`` steps per epoch, warm-up = total // 5 for the
    default fraction) while training on far fewer, so training ends inside the warm-up.
    """
    if config.schedule == "reference":
        total = (config.reference_folder_size // config.batch_size) * config.epochs
    else:
        total = steps_per_epoch * config.epochs
    return int(total * config.warmup_fraction), total


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up from 0, then linear decay to 0."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """The explainee stays fixed: no gradients accumulate into its weights (restored afterwards)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _step_seed(seed: int, step: int, rank: int) -> int:
    # Re-seeding every step makes dropout a function of (seed, step, rank), so resuming reproduces it.
    return (seed * 1_000_003 + step * 9_973 + rank * 101) % (2**63 - 1)


def _epoch_order(n: int, seed: int, epoch: int, world: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7_919 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if len(order) % world:  # pad by wrapping so every process gets the same number of images
        order += order[: world - len(order) % world]
    return order


@torch.no_grad()
def _predict_classes(
    adapter: ExplaineeAdapter, images: torch.Tensor, labels: torch.Tensor, mode: str, chunk: int
) -> torch.Tensor:
    device = adapter.device
    out = [
        loss_classes(adapter, images[i : i + chunk].to(device), labels[i : i + chunk].to(device), mode).cpu()
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(out)


@torch.no_grad()
def validation_scores(
    explainer: LTEExplainer, images: torch.Tensor, classes: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image POS-AUC of the explainer's masks (chunked), and the summed per-image collapse figures
    of :func:`collapse_stats` (in ``_COLLAPSE_KEYS`` order) over the images."""
    adapter = explainer.adapter
    out = []
    counts = torch.zeros(len(_COLLAPSE_KEYS), dtype=torch.float64)
    was_training = explainer.net.training
    explainer.net.eval()
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].to(explainer.device)
            mask = explainer.masks(x, classes[i : i + chunk].to(x.device))[1]
            stats = collapse_stats(mask.float())
            counts += torch.tensor([stats[k] * len(x) for k in _COLLAPSE_KEYS], dtype=torch.float64)
            out.append(
                perturbation_auc(
                    adapter, x, mask, classes[i : i + chunk].to(x.device), "pos", max_batch=chunk
                )
            )
    finally:
        explainer.net.train(was_training)
    return (torch.cat(out) if out else torch.empty(0, dtype=torch.float64)), counts


def plot_log(records: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation POS-AUC per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    trained = [r for r in records if r.get("loss") is not None]
    ax1.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], "o-", label="total")
    ax1.plot(
        [r["epoch"] for r in trained], [r["prediction_loss"] for r in trained], ".--", label="prediction"
    )
    ax1.plot([r["epoch"] for r in trained], [r["mask_loss_weighted"] for r in trained], ".--", label="λ·mask")
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss")
    ax1.legend()
    scored = [r for r in records if r.get("val_pos_auc") is not None]
    ax2.plot([r["epoch"] for r in scored], [r["val_pos_auc"] for r in scored], "o-", color="C3")
    ax2.set_xlabel("epoch")
    ax2.set_title("validation POS-AUC (lower is better)")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- state
def _check_resume(
    payload: dict[str, Any], config: LTEConfig, adapter: ExplaineeAdapter, subsets: dict[str, Any], out: Path
) -> None:
    # A key the saved run does not know (added to LTEConfig since) had its default value there.
    saved = {**LTEConfig().to_dict(), **payload["config"]}
    now = config.to_dict()
    diffs = sorted(k for k in now if k not in _FREE_KEYS and saved.get(k) != now[k])
    if diffs:
        shown = ", ".join(f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in diffs)
        raise ExplainersError(
            f"{out} holds a pre-training run with a different configuration ({shown}); rerun with the same "
            "settings to resume it, or pick another --out"
        )
    check_compatible(payload["explainee"], adapter, str(out))

    check_fingerprint(
        payload.get("explainee_weights_fingerprint"),
        adapter.weights_fingerprint(),
        what="interrupted pLTE run",
        source=str(out),
        model=f"explainee {adapter.identifier}",
        hint="resume with the explainee it started with, or pick another --out",
    )
    if payload["subsets"] != subsets:
        raise ExplainersError(
            f"{out} was pre-trained on other images (the dataset or split changed); pick another --out"
        )


# ----------------------------------------------------------------------------------------------- training
def pretrain_lte(
    explainee: ExplaineeAdapter | str,
    data: str | ImageDataset,
    out_dir: str | Path,
    config: LTEConfig | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    command: str | None = None,
) -> PretrainResult:
    """Pre-train a pLTE explainer for ``explainee`` on ``data`` (``KIND:PATH`` or a dataset) into ``out_dir``.

    Resumes automatically from ``out_dir``'s training state. ``on_step(global_step)`` is called after every
    optimiser step (and after any checkpoint of that step). ``command`` is recorded with the checkpoint.
    """
    config = config or LTEConfig()
    out = Path(out_dir).expanduser()
    # One run per output folder: the main process holds its lock (taken over when a crashed run left it).
    with output_lock(out, int(os.environ.get("RANK", "0")) == 0):
        return _pretrain_lte(explainee, data, out, config, progress=progress, on_step=on_step, command=command)


def _pretrain_lte(
    explainee: ExplaineeAdapter | str,
    data: str | ImageDataset,
    out: Path,
    config: LTEConfig,
    *,
    progress: bool,
    on_step: Callable[[int], None] | None,
    command: str | None,
) -> PretrainResult:
    runtime = Runtime(config.device, config.precision)
    world = runtime.world
    if config.batch_size % (world * config.grad_accum):
        raise ExplainersError(
            f"batch_size {config.batch_size} must be divisible by the number of processes ({world}) times "
            f"grad_accum ({config.grad_accum})"
        )

    adapter = load_explainee(explainee)
    adapter.to(runtime.device)
    adapter.model.eval()
    dataset = open_training_data(data, config.split)
    labels = _dataset_labels(dataset)
    # With class_mode "predicted" the labels only stratify the subsets: any labelling of the images will do
    # (e.g. the shape labels for a probe explainee of another task).
    if config.class_mode == "target" and max(labels, default=-1) >= adapter.num_classes:
        raise ExplainersError(
            f"the dataset has class {max(labels)} but the explainee only {adapter.num_classes} classes; "
            "use a dataset labelled for this explainee, or --class predicted"
        )
    train_idx, val_idx = select_subsets(labels, config.train_per_class, config.val_per_class, config.seed)
    train_x, train_y, train_ids = load_images(dataset, train_idx, adapter.input_geometry, config.workers)
    val_x, val_y, val_ids = load_images(dataset, val_idx, adapter.input_geometry, config.workers)
    subsets = {"train": train_ids, "val": val_ids}
    train_c = _predict_classes(adapter, train_x, train_y, config.class_mode, config.eval_batch_size)
    val_c = _predict_classes(adapter, val_x, val_y, config.class_mode, config.eval_batch_size)

    torch.manual_seed(config.seed)
    explainer = LTEExplainer(adapter, config)
    steps_per_epoch = math.ceil(math.ceil(len(train_idx) / world) * world / config.batch_size)
    info = {
        "dataset": data if isinstance(data, str) else getattr(data, "name", type(data).__name__),
        "split": getattr(dataset, "split", config.split),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "processes": world,
        "seed": config.seed,
        "command": command,
    }
    learner = _PLTELearner(
        explainer, runtime, config, out, info, (train_x, train_c), (val_x, val_c), subsets, steps_per_epoch
    )
    if (out / CONFIG_NAME).exists() and find_training_state(out) is None:
        raise ExplainersError(
            f"{out} already holds an explainer checkpoint but no training state to resume; pick another --out"
        )
    if runtime.main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / SUBSETS_NAME, json.dumps(subsets) + "\n")
    loop = TrainingLoop(
        runtime,
        out,
        total_steps=config.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        log_name=LOG_NAME,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
        on_step=on_step,
    )
    loop.run(learner)
    best, records = learner.best, learner.records
    best_record = next((r for r in records if r["epoch"] == best["epoch"] and r.get("loss") is not None), None)
    return PretrainResult(
        out_dir=out,
        best_epoch=best["epoch"],
        best_val_auc=best["val_pos_auc"],
        epochs_done=loop.step // steps_per_epoch,
        log=records,
        resumed=loop.resumed,
        last=explainer,
        main_process=runtime.main,
        collapse=None if best_record is None else best_record.get("collapse"),
    )


class _PLTELearner(Learner):
    """pLTE's part of the shared loop: a step is the LTE loss on a global batch of the training subset
    (each process its share, in ``grad_accum`` micro-batches); an epoch ends with the validation
    POS-AUC, which selects the checkpoint kept in OUT. The data order of an epoch and the RNG of a step
    are functions of (seed, epoch, step), so the state is the best so far, the per-epoch records and the
    running loss sums of the epoch."""

    state_format = STATE_FORMAT
    name = "pLTE pre-training"

    def __init__(
        self,
        explainer: LTEExplainer,
        runtime: Runtime,
        config: LTEConfig,
        out: Path,
        info: dict[str, Any],
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        subsets: dict[str, Any],
        steps_per_epoch: int,
    ) -> None:
        self.explainer, self.runtime, self.config, self.out = explainer, runtime, config, out
        self.adapter = explainer.adapter
        self.model = explainer.net
        self.params = explainer.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        warmup, total = schedule_lengths(config, steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total, config.schedule)
        )
        self.info = {**info, "lr_warmup_steps": warmup, "lr_total_steps": total}
        self.train_x, self.train_c = train
        self.val_x, self.val_c = val
        self.subsets = subsets
        self.data_digest = pixel_digest(self.train_x, self.val_x)
        self.fingerprint = self.adapter.weights_fingerprint()
        self.ddp_net = runtime.prepare(self.model)
        self.best: dict[str, Any] = {"epoch": None, "val_pos_auc": None}
        self.records: list[dict[str, Any]] = []
        self.sums = torch.zeros(4, dtype=torch.float64)  # total, prediction, mask, images (this epoch so far)
        self.epoch_batches: tuple[int, list[list[int]]] | None = None
        self.started = time.perf_counter()
        self.position = (0, 0)  # (epoch, step in epoch) of the next step

    def start(self, loop: TrainingLoop, resumed: bool) -> None:
        self.started = time.perf_counter()
        if not resumed and self.config.validate_initial:
            auc, stats = _validate(self.runtime, self.explainer, self.val_x, self.val_c, self.config)
            record = {"epoch": 0, "step": 0, "val_pos_auc": auc, "loss": None, **stats}
            self.records.append(record)
            loop.log(record)

    def _batches(self, epoch: int) -> list[list[int]]:
        if self.epoch_batches is None or self.epoch_batches[0] != epoch:
            order = _epoch_order(len(self.train_x), self.config.seed, epoch, self.runtime.world)
            size = self.config.batch_size
            self.epoch_batches = (epoch, [order[i : i + size] for i in range(0, len(order), size)])
        return self.epoch_batches[1]

    def train_step(self, loop: TrainingLoop, step: int, epoch: int, index: int) -> None:
        config, adapter, device = self.config, self.adapter, loop.device
        rank, world = self.runtime.rank, self.runtime.world
        self.model.train()
        chunk = self._batches(epoch)[index]
        local = chunk[rank::world]
        torch.manual_seed(_step_seed(config.seed, step, rank))
        # Gradient accumulation: this process's share in grad_accum micro-batches, one optimiser step.
        # DDP averages over processes: scale so that the result is the mean over the global batch.
        micro = [m for m in (local[i :: config.grad_accum] for i in range(config.grad_accum)) if m]
        weight_now = mask_weight(config, step, loop.steps_per_epoch * config.epochs)

        def loss_of(part: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.tensor(part)
            x, c = self.train_x[idx].to(device), self.train_c[idx].to(device)
            with loop.autocast():
                patch, mask = self.ddp_net(adapter.normalize(x), *explained_classes(self.explainer, c))
                terms = lte_loss(adapter, x, patch, mask, c, config, weight_now)
            # Summed on the training device (the image count too): no CPU tensor meets the CUDA loss terms.
            figures = torch.stack(
                [
                    terms.total.detach().float().sum(),
                    terms.prediction.detach().float().sum(),
                    terms.mask.detach().float().sum(),
                    terms.total.new_tensor(float(len(part))),
                ]
            )
            return terms.total.float().sum() * (world / len(chunk)), figures

        with frozen(adapter.model):  # the explainee stays fixed: no gradients into its weights
            step_sums = loop.gradient_step(self.ddp_net, micro, loss_of)
        step_loss = (step_sums[0] / step_sums[3].clamp(min=1)).item()
        loop.optimizer_step(step_loss, self.params)
        self.sums += step_sums.cpu()
        self.position = divmod(step + 1, loop.steps_per_epoch)
        loop.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.3f}")

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, step: int) -> None:
        config, explainer = self.config, self.explainer
        epoch_sums = self.runtime.reduce_sum(self.sums)
        self.sums = torch.zeros_like(self.sums)
        auc, stats = _validate(self.runtime, explainer, self.val_x, self.val_c, config)
        n = max(epoch_sums[3].item(), 1.0)
        record = {
            "epoch": epoch,
            "step": step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": epoch_sums[0].item() / n,
            "prediction_loss": epoch_sums[1].item() / n,
            "mask_loss": epoch_sums[2].item() / n,
            "mask_loss_weighted": config.lambda_mask * epoch_sums[2].item() / n,
            "val_pos_auc": auc,
            **stats,
            "collapse": describe_collapse(stats, epoch_sums[2].item() / n),
            "time_s": round(time.perf_counter() - self.started, 2),
        }
        # A NaN score or NaN weights are never kept as the best checkpoint.
        usable = math.isfinite(auc) and all(bool(torch.isfinite(p).all()) for p in self.params)
        improved = usable and (self.best["val_pos_auc"] is None or auc < self.best["val_pos_auc"])
        if improved:
            self.best = {"epoch": epoch, "val_pos_auc": auc}
        record["best"] = improved
        self.records.append(record)
        loop.log(record)
        if self.runtime.main and improved:
            explainer.training_info = {**self.info, "epoch": epoch, "val_pos_auc": auc, "global_step": step}
            # The old best's config.json goes first: a crash before the new one is written leaves
            # weights without a config (visibly incomplete; the rerun redoes this epoch), never new
            # weights under the old epoch's description.
            (self.out / CONFIG_NAME).unlink(missing_ok=True)
            explainer.save_pretrained(self.out)
        loop.write(
            f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}  val POS-AUC {auc:.2f}"
            + ("  (best)" if improved else "")
            + (f"  WARNING: {record['collapse']}" if record.get("collapse") else "")
        )

    def state_dict(self) -> dict[str, Any]:
        # The epoch's running sums, summed over the processes (the main process keeps them).
        total = self.runtime.reduce_sum(self.sums)
        self.sums = total if self.runtime.main else torch.zeros_like(total)
        epoch, step_in_epoch = self.position
        return {
            "config": self.config.to_dict(),
            "explainee": self.adapter.describe(),
            "explainee_weights_fingerprint": self.fingerprint,
            "subsets": self.subsets,
            "data_digest": self.data_digest,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "best": self.best,
            "log": self.records,
            "sums": self.sums.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.records = dict(state["best"]), list(state["log"])
        self.sums = state["sums"].clone() if self.runtime.main else torch.zeros(4, dtype=torch.float64)
        self.position = (int(state["epoch"]), int(state["step_in_epoch"]))

    def check_resume(self, saved: dict[str, Any]) -> None:
        _check_resume(saved, self.config, self.adapter, self.subsets, self.out)
        if saved.get("data_digest") != self.data_digest:
            raise ExplainersError(
                f"{self.out} was pre-trained on other images (same ids, other pixels: the dataset changed); "
                "pick another --out"
            )

    def plot(self, log_path: Path, out: Path) -> None:
        if self.records:
            plot_log(self.records, out / PLOT_NAME)


def collapse_stats(masks: torch.Tensor) -> dict[str, float]:
    """How many masks are flat (max − min < 0.01), all-zero (max < 0.01) or all-one (min > 0.99)."""
    flat_masks = masks.flatten(1)
    lo, hi = flat_masks.min(1).values, flat_masks.max(1).values
    n = max(1, masks.shape[0])
    return {
        "mask_mean": float(flat_masks.mean()) if masks.numel() else 0.0,
        "flat_masks": float(((hi - lo) < 0.01).sum()) / n,
        "zero_masks": float((hi < 0.01).sum()) / n,
        "one_masks": float((lo > 0.99).sum()) / n,
    }


def describe_collapse(stats: dict[str, float], mask_loss: float | None) -> str | None:
    """A warning when at least half of the validation masks are flat: the explainer learned nothing
    image-specific (typically λ_mask too high for the learning rate, or too few steps)."""
    if stats["flat_masks"] < 0.5:
        return None
    kind = "all-zero" if stats["zero_masks"] >= 0.5 else "all-one" if stats["one_masks"] >= 0.5 else "flat"
    stuck = ""
    if mask_loss is not None and abs(mask_loss - math.log(2)) < 0.01:
        stuck = ", mask loss stuck at ln 2"
    return (
        f"masks collapsed: {100 * stats['flat_masks']:.0f}% of the validation masks are {kind}{stuck}; "
        "lower lambda_mask or raise lr/epochs"
    )


def _validate(
    runtime: Runtime, explainer: LTEExplainer, images: torch.Tensor, classes: torch.Tensor, config: LTEConfig
) -> tuple[float, dict[str, Any]]:
    """Mean validation POS-AUC and mask-collapse figures; each process scores a contiguous shard, the
    values are gathered."""
    rank, world = runtime.rank, runtime.world
    n = len(images)
    lo, hi = rank * n // world, (rank + 1) * n // world
    scores, counts = validation_scores(explainer, images[lo:hi], classes[lo:hi], config.eval_batch_size)
    totals = runtime.reduce_sum(counts) / max(1, n)
    stats: dict[str, Any] = dict(zip(_COLLAPSE_KEYS, (round(float(v), 4) for v in totals), strict=True))
    all_scores = runtime.gather(scores.tolist())
    return float(sum(all_scores) / max(1, len(all_scores))), stats


_COLLAPSE_KEYS = ("mask_mean", "flat_masks", "zero_masks", "one_masks")


def explained_classes(explainer: LTEExplainer, classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The extra forward argument of a class-conditioned explainer network (the classes), else none."""
    return (classes,) if explainer.class_conditioned else ()
