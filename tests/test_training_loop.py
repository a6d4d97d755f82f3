"""The shared training pieces: the config mechanism, the Runtime (devices, collectives, precision) and the
one training loop (exact resume, gradient accumulation)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from explainers.errors import ExplainersError
from explainers.learned import LTEConfig
from explainers.learned.leta import build_run_config
from explainers.training.config import ConfigError, gather_settings, parse_sets
from explainers.training.loop import NonFiniteLossError, Runtime, check_finite


def test_json_and_toml_files_with_sets_on_top(tmp_path):
    (tmp_path / "a.toml").write_text('lambda_mask = 30\nlr = 2e-3\nschedule = "linear"\n')
    (tmp_path / "a.json").write_text('{"lambda_mask": 30, "lr": 0.002}')
    for name in ("a.toml", "a.json"):
        settings = gather_settings(tmp_path / name, ["lr=1e-3", "schedule=reference", "split=null"])
        cfg = LTEConfig.from_dict(settings)
        assert (cfg.lambda_mask, cfg.lr, cfg.split) == (30.0, 1e-3, None)
    assert cfg.schedule == "reference"
    assert parse_sets(["epochs=3", "precision=bf16"]) == {"epochs": 3, "precision": "bf16"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["epochs"])
    (tmp_path / "bad.toml").write_text("lr = ")
    with pytest.raises(ConfigError, match="cannot parse"):
        gather_settings(tmp_path / "bad.toml", [])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lambda_mask": "inf"}, "lambda_mask must be a finite number"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"epochs": 2.5}, "epochs must be a"),
        ({"epochs": "three"}, "epochs must be"),
        ({"validate_initial": "maybe"}, "true or false"),
        ({"schedule": 3}, "schedule must be a string"),
        ({"lambda": 3}, r"unknown LTE config key\(s\): lambda; valid keys: activation, "),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
        ({"device": "tpu"}, "unknown device 'tpu'; use auto, cpu, cuda"),
    ],
)
def test_bad_values_are_refused_with_one_line(settings, message):
    with pytest.raises(ExplainersError, match=message):
        LTEConfig.from_dict(settings)


def test_leta_uses_the_same_checks():
    with pytest.raises(ExplainersError, match="lr must be a finite number"):
        build_run_config({"lr": "nan"})
    with pytest.raises(ExplainersError, match="unknown LETA config keys: radious"):
        build_run_config({"radious": 2})
    assert build_run_config({"model": {"radius": 3}}, lr=0.01).training.lr == 0.01


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(ExplainersError, match="cannot use CUDA"):
        LTEConfig(device="cuda")


def test_non_finite_loss_stops():
    check_finite(1.5, 3)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NonFiniteLossError, match="step 7"):
            check_finite(bad, 7)


class _FakeAccelerator:
    """Two processes on a 'meta' device: records the device every collective's input is on."""

    device = torch.device("meta")
    num_processes = 2
    process_index = 0
    is_main_process = True

    def __init__(self) -> None:
        self.seen: list[torch.device] = []

    def reduce(self, tensor, reduction="sum"):
        self.seen.append(tensor.device)
        return tensor * 2


def test_collectives_run_on_the_process_device():
    """NCCL refuses CPU tensors: what a trainer passes from the CPU is moved to the process's device
    before the all-reduce (the LETA loss-averaging bug reduced a CPU tensor)."""
    runtime = Runtime.__new__(Runtime)
    runtime.accelerator = _FakeAccelerator()
    with pytest.raises(NotImplementedError):  # the result comes back to the CPU: meta has no data
        runtime.reduce_sum(torch.ones(3))
    assert runtime.accelerator.seen == [torch.device("meta")]


def test_autocast_and_fp32_master_weights():
    runtime = Runtime("cpu", "bf16")
    layer = torch.nn.Linear(4, 2)
    with runtime.autocast():
        out = layer(torch.ones(1, 4))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    runtime.backward(out.float().sum())
    runtime.step(optimizer, list(layer.parameters()), grad_clip=1.0)
    assert layer.weight.dtype == torch.float32 and not torch.equal(before, layer.weight)
    assert layer.weight.grad is None  # zeroed for the next step
    with Runtime("cpu", "fp32").autocast():
        assert layer(torch.ones(1, 4)).dtype == torch.float32


