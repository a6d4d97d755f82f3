"""LETA pre-training (docs/learned-explainers.md): task-agnostic, on unlabelled images, one process or many (DDP).

Each step draws a global batch of images and K window centres per image, computes the frozen encoder's
targets for all 2·B·K masked copies under ``no_grad`` and regresses ψ⁺_c, ψ⁻_c on them.

Every random choice is a function of ``(seed, epoch)`` (image order) or ``(seed, step)`` (centres,
dropout), never of the process's history, so a run resumed from a checkpoint continues exactly as an
uninterrupted one, and N processes see the same global batch split N ways (their gradients are averaged
by DDP, which equals the single-process step on the whole batch).

Output directory::

    OUT/config.json, OUT/model.safetensors   the explainer (``LETAExplainer.from_pretrained(OUT)``)
    OUT/train_log.jsonl                      one JSON object per logged step / validation
    OUT/loss.png                             training and validation loss
    OUT/train_state/                         resumable state (weights, optimiser, step): the shared
                                             training-state folder (explainers.training.checkpoint)
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explainers.data import open_dataset, parse_dataset_spec
from explainers.data.base import collate
from explainers.data.loader import BatchLoader
from explainers.data.resize import InputGeometry
from explainers.errors import ExplainersError
from explainers.learned.leta.config import RunConfig
from explainers.learned.leta.explainer import LETAExplainer
from explainers.learned.leta.objective import compute_targets, gather_centres, leta_loss, sample_centres
from explainers.models import load_explainee
from explainers.models.base import ExplaineeAdapter
from explainers.models.signature import check_same_encoder, encoder_signature, require_vit
from explainers.training.checkpoint import (
    output_lock,
    pixel_digest,
)
from explainers.training.loop import Learner, Runtime, TrainingLoop

LOG_FILE = "train_log.jsonl"
PLOT_FILE = "loss.png"
STATE_FORMAT = "explainers-leta-train-state-2"  # 2: the shared training loop's state

# Training keys that may change between an interrupted run and its resumption without changing results.
_RESUME_FREE_KEYS = {
    "device",
    "workers",
    "log_every",
    "save_every",
    "target_batch",
    "cache_images",
    "cache_limit_mb",
}


# ------------------------------------------------------------------------------------------------------------
# Processes: one :class:`~explainers.training.loop.Runtime` (accelerate) per run; it joins the process group
# when launched by torchrun / accelerate launch, pins each process to its own GPU and runs every collective
# on that device.


# ------------------------------------------------------------------------------------------------------------
# Data


class _ImageSource:
    """Training images at the encoder's size; decoded once into a uint8 cache when it fits in memory
    (with ``workers`` decoding processes)."""

    def __init__(
        self,
        dataset,
        geometry: InputGeometry,
        cache: bool,
        limit_mb: int,
        progress: bool,
        workers: int | None = None,
    ) -> None:
        self.dataset, self.geometry = dataset, geometry  # the encoder's preprocessing (resize, crop)
        size = geometry.size
        self.cache: torch.Tensor | None = None
        need_mb = len(dataset) * 3 * size[0] * size[1] / 2**20
        if cache and need_mb <= limit_mb:
            batches = [list(range(i, min(i + 256, len(dataset)))) for i in range(0, len(dataset), 256)]
            self.cache = torch.empty(len(dataset), 3, *size, dtype=torch.uint8)
            pos = 0
            with tqdm(total=len(dataset), desc="loading images", unit="img", disable=not progress) as bar:
                for batch in BatchLoader(dataset, batches, geometry, workers=workers):
                    n = batch.images.shape[0]
                    self.cache[pos : pos + n] = (batch.images * 255).round().to(torch.uint8)
                    pos += n
                    bar.update(n)

    def get(self, indices: list[int]) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[indices].float().div_(255)
        return collate([self.dataset[i] for i in indices], self.geometry).images


def _open(data: str, split: str | None):
    kind, _ = parse_dataset_spec(data)
    if split is None and kind == "synthetic":
        split = "train"  # the synthetic reader defaults to the test split
    return open_dataset(data, split=split)


# ------------------------------------------------------------------------------------------------------------
# Logs and plot


def plot_log(log_path: Path, out_path: Path) -> None:
    """Training loss (per logged step) and validation loss (per epoch) against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.is_file():
        return  # stopped before the first logged step: nothing to draw
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE(ψ⁺) + MSE(ψ⁻)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)


