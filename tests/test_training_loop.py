"""The shared training pieces: the config mechanism and the Runtime (devices, collectives, precision)."""

from __future__ import annotations

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
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
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