@pytest.mark.parametrize("name, lam", [("plte-vit-b16.toml", 50.0), ("plte-vit-s16.toml", 30.0)])
def test_shipped_config_files_hold_the_reference_settings(name, lam):
    from pathlib import Path

    cfg = LTEConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / name)
    assert (cfg.lambda_mask, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed) == (lam, 2e-3, 0.01, 32, 42)
    assert (cfg.train_per_class, cfg.val_per_class, cfg.warmup_fraction) == (1, 1, 0.2)


def test_probe_settings_use_the_same_checks():
    from explainers.training.config import build
    from explainers.training.probe import ProbeConfig

    assert build(ProbeConfig, {"max_images": "8", "val_split": ""}, "probe").max_images == 8
    with pytest.raises(ConfigError, match="unknown probe config key.*valid keys: task, split"):
        build(ProbeConfig, {"max_imgs": 8}, "probe")


# ------------------------------------------------------------------------------------------------ the loop
class ToyLearner:
    """A tiny regression on the shared loop with every kind of state a real learner has: AdamW and a
    LambdaLR schedule, dropout drawn from the global RNG (saved by the loop) and a batch order drawn from
    the learner's own generator (saved by the learner)."""

    def __new__(cls):
        from explainers.training.loop import Learner

        class _Toy(Learner):
            state_format = "toy-state"

            def __init__(self) -> None:
                torch.manual_seed(0)
                self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
                self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.1)
                self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0 - s / 24)
                g = torch.Generator().manual_seed(1)
                self.x = torch.randn(24, 4, generator=g)
                self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
                self.generator = torch.Generator().manual_seed(2)
                self.order = torch.arange(24)
                self.losses: list[float] = []

            def train_step(self, loop, step, epoch, index):
                if index == 0:
                    self.order = torch.randperm(24, generator=self.generator)
                idx = self.order[index * 6 : (index + 1) * 6]

                def loss_of(micro):
                    loss = torch.nn.functional.mse_loss(self.model(self.x[micro]), self.y[micro])
                    return loss * len(micro) / len(idx), loss.detach().reshape(1) * len(micro) / len(idx)

                figures = loop.gradient_step(self.model, [idx[:3], idx[3:]], loss_of)
                loop.optimizer_step(float(figures[0]), list(self.model.parameters()), grad_clip=1.0)
                loop.log({"step": step + 1, "loss": float(figures[0])})

            def state_dict(self):
                return {"generator": self.generator.get_state(), "order": self.order}

            def load_state_dict(self, state):
                self.generator.set_state(state["generator"])
                self.order = state["order"]

        return _Toy()


def _toy_run(out, stop_at=None, graceful=False):
    from explainers.training.loop import TrainingLoop

    class Stop(Exception):
        pass

    def on_step(step):
        if step == stop_at:
            if graceful:
                loop._stop_requested = True  # what the first Ctrl-C does
            else:
                raise Stop

    learner = ToyLearner()
    loop = TrainingLoop(Runtime("cpu"), out, total_steps=12, steps_per_epoch=4, checkpoint_every=1, progress=False,
                        on_step=on_step)
    try:
        loop.run(learner)
    except (Stop, KeyboardInterrupt):
        return None
    return learner, loop


@pytest.mark.trainer
def test_the_loop_resumes_exactly_from_a_stop_at_any_step(tmp_path):
    from safetensors.torch import load_file

    full = _toy_run(tmp_path / "full")
    assert full is not None
    _, loop = full
    losses = [r["loss"] for r in loop.records()]
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3]), f"the toy regression learns: {losses}"
    expected = load_file(str(tmp_path / "full" / "train_state" / "model.safetensors"))
    for stop in (1, 4, 6, 11):
        for graceful in (False, True):
            out = tmp_path / f"cut{stop}{graceful}"
            assert _toy_run(out, stop_at=stop, graceful=graceful) is None
            resumed = _toy_run(out)
            assert resumed is not None and resumed[1].resumed
            assert resumed[1].records() == loop.records(), (stop, graceful)
            got = load_file(str(out / "train_state" / "model.safetensors"))
            assert all(torch.equal(got[k], expected[k]) for k in expected), (stop, graceful)