# ------------------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def evaluate(
    explainer: LETAExplainer,
    images: torch.Tensor,
    centres: torch.Tensor,
    chunk: int = 1024,
    batch_size: int = 64,
) -> dict[str, float]:
    """Loss and R² (1 − MSE / variance of the targets) of ψ⁺ and ψ⁻ at fixed ``centres`` (N×K)."""
    net, enc = explainer.network, explainer.encoder
    was_training = net.training
    net.eval()
    windows = explainer.windows()
    preds_p, preds_n, tgts_p, tgts_n = [], [], [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(explainer.device)
        c = centres[i : i + batch_size].to(explainer.device)
        t_p, t_n = compute_targets(enc, enc.normalize(x), c, windows, chunk)
        p, n = net(x)
        preds_p.append(gather_centres(p, c).float())
        preds_n.append(gather_centres(n, c).float())
        tgts_p.append(t_p)
        tgts_n.append(t_n)
    net.train(was_training)
    out = {}
    for name, pred, tgt in (("pos", preds_p, tgts_p), ("neg", preds_n, tgts_n)):
        pr, tg = torch.cat(pred).flatten(0, 1), torch.cat(tgt).flatten(0, 1)
        mse = float(((pr - tg) ** 2).mean())
        var = float(((tg - tg.mean(0)) ** 2).mean())
        out[f"val_loss_{name}"] = mse
        out[f"val_r2_{name}"] = 1.0 - mse / max(var, 1e-12)
    out["val_loss"] = out["val_loss_pos"] + out["val_loss_neg"]
    return out


# ------------------------------------------------------------------------------------------------------------
# The loop


def lr_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up over ``warmup``·total steps, then cosine decay to 0 (computed from the step alone,
    so resuming needs no scheduler state)."""
    warm = round(warmup * total)
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@contextmanager
def _threads_per_process(runtime: Runtime):
    # N CPU processes on one machine: split the cores instead of oversubscribing them N times over.
    previous = torch.get_num_threads()
    if runtime.world > 1 and runtime.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    encoder: ExplaineeAdapter | str,
    data: str,
    out: str | Path,
    run: RunConfig | None = None,
    *,
    encoder_spec: str | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
    command: str | None = None,
) -> Path:
    """Pre-train a LETA explainer for ``encoder`` on the images of ``data`` and save it to ``out``.

    resume: continue from ``out/train_state`` when it holds a run with the same configuration (an
        interrupted run ends with the same weights as an uninterrupted one); ``False`` starts over.
    stop_after: stop (resumably) after this many steps in this call — for time-sliced jobs and tests.
    Runs under ``torchrun`` / ``accelerate launch`` as DDP (gloo on CPU, NCCL on GPU) when
    ``WORLD_SIZE`` > 1; only rank 0 writes files.
    """
    run = run or RunConfig()
    cfg = run.training
    if isinstance(encoder, (str, Path)):
        encoder_spec = encoder_spec or str(encoder)
        encoder = load_explainee(encoder)
    require_vit(encoder, "LETA pre-training")
    runtime = Runtime(cfg.device, cfg.precision)
    if cfg.batch_size % runtime.world:
        raise ExplainersError(f"batch_size {cfg.batch_size} must be divisible by the {runtime.world} processes")
    out = Path(out).expanduser()
    with _threads_per_process(runtime), output_lock(out, runtime.main):
        return _pretrain(
            encoder,
            data,
            out,
            run,
            runtime,
            encoder_spec=encoder_spec,
            resume=resume,
            progress=progress,
            stop_after=stop_after,
            command=command,
        )


def _pretrain(
    encoder,
    data,
    out: Path,
    run: RunConfig,
    runtime: Runtime,
    *,
    encoder_spec,
    resume,
    progress,
    stop_after,
    command,
) -> Path:
    cfg = run.training
    device = runtime.device
    main = runtime.main
    dataset = _open(data, cfg.split)
    n_images = len(dataset)
    steps_per_epoch = n_images // cfg.batch_size
    if steps_per_epoch == 0:
        raise ExplainersError(f"{data} has {n_images} images, fewer than one batch of {cfg.batch_size}")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    signature = encoder_signature(encoder, encoder_spec)
    run_record = {
        "run": run.to_dict(),
        "data": data,
        "data_images": n_images,
        "data_digest": _data_digest(dataset, encoder.input_geometry),
        "world_size": runtime.world,
    }

    encoder.to(device)
    explainer = LETAExplainer.build(encoder, run.model, seed=cfg.seed)
    explainer.encoder_info = signature
    network = explainer.network.to(device)
    source = _ImageSource(
        dataset, encoder.input_geometry, cfg.cache_images, cfg.cache_limit_mb, progress and main, cfg.workers
    )
    val = _validation_set(data, cfg, encoder, progress) if main else None
    learner = _LETALearner(
        explainer, encoder, network, source, val, cfg, run_record, signature, out, runtime, steps_per_epoch, total
    )
    loop = TrainingLoop(
        runtime,
        out,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        log_name=LOG_FILE,
        checkpoint_every=cfg.save_every,
        progress=progress,
        resume=resume,
        stop_after=stop_after,
    )
    loop.run(learner)
    if loop.step < total:  # stopped by stop_after: resumable
        return out
    if main:
        summary = {
            "data": data,
            "split": cfg.split,
            "steps": total,
            "epochs": total / steps_per_epoch,
            "images_seen": total * cfg.batch_size,
            "masked_targets": total * cfg.batch_size * cfg.centres * 2,
            "world_size": runtime.world,
            "device": str(device),
            "wall_s": round(loop.elapsed_s, 1),
            "config": asdict(cfg),
            "final_train": learner.last_train,
            "final_val": learner.last_val,
            "command": command,
        }
        (out / "config.json").unlink(missing_ok=True)  # written last: it marks a complete explainer
        explainer.save_pretrained(out, training=summary)
        plot_log(out / LOG_FILE, out / PLOT_FILE)
    runtime.barrier()
    return out


class _LETALearner(Learner):
    """LETA's part of the shared loop: a step regresses ψ⁺/ψ⁻ on the frozen encoder's targets for a
    global batch split over the processes; the epoch is validated on fixed images and centres (main
    process). Every random choice is a function of (seed, epoch) or (seed, step), so the learner's
    state is only the running loss sums between two log lines."""

    state_format = STATE_FORMAT
    name = "LETA pre-training"

    def __init__(
        self, explainer, encoder, network, source, val, cfg, run_record, signature, out, runtime, steps_per_epoch, total
    ) -> None:
        self.explainer, self.encoder, self.model, self.source, self.val = explainer, encoder, network, source, val
        self.cfg, self.run_record, self.signature, self.out = cfg, run_record, signature, out
        self.runtime, self.steps_per_epoch, self.total = runtime, steps_per_epoch, total
        self.optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.windows = explainer.windows()
        self.target_dtype = torch.bfloat16 if cfg.target_dtype == "bfloat16" else None
        self.train_net = runtime.prepare(network)
        self.sums = torch.zeros(3, dtype=torch.float64)
        self.count = 0
        self.window_start = time.perf_counter()
        self.last_train: dict[str, float] = {}
        self.last_val: dict[str, float] = {}

    def start(self, loop: TrainingLoop, resumed: bool) -> None:
        self.model.train()
        self.window_start = time.perf_counter()

    def train_step(self, loop: TrainingLoop, step: int, epoch: int, index: int) -> None:
        cfg, runtime, encoder = self.cfg, self.runtime, self.encoder
        n_images = len(self.source.dataset)
        order = torch.randperm(n_images, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batch = order[index * cfg.batch_size : (index + 1) * cfg.batch_size].tolist()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        centres = sample_centres(cfg.batch_size, cfg.centres, encoder.num_patches, gen)
        local = slice(runtime.rank, None, runtime.world)
        images = self.source.get(batch[local]).to(loop.device)
        centres = centres[local].to(loop.device)
        torch.manual_seed(cfg.seed + step)  # dropout, if the backbone has any

        def loss_of(micro: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            x, c = micro
            t_pos, t_neg = compute_targets(
                encoder, encoder.normalize(x), c, self.windows, cfg.target_batch, dtype=self.target_dtype
            )
            with loop.autocast():
                psi_pos, psi_neg = self.train_net(x)
            loss, loss_pos, loss_neg = leta_loss(psi_pos.float(), psi_neg.float(), c, t_pos, t_neg)
            share = len(x) / len(images)  # micro-batch means, weighted to the mean over the whole share
            return loss * share, torch.stack([loss.detach(), loss_pos.detach(), loss_neg.detach()]) * share

        lr = lr_at(step, self.total, cfg.lr, cfg.warmup)  # from the step alone: no scheduler state
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        parts = [p for p in torch.arange(len(images)).tensor_split(cfg.grad_accum) if len(p)]
        micro = [(images[p], centres[p]) for p in parts] if len(parts) > 1 else [(images, centres)]
        values = loop.gradient_step(self.train_net, micro, loss_of).cpu()
        loop.optimizer_step(float(values[0]), list(self.model.parameters()), cfg.grad_clip)
        self.sums += values
        self.count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == self.total:
            mean = runtime.reduce_mean(self.sums / self.count)
            rate = self.count * cfg.batch_size / max(time.perf_counter() - self.window_start, 1e-9)
            self.last_train = {"loss": float(mean[0]), "loss_pos": float(mean[1]), "loss_neg": float(mean[2])}
            loop.log(
                {
                    "kind": "train",
                    "step": done,
                    "epoch": done / self.steps_per_epoch,
                    **self.last_train,
                    "lr": lr,
                    "images_per_s": round(rate, 2),
                    "elapsed_s": round(loop.elapsed_s + time.perf_counter() - self.window_start, 2),
                }
            )
            loop.set_postfix(loss=f"{mean[0]:.4f}")
            self.sums.zero_()
            self.count, self.window_start = 0, time.perf_counter()

    def end_of_epoch(self, loop: TrainingLoop, epoch: int, step: int) -> None:
        if self.val is not None:
            self.last_val = evaluate(self.explainer, *self.val, chunk=self.cfg.target_batch)
            self.model.train()
            loop.log({"kind": "val", "step": step, "epoch": step / self.steps_per_epoch, **self.last_val})

    def state_dict(self) -> dict:
        # The running sums since the last log line, summed over the processes (the main one keeps them).
        total = self.runtime.reduce_sum(self.sums)
        self.sums = total if self.runtime.main else torch.zeros_like(total)
        return {
            "format": STATE_FORMAT,
            "encoder": self.signature,
            **self.run_record,
            "sums": self.sums.clone(),
            "count": self.count,
            "last_train": self.last_train,
            "last_val": self.last_val,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums = state["sums"].clone() if self.runtime.main else torch.zeros(3, dtype=torch.float64)
        self.count = int(state["count"])
        self.last_train, self.last_val = dict(state["last_train"]), dict(state["last_val"])

    def check_resume(self, saved: dict) -> None:
        _check_resumable(saved, self.run_record, self.signature, self.encoder, self.out)

    def plot(self, log_path: Path, out: Path) -> None:
        plot_log(log_path, out / PLOT_FILE)


def _data_digest(dataset, geometry: InputGeometry, sample: int = 16) -> str:
    """SHA-256 of the ids and 8-bit pixels of the first ``sample`` images and of the image count: enough
    for a resumed run to notice a dataset regenerated or replaced under the same path, without
    decoding all of it."""
    first = [dataset[i] for i in range(min(sample, len(dataset)))]
    batch = collate(first, geometry)
    return pixel_digest(batch.images) + f"/{len(dataset)}/" + ",".join(map(str, batch.ids))[:2000]


def _validation_set(data: str, cfg, encoder: ExplaineeAdapter, progress: bool):
    """Fixed images and centres for the per-epoch validation (None when there is no such split)."""
    if not cfg.val_images or not cfg.val_split:
        return None
    try:
        dataset = _open(data, cfg.val_split)
    except ExplainersError:
        return None
    n = min(cfg.val_images, len(dataset))
    source = _ImageSource(
        torch.utils.data.Subset(dataset, range(n)), encoder.input_geometry, True, 1 << 30, False
    )
    gen = torch.Generator().manual_seed(cfg.seed + 424_242)
    centres = sample_centres(n, cfg.centres, encoder.num_patches, gen)
    return source.cache.float().div_(255), centres  # type: ignore[union-attr]


def _check_resumable(
    saved: dict, run_record: dict, signature: dict, encoder: ExplaineeAdapter, out: Path
) -> None:
    check_same_encoder(
        saved["encoder"],
        encoder,
        "interrupted LETA run",
        out,
        hint="pass --no-resume to start over, or choose another --out",
    )
    old, new = saved["run"], run_record["run"]
    diffs = [k for k in new["model"] if old["model"].get(k) != new["model"][k]]
    diffs += [
        k
        for k in new["training"]
        if k not in _RESUME_FREE_KEYS and old["training"].get(k) != new["training"][k]
    ]
    if any(saved.get(k, run_record[k]) != run_record[k] for k in ("data", "data_images", "data_digest")):
        diffs.append("data")
    if diffs:
        raise ExplainersError(
            f"{out} holds an interrupted LETA run with a different configuration (differs in: "
            f"{', '.join(diffs)}); pass --no-resume to start over, or choose another --out"
        )
