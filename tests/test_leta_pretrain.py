"""LETA pre-training: outputs, exact resumption, refusals, and DDP with two CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_hf_model
from explainers import ExplainersError
from explainers.cli import main
from explainers.learned.leta import LETAExplainer, build_run_config, pretrain

TINY = {"batch_size": 8, "centres": 2, "head_depth": 2, "radius": 1, "log_every": 1, "val_images": 8}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def make_tiny_benchmark(root: Path) -> tuple[str, str]:
    """A 32×32 synthetic dataset (32 train, 8 val, 8 test images) and a tiny ViT encoder directory."""
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    data = root / "scenes"
    if not data.exists():
        generate_synthetic(
            data, SyntheticConfig(image_size=32, train_size=32, val_size=8, test_size=8), progress=False
        )
    enc = root / "encoder"
    if not enc.exists():
        build_hf_model(num_labels=4).save_pretrained(enc)
    return f"synthetic:{data}", str(enc)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_tiny_benchmark(tmp_path_factory.mktemp("leta-bench"))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def initial_weights(enc: str, run) -> dict[str, torch.Tensor]:
    """The weights pre-training starts from (built with the run's seed)."""
    from explainers.models import load_explainee

    explainer = LETAExplainer.build(load_explainee(enc), run.model, seed=run.training.seed)
    return {k: v.detach().clone() for k, v in explainer.network.state_dict().items()}


def assert_trained(trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> None:
    assert trained.keys() == initial.keys()
    changed = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert any(k.startswith("head_pos.") for k in changed) and any(k.startswith("head_neg.") for k in changed)
    assert any(k.startswith("backbones.") for k in changed), "the backbone did not train"


@pytest.mark.trainer
def test_pretraining_lowers_the_validation_loss(tmp_path, bench):
    """Three epochs on 32 images: the validation loss (fixed images and centres) falls every epoch, from
    the untrained network's, and the saved weights are the trained ones."""
    from explainers.learned.leta.pretrain import _validation_set, evaluate
    from explainers.models import load_explainee

    data, enc = bench
    run = build_run_config(max_steps=12, val_split="val", lr=3e-3, **TINY)
    pretrain(enc, data, tmp_path / "leta", run, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "leta" / "train_log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if r["kind"] == "val"]
    encoder = load_explainee(enc)
    untrained = LETAExplainer.build(encoder, run.model, seed=run.training.seed)
    before = evaluate(untrained, *_validation_set(data, run.training, encoder, False))["val_loss"]
    assert len(val) == 3 and before > val[0] > val[1] > val[2], (before, val)
    assert val[2] < 0.8 * before
    assert_trained(weights(tmp_path / "leta"), initial_weights(enc, run))


@pytest.mark.trainer
def test_cli_pretrain_writes_explainer_log_and_plot(tmp_path, bench, capsys):
    data, enc = bench
    out = tmp_path / "leta"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "pretrain",
                "leta",
                "--encoder",
                enc,
                "--data",
                data,
                "--out",
                str(out),
                "--max-steps",
                "4",
                "--batch-size",
                "8",
                "-k",
                "2",
                "--head-depth",
                "2",
                "--val-split",
                "val",
                "--no-progress",
            ]
        )
    assert exc.value.code in (0, None), capsys.readouterr().err
    assert {"config.json", "model.safetensors", "train_log.jsonl", "loss.png", "train_state"} <= {
        p.name for p in out.iterdir()
    }
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4] or [r["step"] for r in train][-1] == 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert any(r["kind"] == "val" and r["val_loss"] == r["val_loss"] for r in rows)  # not NaN
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["steps"] == 4 and cfg["training"]["command"].startswith("explainers pretrain leta")
    assert cfg["training"]["masked_targets"] == 4 * 8 * 2 * 2
    explainer = LETAExplainer.from_pretrained(out)  # the encoder spec recorded at pre-training
    assert explainer(torch.rand(1, 3, 32, 32)).shape == (1, 32, 32)
    assert_trained(weights(out), initial_weights(enc, build_run_config(cfg["config"])))


@pytest.mark.trainer
def test_resumed_run_equals_uninterrupted_run(tmp_path, bench):
    data, enc = bench
    run = build_run_config(max_steps=5, save_every=100, **TINY)
    pretrain(enc, data, tmp_path / "straight", run, progress=False)
    part = tmp_path / "resumed"
    pretrain(enc, data, part, run, progress=False, stop_after=2)
    assert not (part / "model.safetensors").exists() and (part / "train_state" / "state.pt").exists()
    pretrain(enc, data, part, run, progress=False)
    a, b = weights(tmp_path / "straight"), weights(part)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert_trained(b, initial_weights(enc, run))
    steps = [json.loads(x)["step"] for x in (part / "train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)  # no step logged twice out of order
    assert steps.count(2) == 1


def test_resume_with_another_config_is_refused(tmp_path, bench):
    data, enc = bench
    pretrain(enc, data, tmp_path / "run", build_run_config(max_steps=3, **TINY), progress=False, stop_after=1)
    with pytest.raises(ExplainersError, match=r"different configuration \(differs in: lr\).*--no-resume"):
        pretrain(enc, data, tmp_path / "run", build_run_config(max_steps=3, lr=0.5, **TINY), progress=False)
    # --no-resume starts over instead.
    pretrain(
        enc,
        data,
        tmp_path / "run",
        build_run_config(max_steps=2, lr=0.5, **TINY),
        progress=False,
        resume=False,
    )
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_config_file_and_unknown_keys(tmp_path, bench):
    from explainers.learned.leta.config import read_config_file

    file = tmp_path / "leta.json"
    file.write_text(json.dumps({"model": {"radius": 3}, "training": {"lr": 0.01}, "centres": 5}))
    run = build_run_config(read_config_file(file), centres=6)
    assert run.model.radius == 3 and run.training.lr == 0.01 and run.training.centres == 6
    with pytest.raises(ExplainersError, match="unknown LETA config keys: radious"):
        build_run_config({"radious": 3})


@pytest.mark.slow
@pytest.mark.trainer
def test_two_cpu_processes_match_one(tmp_path, bench):
    """torchrun with 2 processes (DDP, gloo): the same global batches split in two give the same weights."""
    data, enc = bench
    args = [
        "--encoder",
        enc,
        "--data",
        data,
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "-k",
        "2",
        "--head-depth",
        "2",
        "--radius",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "explainers",
        "pretrain",
        "leta",
        "--out",
        str(tmp_path / "ddp"),
        *args,
    ]
    # Own session: on a timeout the whole group (torchrun and its workers) is killed, not just torchrun.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["training"]["world_size"] == 2
    # The single-process reference runs in this process (one interpreter start instead of two).
    run = build_run_config(max_steps=3, batch_size=8, centres=2, head_depth=2, radius=1)
    pretrain(enc, data, tmp_path / "one", run, progress=False)
    logs = [(tmp_path / d / "train_log.jsonl").read_text().splitlines() for d in ("ddp", "one")]
    losses = [[json.loads(line)["loss"] for line in log] for log in logs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    # Not bit-equal: parameters whose true gradient is zero (key biases cannot change a softmax) get
    # float-rounding gradients that Adam normalises into steps of up to lr; 5e-4 is below one such step.
    for key in a:
        assert torch.allclose(a[key], b[key], atol=5e-4), key
    assert_trained(b, initial_weights(enc, run))
