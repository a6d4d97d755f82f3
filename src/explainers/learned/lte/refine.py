"""LTE per-instance refinement (docs/learned-explainers.md), many images at once.

Every image starts from the pre-trained weights with a fresh AdamW. The loss pulls the mask towards the
image's refinement class (``targets``); before each step the current mask is scored (POS accuracy-AUC, or
NEG with ``select="neg"``) for the selection class (``select_targets``, default the refinement class: the
reference refines towards its checkpoint's class and selects on the ground truth); the best mask so far is
kept and the
image stops once its best passes the threshold (POS below 6.0 / NEG above 89). ``steps`` counts scored
masks: step 0 is the pLTE mask itself, and no optimiser step is taken after the last scoring because its
result could never be selected.

Parallel mode gives each image its own copy of the trainable parameters, stacked along a new first axis,
runs the explainer through ``torch.func.functional_call`` under ``vmap`` and updates all copies with one
batched AdamW (the exact ``torch.optim.AdamW`` arithmetic, elementwise, hence per image). Images that stop
are dropped from the stacks, so finished images cost nothing. The sequential mode is the plain one-by-one
loop with ``torch.optim.AdamW``; both give the same masks and selected steps.

Memory: each image refined in parallel holds its own fp32 copy of every trainable parameter, its gradient
and AdamW's two moments (16 bytes per trainable parameter), plus the activations kept for the backward
pass through the explainer and through the explainee on the masked image. :func:`bytes_per_image`
estimates that; the images refined at once are capped so that they fit ``memory_budget`` (default: a
fraction of what the device has free), and a larger batch is refined in chunks, with one warning. Every
image is refined independently, so chunking does not change any result.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from explainers.devices import format_bytes, free_memory, parse_bytes
from explainers.errors import ExplainersError
from explainers.learned.lte.config import SELECTIONS
from explainers.learned.lte.loss import lte_loss
from explainers.learned.lte.scoring import perturbation_auc
from explainers.metrics.perturbation import PERTURBATION_STEPS, perturbation_curves, trapezoid_auc
from explainers.models.base import Targets, resolve_targets

#: scorer(images B×3×H×W in [0,1], masks B×H×W, classes B, clean_logits B×C) → scores B (float64, CPU)
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BETAS = (0.9, 0.999)
_EPS = 1e-8

log = logging.getLogger(__name__)

#: Share of the device's free memory the default budget takes: the rest is left for the scorer's
#: perturbed-image forwards, the allocator's fragmentation and other tensors of the process.
DEFAULT_BUDGET_FRACTION = 0.8
#: fp32 copies per trainable parameter and refined image: the parameter, its gradient, two AdamW moments.
PARAMETER_COPIES = 4
#: Saved activations per transformer block and token, in units of the embedding width D, for one forward
#: with gradients (LayerNorm in/out ×2, q/k/v, attention output, projection, two residuals, MLP hidden
#: ×4 before and after the GELU, MLP output), and per head and token pair (scores, softmax output, the
#: scaled copy). An estimate: benchmarks/vit_b_smoke.py measures the saved activations of ViT-B/16 and
#: DeiT-S next to it, benchmarks/gpu_smoke.py the peak GPU memory.
_TOKEN_FLOATS_PER_D = 20
_ATTENTION_FLOATS_PER_PAIR = 3

_warned: set[tuple[int, int, int]] = set()


@dataclass
class MemoryEstimate:
    """Estimated bytes one image needs while it is refined in parallel mode (fp32)."""

    trainable_parameters: int
    parameter_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.activation_bytes


def bytes_per_image(explainer) -> MemoryEstimate:
    """Estimate the memory one refined image takes (see the module docstring).

    Parameters: ``PARAMETER_COPIES × 4`` bytes per trainable parameter. Activations: two forwards with
    gradients — the explainer network and the explainee on the masked image — of ``num_blocks`` blocks
    with T tokens of width D and H heads: ``2 · blocks · (20·T·D + 3·H·T²)`` floats.
    """
    adapter = explainer.adapter
    trainable = sum(p.numel() for p in explainer.trainable_parameters())
    tokens = adapter.num_patches + adapter.num_prefix_tokens
    per_block = (
        _TOKEN_FLOATS_PER_D * tokens * adapter.embed_dim + _ATTENTION_FLOATS_PER_PAIR * adapter.num_heads * tokens**2
    )
    activations = 2 * adapter.num_blocks * per_block * 4
    return MemoryEstimate(trainable, PARAMETER_COPIES * 4 * trainable, int(activations))


def resolve_memory_budget(budget: str | int | float | None, device: torch.device) -> int | None:
    """Bytes refinement may use: as given (``"4GiB"``, bytes), else ``DEFAULT_BUDGET_FRACTION`` of what
    ``device`` has free; None when neither is known (no limit)."""
    if budget is not None:
        return parse_bytes(budget)
    free = free_memory(device)
    return None if free is None else int(free * DEFAULT_BUDGET_FRACTION)


def images_per_chunk(explainer, batch_size: int, num_images: int, budget: int | None) -> int:
    """How many images to refine at once: ``batch_size``, fewer when they would not fit ``budget``."""
    if budget is None:
        return batch_size
    estimate = bytes_per_image(explainer)
    fit = budget // max(estimate.total, 1)
    chunk = max(1, min(batch_size, fit))
    wanted = min(batch_size, num_images)
    key = (id(explainer), chunk, wanted)
    if chunk < wanted and key not in _warned:
        _warned.add(key)
        if fit < 1:
            log.warning(
                "LTE refinement: one image needs about %s (%s trainable parameters + activations) but the "
                "memory budget is %s; refining one image at a time anyway (set memory_budget to change it)",
                format_bytes(estimate.total),
                f"{estimate.trainable_parameters:,}",
                format_bytes(budget),
            )
        else:
            log.warning(
                "LTE refinement: %d images at once need about %s (%s per image) but the memory budget is %s; "
                "refining %d at a time (same results; set memory_budget to change it)",
                wanted,
                format_bytes(wanted * estimate.total),
                format_bytes(estimate.total),
                format_bytes(budget),
                chunk,
            )
    return chunk


@dataclass
class RefineResult:
    """maps: selected masks B×H×W in [0,1]; selected_step: B (0 = the pLTE mask); selected_score: B."""

    maps: torch.Tensor
    selected_step: torch.Tensor
    selected_score: torch.Tensor
    #: Scored masks per image (steps actually run, for cost accounting).
    scored_steps: torch.Tensor


@dataclass
class RefineOptions:
    steps: int
    lr: float
    weight_decay: float
    select: str
    stop_below: float
    stop_above: float


class _Selection:
    """Best mask so far per image, and which images are finished."""

    def __init__(
        self, n: int, image_size: tuple[int, int], opts: RefineOptions, device: torch.device
    ) -> None:
        self.lower_is_better = opts.select != "neg"
        self.threshold = opts.stop_below if self.lower_is_better else opts.stop_above
        self.score = torch.full((n,), math.inf if self.lower_is_better else -math.inf, dtype=torch.float64)
        self.step = torch.zeros(n, dtype=torch.long)
        self.scored = torch.zeros(n, dtype=torch.long)
        self.maps = torch.zeros(n, *image_size, device=device)

    def update(
        self, step: int, index: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """Record the scores of images ``index`` at ``step``; return which of them are finished."""
        scores = scores.to(torch.float64).cpu()
        best = self.score[index]
        # Strict comparison: on a tie the earlier (less refined) mask stays selected.
        better = scores < best if self.lower_is_better else scores > best
        if better.any():
            rows = index[better]
            self.score[rows] = scores[better]
            self.step[rows] = step
            self.maps[rows.to(self.maps.device)] = masks[better.to(masks.device)].to(self.maps.dtype)
        self.scored[index] += 1
        best = self.score[index]
        return best < self.threshold if self.lower_is_better else best > self.threshold


def _options(config, steps, lr, select, stop_below, stop_above) -> RefineOptions:
    opts = RefineOptions(
        steps=int(config.refine_steps if steps is None else steps),
        lr=float(config.refine_lr if lr is None else lr),
        weight_decay=float(config.refine_weight_decay),
        select=str(config.refine_select if select is None else select),
        stop_below=float(config.refine_stop_below if stop_below is None else stop_below),
        stop_above=float(config.refine_stop_above if stop_above is None else stop_above),
    )
    if opts.steps < 1:
        raise ExplainersError(f"steps must be at least 1 (step 0 is the pLTE mask), got {opts.steps}")
    if opts.select not in SELECTIONS:
        raise ExplainersError(f"select must be one of {', '.join(SELECTIONS)}, got {opts.select!r}")
    if opts.lr < 0:
        raise ExplainersError(f"lr must not be negative, got {opts.lr}")
    return opts


def default_scorer(adapter, order: str, max_batch: int) -> Scorer:
    if order == "pos+deletion":
        return pos_deletion_scorer(adapter, max_batch)

    def score(
        images: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        return perturbation_auc(
            adapter, images, masks, classes, order=order, max_batch=max_batch, clean_logits=clean
        )

    return score


def pos_deletion_scorer(adapter, max_batch: int) -> Scorer:
    """Mean of the POS accuracy AUC and the deletion probability AUC (both lower is better), from one
    perturbation curve. A single image's POS-AUC moves in steps of 5 (one more or one fewer correct
    point), so most refinement steps tie with the pLTE mask and are never selected; the probability of
    the class along the same curve breaks those ties."""
    x = torch.arange(PERTURBATION_STEPS, dtype=torch.float64) / PERTURBATION_STEPS

    def score(
        images: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor, clean: torch.Tensor
    ) -> torch.Tensor:
        correct, prob = perturbation_curves(
            adapter, images, masks.detach(), classes, order="pos", max_batch=max_batch, clean_logits=clean
        )
        both = trapezoid_auc(torch.stack([correct.double(), prob.double()]), x.numpy())
        return both.mean(dim=0).cpu()

    return score


def refine_images(
    explainer,
    images: torch.Tensor,
    targets: Targets = None,
    *,
    select_targets: Targets = None,
    steps: int | None = None,
    lr: float | None = None,
    select: str | None = None,
    stop_below: float | None = None,
    stop_above: float | None = None,
    batch_size: int = 16,
    parallel: bool = True,
    scorer: Scorer | None = None,
    memory_budget: str | int | float | None = None,
    clean_logits: torch.Tensor | None = None,
) -> RefineResult:
    """Refine ``explainer`` (an :class:`LTEExplainer`) on each image; see the module docstring.

    ``memory_budget`` (bytes or e.g. ``"4GiB"``; default ``config.memory_budget``, else a fraction of the
    device's free memory) caps how many of the ``batch_size`` images are refined at once in parallel mode.
    targets: the class each image is refined towards (None: the predicted class). select_targets: the
    class the steps are scored on for selection (None: the same as ``targets``). clean_logits: the
    explainee's logits on ``images`` when the caller has them already (saves that forward).
    """
    adapter, config = explainer.adapter, explainer.config
    opts = _options(config, steps, lr, select, stop_below, stop_above)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ExplainersError(f"expected images B×3×H×W in [0,1], got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ExplainersError(f"batch_size must be at least 1, got {batch_size}")
    images = adapter.resize(images.to(explainer.device, torch.float32))
    if clean_logits is not None:
        if tuple(clean_logits.shape) != (images.shape[0], adapter.num_classes):
            raise ExplainersError(
                f"clean_logits must be {images.shape[0]}×{adapter.num_classes}, got {tuple(clean_logits.shape)}"
            )
        logits = clean_logits.detach().to(images.device, torch.float32)
    else:
        with torch.no_grad():  # the clean logits are also the p = 0 point of every score
            logits = adapter.predict(images).float()
    classes = resolve_targets(targets, logits).to(images.device)
    select = classes if select_targets is None else resolve_targets(select_targets, logits).to(images.device)
    scorer = scorer or default_scorer(adapter, opts.select, config.eval_batch_size)
    selection = _Selection(images.shape[0], adapter.image_size, opts, images.device)
    run = _refine_parallel if parallel else _refine_sequential
    if parallel:
        budget = resolve_memory_budget(
            memory_budget if memory_budget is not None else getattr(config, "memory_budget", None), images.device
        )
        batch_size = images_per_chunk(explainer, batch_size, images.shape[0], budget)
    for start in range(0, images.shape[0], batch_size):
        index = torch.arange(start, min(start + batch_size, images.shape[0]))
        run(explainer, images, classes, select, logits, index, opts, scorer, selection)
    return RefineResult(
        maps=selection.maps,
        selected_step=selection.step,
        selected_score=selection.score,
        scored_steps=selection.scored,
    )


def _refine_sequential(explainer, images, classes, select, logits, index, opts, scorer, selection) -> None:
    """The reference loop: one image at a time, its own module copy and ``torch.optim.AdamW``."""
    adapter, config = explainer.adapter, explainer.config
    for i in index.tolist():
        net = copy.deepcopy(explainer.net).eval()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=opts.lr, betas=_BETAS, eps=_EPS, weight_decay=opts.weight_decay)
        x, c, clean, row = images[i : i + 1], classes[i : i + 1], logits[i : i + 1], torch.tensor([i])
        s = select[i : i + 1]
        pixel = adapter.normalize(x)
        extra = (c,) if explainer.class_conditioned else ()
        with net.eager_attention():  # same attention arithmetic as the parallel path
            for step in range(opts.steps):
                with torch.enable_grad():
                    patch, mask = net(pixel, *extra)
                done = selection.update(step, row, scorer(x, mask.detach(), s, clean), mask.detach())
                if bool(done[0]) or step == opts.steps - 1:
                    break
                with torch.enable_grad():
                    loss = lte_loss(adapter, x, patch, mask, c, config).total.sum()
                    grads = torch.autograd.grad(loss, params)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                opt.step()


def _refine_parallel(explainer, images, classes, select, logits, index, opts, scorer, selection) -> None:
    """Per-image parameters stacked on a new first axis; ``vmap`` over ``functional_call``."""
    adapter, config, net = explainer.adapter, explainer.config, explainer.net
    n = len(index)
    names = [name for name, p in net.named_parameters() if p.requires_grad]
    shared = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}
    shared.update({name: b for name, b in net.named_buffers()})
    params = {
        name: p.detach().unsqueeze(0).repeat(n, *([1] * p.dim()))
        for name, p in net.named_parameters()
        if p.requires_grad
    }
    exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
    exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}

    conditioned = explainer.class_conditioned

    def one(
        p: dict[str, torch.Tensor], x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        args = (x[None], c[None]) if conditioned else (x[None],)
        patch, mask = functional_call(net, (p, shared), args)
        return patch[0], mask[0]

    batched = vmap(one)
    active = index.clone()
    dev = images.device
    was_training = net.training
    net.eval()
    try:
        with net.eager_attention():
            for step in range(opts.steps):
                rows = active.to(dev)
                x, c = images[rows], classes[rows]
                for v in params.values():
                    v.requires_grad_(True)
                with torch.enable_grad():
                    patch, mask = batched(params, adapter.normalize(x), c)
                done = selection.update(
                    step, active, scorer(x, mask.detach(), select[rows], logits[rows]), mask.detach()
                )
                keep = ~done
                if step == opts.steps - 1 or not keep.any():
                    break
                kd = keep.to(dev)
                with torch.enable_grad():
                    # Sum, not mean: image i's loss depends only on its own parameter copy, so the gradient
                    # of the sum is each image's own gradient — what the one-by-one loop computes.
                    loss = lte_loss(adapter, x[kd], patch[kd], mask[kd], c[kd], config).total.sum()
                    grads = torch.autograd.grad(loss, [params[k] for k in names])
                with torch.no_grad():
                    for k, g in zip(names, grads, strict=True):
                        params[k] = params[k].detach()[kd]
                        exp_avg[k] = exp_avg[k][kd]
                        exp_avg_sq[k] = exp_avg_sq[k][kd]
                        _adamw_(
                            params[k], g[kd], exp_avg[k], exp_avg_sq[k], step + 1, opts.lr, opts.weight_decay
                        )
                active = active[keep]
    finally:
        net.train(was_training)


def _adamw_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    weight_decay: float,
) -> None:
    """One AdamW update in place, the same arithmetic as ``torch.optim.AdamW`` (decoupled weight decay)."""
    beta1, beta2 = _BETAS
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(_EPS)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
