"""pLTE pre-training (SPEC §3.4): train the explainer on a class-uniform subset, select on validation POS-AUC.

Output directory layout::

    OUT/config.json, OUT/model.safetensors   the best epoch so far (lowest validation POS-AUC), in
                                             ``LTEExplainer.save_pretrained`` format
    OUT/train_state/                         the last state: model.safetensors (weights) + state.pt
                                             (optimizer, scheduler, epoch/step, best, log, RNG; tensors and
                                             plain values only, read back with ``weights_only=True``)
    OUT/log.jsonl                            one JSON record per epoch (loss terms, LR, validation POS-AUC)
    OUT/training.png                         loss and validation AUC per epoch
    OUT/subsets.json                         the ids of the training and validation images

Rerunning with the same arguments continues an interrupted run from its last saved state (end of an epoch,
or every ``checkpoint_every`` steps) and ends with the same weights as an uninterrupted run: the data order
of an epoch and the RNG of a step are functions of (seed, epoch, step), not of the run's history.

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
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explainers.data import ImageDataset, InputGeometry, iter_batches, open_dataset, parse_dataset_spec
from explainers.errors import ExplainersError
from explainers.io.atomic import write_text_atomic
from explainers.learned.lte.config import LTEConfig
from explainers.learned.lte.explainer import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LTEExplainer,
    check_compatible,
)
from explainers.learned.lte.loss import loss_classes, lte_loss
from explainers.learned.lte.scoring import perturbation_auc
from explainers.models import ExplaineeAdapter, load_explainee

log = logging.getLogger(__name__)

STATE_DIR = "train_state"
STATE_NAME = "state.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "training.png"
SUBSETS_NAME = "subsets.json"
STATE_FORMAT = "explainers-lte-train-state"

# Settings that do not change the trained weights: a resumed run may differ in these.
_FREE_KEYS = {
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


# ----------------------------------------------------------------------------------------------- data
def select_subsets(
    labels: list[int], train_per_class: int, val_per_class: int, seed: int
) -> tuple[list[int], list[int]]:
    """Class-uniform, disjoint train/validation index lists (sorted), drawn with ``seed``."""
    if any(label < 0 for label in labels):
        raise ExplainersError(
            "pLTE pre-training needs labelled images for class-uniform subsets; "
            "this dataset has images without a label"
        )
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    need = train_per_class + val_per_class
    short = {c: len(v) for c, v in sorted(by_class.items()) if len(v) < need}
    if short:
        raise ExplainersError(
            f"train_per_class + val_per_class = {need} images per class are needed, but class(es) "
            + ", ".join(f"{c} ({n})" for c, n in short.items())
            + " have fewer; lower them in the config"
        )
    train: list[int] = []
    val: list[int] = []
    for c in sorted(by_class):
        idx = by_class[c]
        perm = torch.randperm(len(idx), generator=g).tolist()
        train += [idx[j] for j in perm[:train_per_class]]
        val += [idx[j] for j in perm[train_per_class:need]]
    return sorted(train), sorted(val)


def _dataset_labels(dataset: ImageDataset) -> list[int]:
    labels = getattr(dataset, "labels", None)
    if labels is not None and not callable(labels):
        return [int(v) for v in labels]
    return [dataset[i].label for i in range(len(dataset))]  # generic (loads every image once)


def _load_subset(
    dataset: ImageDataset, indices: list[int], size: tuple[int, int] | InputGeometry
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, labels, ids = [], [], []
    for batch in iter_batches(dataset, 64, size, indices):
        images.append(batch.images)
        labels.append(batch.labels)
        ids += batch.ids
    return torch.cat(images), torch.cat(labels), ids


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
) -> torch.Tensor:
    """Per-image POS-AUC of the explainer's masks (chunked)."""
    adapter = explainer.adapter
    out = []
    was_training = explainer.net.training
    explainer.net.eval()
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].to(explainer.device)
            mask = explainer.masks(x)[1]
            out.append(
                perturbation_auc(
                    adapter, x, mask, classes[i : i + chunk].to(x.device), "pos", max_batch=chunk
                )
            )
    finally:
        explainer.net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def _write_log(out: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(out / LOG_NAME, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


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
def _save_state(out: Path, net: torch.nn.Module, payload: dict[str, Any]) -> None:
    """Write the training state to a fresh folder, then swap it in: a crash leaves the old or the new one."""
    from safetensors.torch import save_file

    tmp, final, old = out / (STATE_DIR + ".tmp"), out / STATE_DIR, out / (STATE_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS_NAME)
    )
    torch.save(payload, tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _find_state(out: Path) -> Path | None:
    for name in (STATE_DIR, STATE_DIR + ".old"):  # .old: a crash between the two renames of _save_state
        if (out / name / STATE_NAME).is_file() and (out / name / WEIGHTS_NAME).is_file():
            return out / name
    return None


def _load_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    weights = load_file(str(folder / WEIGHTS_NAME))
    payload = torch.load(folder / STATE_NAME, map_location="cpu", weights_only=True)
    if payload.get("format") != STATE_FORMAT:
        raise ExplainersError(f"{folder} is not an LTE training state")
    return weights, payload


def _check_resume(
    payload: dict[str, Any], config: LTEConfig, adapter: ExplaineeAdapter, subsets: dict[str, Any], out: Path
) -> None:
    saved = payload["config"]
    now = config.to_dict()
    diffs = sorted(k for k in now if k not in _FREE_KEYS and saved.get(k) != now[k])
    if diffs:
        shown = ", ".join(f"{k}: {saved.get(k)!r} → {now[k]!r}" for k in diffs)
        raise ExplainersError(
            f"{out} holds a pre-training run with a different configuration ({shown}); rerun with the same "
            "settings to resume it, or pick another --out"
        )
    check_compatible(payload["explainee"], adapter, str(out))
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
    from accelerate import Accelerator

    config = config or LTEConfig()
    out = Path(out_dir).expanduser()
    # CPU-only machines: accelerate runs several processes only when told cpu=True (gloo backend).
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if config.batch_size % world:
        raise ExplainersError(
            f"batch_size {config.batch_size} must be divisible by the number of processes ({world})"
        )

    adapter = load_explainee(explainee)
    adapter.to(accelerator.device)
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
    train_x, train_y, train_ids = _load_subset(dataset, train_idx, adapter.input_geometry)
    val_x, val_y, val_ids = _load_subset(dataset, val_idx, adapter.input_geometry)
    subsets = {"train": train_ids, "val": val_ids}
    train_c = _predict_classes(adapter, train_x, train_y, config.class_mode, config.eval_batch_size)
    val_c = _predict_classes(adapter, val_x, val_y, config.class_mode, config.eval_batch_size)

    torch.manual_seed(config.seed)
    explainer = LTEExplainer(adapter, config)
    net = explainer.net
    params = explainer.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_idx) / world) * world / config.batch_size)
    warmup, total = schedule_lengths(config, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, config.schedule)
    )

    info = {
        "dataset": data if isinstance(data, str) else getattr(data, "name", type(data).__name__),
        "split": getattr(dataset, "split", config.split),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "processes": world,
        "seed": config.seed,
        "lr_warmup_steps": warmup,
        "lr_total_steps": total,
        "command": command,
    }
    # --- resume
    epoch, step_in_epoch, global_step = 0, 0, 0
    best: dict[str, Any] = {"epoch": None, "val_pos_auc": None}
    records: list[dict[str, Any]] = []
    sums = torch.zeros(4, dtype=torch.float64)  # total, prediction, mask, images (this epoch so far)
    state_dir = _find_state(out) if out.exists() else None
    resumed = state_dir is not None
    if state_dir is not None:
        weights, payload = _load_state(state_dir)
        _check_resume(payload, config, adapter, subsets, out)
        net.load_state_dict(weights)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        epoch, step_in_epoch, global_step = payload["epoch"], payload["step_in_epoch"], payload["global_step"]
        best, records = payload["best"], list(payload["log"])
        if main:  # the saved sums are already summed over processes
            sums = payload["sums"].clone()
        if payload.get("world_size") != world:
            log.warning("resuming a run made with %s process(es) on %s", payload.get("world_size"), world)
        if main:
            log.info("resuming %s at epoch %d, step %d", out, epoch + 1, step_in_epoch)
    elif (out / CONFIG_NAME).exists():
        raise ExplainersError(
            f"{out} already holds an explainer checkpoint but no training state to resume; pick another --out"
        )

    def payload_now(ep: int, step: int, s: torch.Tensor) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": config.to_dict(),
            "explainee": adapter.describe(),
            "subsets": subsets,
            "epoch": ep,
            "step_in_epoch": step,
            "global_step": global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best,
            "log": records,
            "sums": s,
            "rng": torch.get_rng_state(),
            "world_size": world,
        }

    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / SUBSETS_NAME, json.dumps(subsets) + "\n")

    ddp_net, optimizer = accelerator.prepare(net, optimizer)
    device = accelerator.device

    if not resumed and config.validate_initial:
        auc = _validate(accelerator, explainer, val_x, val_c, config)
        records.append({"epoch": 0, "step": 0, "val_pos_auc": auc, "loss": None})

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=global_step,
        disable=not (main and progress),
        desc="pLTE pre-training",
        unit="step",
    )
    started = time.perf_counter()
    with frozen(adapter.model):
        while epoch < config.epochs:
            net.train()
            order = _epoch_order(len(train_idx), config.seed, epoch, world)
            batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            for s in range(step_in_epoch, len(batches)):
                chunk = batches[s]
                local = torch.tensor(chunk[rank::world])
                torch.manual_seed(_step_seed(config.seed, global_step, rank))
                x, c = train_x[local].to(device), train_c[local].to(device)
                patch, mask = ddp_net(adapter.normalize(x))
                terms = lte_loss(adapter, x, patch, mask, c, config)
                # DDP averages over processes: scale so the result is the mean over the global batch.
                accelerator.backward(terms.total.sum() * (world / len(chunk)))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                sums += (
                    torch.stack(
                        [
                            terms.total.detach().sum(),
                            terms.prediction.detach().sum(),
                            terms.mask.detach().sum(),
                            torch.tensor(float(len(local))),
                        ]
                    )
                    .double()
                    .cpu()
                )
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{terms.total.detach().mean().item():.3f}")
                last_of_epoch = s + 1 == len(batches)
                if (
                    config.checkpoint_every
                    and global_step % config.checkpoint_every == 0
                    and not last_of_epoch
                ):
                    total_sums = _reduce(accelerator, sums)
                    if main:
                        _save_state(out, net, payload_now(epoch, s + 1, total_sums))
                    sums = total_sums if main else torch.zeros_like(sums)
                    accelerator.wait_for_everyone()
                if on_step is not None:
                    on_step(global_step)
            # --- end of epoch: validate, log, keep the best, save the state
            epoch_sums = _reduce(accelerator, sums)
            sums = torch.zeros_like(sums)
            step_in_epoch = 0
            epoch += 1
            auc = _validate(accelerator, explainer, val_x, val_c, config)
            n = max(epoch_sums[3].item(), 1.0)
            record = {
                "epoch": epoch,
                "step": global_step,
                "lr": optimizer.param_groups[0]["lr"],
                "loss": epoch_sums[0].item() / n,
                "prediction_loss": epoch_sums[1].item() / n,
                "mask_loss": epoch_sums[2].item() / n,
                "mask_loss_weighted": config.lambda_mask * epoch_sums[2].item() / n,
                "val_pos_auc": auc,
                "time_s": round(time.perf_counter() - started, 2),
            }
            improved = best["val_pos_auc"] is None or auc < best["val_pos_auc"]
            if improved:
                best = {"epoch": epoch, "val_pos_auc": auc}
            record["best"] = improved
            records.append(record)
            if main:
                if improved:
                    explainer.training_info = {
                        **info,
                        "epoch": epoch,
                        "val_pos_auc": auc,
                        "global_step": global_step,
                    }
                    explainer.save_pretrained(out)
                _save_state(out, net, payload_now(epoch, 0, torch.zeros_like(sums)))
                _write_log(out, records)
                try:
                    plot_log(records, out / PLOT_NAME)
                except Exception as exc:  # a plot must never stop a training run
                    log.warning("could not draw %s: %s", out / PLOT_NAME, exc)
                bar.write(
                    f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}  val POS-AUC {auc:.2f}"
                    + ("  (best)" if improved else "")
                )
            accelerator.wait_for_everyone()
    bar.close()
    if main and not (out / PLOT_NAME).exists() and records:
        with contextlib.suppress(Exception):
            plot_log(records, out / PLOT_NAME)
    return PretrainResult(
        out_dir=out,
        best_epoch=best["epoch"],
        best_val_auc=best["val_pos_auc"],
        epochs_done=epoch,
        log=records,
        resumed=resumed,
        last=explainer,
        main_process=main,
    )


def _reduce(accelerator: Any, sums: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return sums.clone()
    return accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()


def _validate(
    accelerator: Any, explainer: LTEExplainer, images: torch.Tensor, classes: torch.Tensor, config: LTEConfig
) -> float:
    """Mean validation POS-AUC; each process scores a contiguous shard, the values are gathered."""
    rank, world = accelerator.process_index, accelerator.num_processes
    n = len(images)
    lo, hi = rank * n // world, (rank + 1) * n // world
    scores = validation_scores(explainer, images[lo:hi], classes[lo:hi], config.eval_batch_size).tolist()
    if world > 1:
        from accelerate.utils import gather_object

        scores = gather_object(scores)
    return float(sum(scores) / max(1, len(scores)))