def test_gradient_step_accumulates_micro_batches_to_the_whole_batch_gradient(tmp_path):
    """The loop's accumulation itself, on gradients (AdamW is nearly scale-invariant, so comparing
    trained weights would not catch a wrong micro-batch weighting)."""
    from explainers.training.loop import TrainingLoop

    learner = ToyLearner()
    learner.model.eval()  # no dropout: the two passes see the same network
    loop = TrainingLoop(Runtime("cpu"), tmp_path, total_steps=1, steps_per_epoch=1, progress=False)
    x, y = learner.x, learner.y

    def loss_of(idx):
        loss = torch.nn.functional.mse_loss(learner.model(x[idx]), y[idx])
        return loss * len(idx) / len(x), loss.detach().reshape(1)

    loop.gradient_step(learner.model, [torch.arange(24)], loss_of)
    whole = [p.grad.clone() for p in learner.model.parameters()]
    learner.model.zero_grad(set_to_none=True)
    loop.gradient_step(learner.model, [torch.arange(0, 10), torch.arange(10, 24)], loss_of)
    for a, p in zip(whole, learner.model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


@pytest.mark.trainer
def test_classifier_gradient_accumulation_equals_the_whole_batch(tmp_path):
    from safetensors.torch import load_file

    from explainers.data.synthetic import generate_synthetic
    from explainers.training.classifier import build_vit, train_classifier
    from test_train_classifier import TINY_DATA, TINY_MODEL

    data = generate_synthetic(tmp_path / "data", TINY_DATA, progress=False)
    cfg = TINY_MODEL.from_dict({**TINY_MODEL.to_dict(), "epochs": 1})
    train_classifier(data, tmp_path / "whole", cfg, progress=False)
    train_classifier(data, tmp_path / "split", cfg.from_dict({**cfg.to_dict(), "grad_accum": 2}), progress=False)
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    split = load_file(tmp_path / "split" / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(whole[key], split[key], rtol=1e-3, atol=2e-4)  # AdamW amplifies rounding
    initial = build_vit(cfg, 32, ["a", "b", "c", "d"], [0.5] * 3, [0.5] * 3).state_dict()
    assert any(not torch.equal(split[k], initial[k]) for k in split if k in initial), "it trained"


@pytest.mark.trainer
def test_leta_gradient_accumulation_equals_the_whole_batch(tmp_path):
    from safetensors.torch import load_file

    from explainers.learned.leta import pretrain
    from test_leta_pretrain import make_tiny_benchmark

    data, enc = make_tiny_benchmark(tmp_path)
    settings = {"batch_size": 8, "centres": 2, "head_depth": 1, "radius": 1, "max_steps": 3, "val_images": 0}
    pretrain(enc, data, tmp_path / "whole", build_run_config(settings), progress=False)
    pretrain(enc, data, tmp_path / "split", build_run_config({**settings, "grad_accum": 2}), progress=False)
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    split = load_file(tmp_path / "split" / "model.safetensors")
    for key in whole:
        torch.testing.assert_close(whole[key], split[key], rtol=1e-4, atol=1e-5)
    from explainers.learned.leta import LETAExplainer
    from explainers.models import load_explainee

    initial = LETAExplainer.build(load_explainee(enc), build_run_config(settings).model, seed=0).network.state_dict()
    assert any(not torch.equal(split[k], initial[k]) for k in split), "it trained"


@pytest.mark.slow
@pytest.mark.trainer
def test_classifier_on_two_cpu_processes_matches_one(tmp_path):
    """torchrun with 2 processes (DDP, gloo): each takes half of every batch; the averaged gradients are
    the whole batch's, so the trained weights match a single process's (up to float rounding)."""
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    from explainers.data.synthetic import generate_synthetic
    from explainers.training.classifier import build_vit, train_classifier
    from test_train_classifier import TINY_DATA, TINY_MODEL

    data = generate_synthetic(tmp_path / "data", TINY_DATA, progress=False)
    settings = {**TINY_MODEL.to_dict(), "epochs": 1, "threads": 1}
    sets = [f"--set={k}={json.dumps(v)}" for k, v in settings.items() if v is not None]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "explainers", "train-classifier", "--data", f"synthetic:{data}", "--out", str(tmp_path / "ddp"),
           "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    cfg = TINY_MODEL.from_dict(settings)
    train_classifier(data, tmp_path / "one", cfg, progress=False)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=2e-4)  # AdamW amplifies rounding
    logs = [[json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("ddp", "one")]
    assert logs[0][0]["loss"] == pytest.approx(logs[1][0]["loss"], rel=1e-5)
    initial = build_vit(cfg, 32, ["a", "b", "c", "d"], [0.5] * 3, [0.5] * 3).state_dict()
    assert any(not torch.equal(a[k], initial[k]) for k in a if k in initial), "it trained"
