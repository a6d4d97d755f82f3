"""Interruption, concurrency and full-disk guarantees of the training commands, with real processes.

A training command killed with SIGKILL at any point and rerun with the same arguments ends with the
weights (every safetensors tensor) and the JSONL log of an uninterrupted run with the same seed; a
second process writing the same ``--out`` is refused in one line while the first runs, and takes over
the lock a crashed run left behind; a full disk fails in one line (exit 2) and leaves no checkpoint that
looks complete; a resumed run refuses another explainee/encoder, other data or another configuration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_data_loss import SRC, cli, lock_path, one_error_line
from test_leta_pretrain import make_tiny_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")

# Fields of a log record that measure time, not training: the only ones an interrupted run may change.
TIMING = {"time_s", "elapsed_s", "images_per_s", "seconds", "train_img_per_s", "cost_s", "wall_s"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_tiny_benchmark(tmp_path_factory.mktemp("kill-bench"))


def plte_args(bench, out: Path, *extra: str) -> list[str]:
    data, enc = bench
    sets = dict(
        train_per_class=4, val_per_class=1, epochs=3, batch_size=4, checkpoint_every=1, lambda_mask=1.0,
        lr=5e-3, eval_batch_size=50, workers=0,
    )
    args = ["pretrain", "lte", "-m", enc, "-d", data, "-o", str(out), "--class", "predicted"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def leta_args(bench, out: Path, *extra: str) -> list[str]:
    data, enc = bench
    sets = dict(
        batch_size=8, centres=2, head_depth=1, radius=1, log_every=1, val_images=4, save_every=1, workers=0
    )
    args = ["pretrain", "leta", "-m", enc, "--data", data, "--out", str(out), "--max-steps", "12"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args + list(extra)


def in_process(args: list[str]) -> None:
    """The uninterrupted reference run: the same command in this process (one torch thread, like the
    subprocesses), which saves a process start per test."""
    from explainers.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--no-progress"])
    assert exit_info.value.code in (0, None)


def log_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def kill_when(args: list[str], ready, timeout: float = 120.0, sig: int = signal.SIGKILL) -> bool:
    """Start the command, send it ``sig`` as soon as ``ready()`` holds; True when it was stopped (False:
    it finished first). SIGINT (Ctrl-C) must end it with status 130 and one line."""
    proc = cli(args, wait=False)
    deadline = time.monotonic() + timeout
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(sig)
            killed = True
            break
        time.sleep(0.005)
    _, err = proc.communicate()
    if killed and sig == signal.SIGINT and proc.returncode != 0:
        lines = [ln for ln in err.splitlines() if ln.strip() and "Loading weights" not in ln]
        assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("explainers: interrupted"), err
    assert killed or proc.returncode == 0, err
    return killed


def records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys(), a
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k} differs"


# ------------------------------------------------------------------------------------------ kill and rerun
def rerun_matches_uninterrupted(args: list[str], cut: Path, full: Path, log: str, *, train_state: bool) -> None:
    """Rerun the interrupted command to its end: it exits 0, and its log, its weights (and its training
    state) equal the uninterrupted run's; no lock is left behind."""
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr
    assert records(cut / log) == records(full / log)
    assert_same_tensors(cut / "model.safetensors", full / "model.safetensors")
    if train_state:
        assert_same_tensors(cut / "train_state" / "model.safetensors", full / "train_state" / "model.safetensors")
    assert not lock_path(cut).exists()


@pytest.mark.slow
def test_pretrain_lte_killed_at_several_points_ends_as_an_uninterrupted_run(bench, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    in_process(plte_args(bench, full))
    kills = 0
    # SIGKILL mid-epoch, after the first step's checkpoint; then Ctrl-C after the first epoch's record
    # (the step ends, its state is saved, exit 130).
    kills += kill_when(plte_args(bench, cut), lambda: (cut / "train_state").is_dir())
    kills += kill_when(plte_args(bench, cut), lambda: log_lines(cut / "log.jsonl") >= 3, sig=signal.SIGINT)
    assert kills >= 1, "the runs were too fast to be killed"
    rerun_matches_uninterrupted(plte_args(bench, cut), cut, full, "log.jsonl", train_state=True)


@pytest.mark.slow
def test_pretrain_leta_killed_at_several_points_ends_as_an_uninterrupted_run(bench, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    in_process(leta_args(bench, full))
    kills = 0
    kills += kill_when(leta_args(bench, cut), lambda: log_lines(cut / "train_log.jsonl") >= 2)
    kills += kill_when(leta_args(bench, cut), lambda: log_lines(cut / "train_log.jsonl") >= 7)
    assert kills >= 1, "the runs were too fast to be killed"
    rerun_matches_uninterrupted(leta_args(bench, cut), cut, full, "train_log.jsonl", train_state=False)


def probe_args(bench, out: Path) -> list[str]:
    data, enc = bench
    return ["train-probe", "-m", enc, "--data", data, "--out", str(out), "--set", "workers=0"]


def classifier_args(bench, out: Path) -> list[str]:
    data, _ = bench
    sets = dict(epochs=4, batch_size=4, hidden_size=32, num_layers=1, mlp_size=32, threads=1, workers=0)
    return ["train-classifier", "--data", data, "--out", str(out)] + [f"--set={k}={v}" for k, v in sets.items()]


@pytest.mark.slow
def test_train_probe_killed_at_several_points_ends_as_an_uninterrupted_run(bench, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    in_process(probe_args(bench, full))
    kills = kill_when(probe_args(bench, cut), lambda: lock_path(cut).exists())  # extracting features
    kills += kill_when(probe_args(bench, cut), lambda: log_lines(cut / "log.jsonl") >= 1)  # after a fit
    assert kills >= 1, "the runs were too fast to be killed"
    assert not (cut / "config.json").exists(), "a killed run leaves no complete-looking probe"
    rerun_matches_uninterrupted(probe_args(bench, cut), cut, full, "log.jsonl", train_state=True)


@pytest.mark.slow
def test_train_classifier_killed_at_several_points_ends_as_an_uninterrupted_run(bench, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    in_process(classifier_args(bench, full))
    kills = kill_when(classifier_args(bench, cut), lambda: (cut / "train_state").is_dir())  # after epoch 1
    kills += kill_when(classifier_args(bench, cut), lambda: log_lines(cut / "log.jsonl") >= 3)
    assert kills >= 1, "the runs were too fast to be killed"
    assert not (cut / "model.safetensors").exists(), "a killed run leaves no complete-looking model"
    rerun_matches_uninterrupted(classifier_args(bench, cut), cut, full, "log.jsonl", train_state=False)
    history = json.loads((cut / "training.json").read_text())["history"]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in history] == records(full / "log.jsonl")


# ------------------------------------------------------------------------------------------ two processes
HOLDER = """
import sys, time
from explainers.io.lock import OutputLock
OutputLock(sys.argv[1]).acquire()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_pretrain_on_the_same_out_is_refused_and_a_crashed_runs_lock_is_taken_over(bench, tmp_path):
    out = tmp_path / "plte"
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        proc = cli(plte_args(bench, out))
        assert proc.returncode == 2
        line = one_error_line(proc.stderr)
        assert "being written by another run" in line and f"pid {holder.pid}" in line, line
        assert not (out / "train_state").exists() and not (out / "model.safetensors").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists(), "the crashed holder left its lock"
    in_process(plte_args(bench, out, "--set", "epochs=1"))  # the stale lock is taken over
    assert (out / "model.safetensors").is_file() and not lock_path(out).exists()


def test_every_training_command_takes_the_output_lock(bench, tmp_path):
    """In-process: each trainer refuses an --out whose lock another live process holds."""
    from explainers.errors import OutputError
    from explainers.learned.leta import build_run_config, pretrain
    from explainers.learned.lte.config import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte
    from explainers.training.classifier import ClassifierTrainConfig, train_classifier
    from explainers.training.probe import ProbeConfig, train_probe_to

    data, enc = bench
    env = {**os.environ, "PYTHONPATH": SRC}
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        runs = [
            lambda: pretrain_lte(enc, data, out, LTEConfig(epochs=1, class_mode="predicted"), progress=False),
            lambda: pretrain(enc, data, out, build_run_config({"max_steps": 1}), progress=False),
            lambda: train_probe_to(enc, data, out, ProbeConfig(), progress=False),
            lambda: train_classifier(data, out, ClassifierTrainConfig(epochs=1), progress=False),
        ]
        for run in runs:
            with pytest.raises(OutputError, match="being written by another run"):
                run()
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


# ------------------------------------------------------------------------------------------ full disk
@pytest.mark.slow
def test_pretrain_on_a_full_disk_fails_in_one_line_and_leaves_no_complete_looking_checkpoint(bench, tmp_path):
    from explainers.learned.lte import LTEExplainer

    out = tmp_path / "plte"
    # The explainer's weights are ~140 kB: every checkpoint write fails, the small files pass.
    proc = cli(plte_args(bench, out), fsize=60_000)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "File too large" in line, line
    assert not (out / "config.json").exists(), "no checkpoint may look complete"
    assert not (out / "train_state").exists()
    assert not lock_path(out).exists()
    leftovers = [p.name for p in out.rglob("*") if "tmp" in p.name]
    assert not leftovers, leftovers
    # Space again: the rerun trains from scratch to a loadable explainer.
    in_process(plte_args(bench, out, "--set", "epochs=1"))
    LTEExplainer.read_metadata(out)


# ------------------------------------------------------------------------------------------ resume checks
def _interrupted_plte(bench, out: Path, **changes):
    from explainers.learned.lte.config import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte

    data, enc = bench
    cfg = dict(train_per_class=4, val_per_class=1, epochs=2, batch_size=4, class_mode="predicted", workers=0)

    class Stop(Exception):
        pass

    def stop(step: int) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        pretrain_lte(enc, data, out, LTEConfig(**cfg, checkpoint_every=1), progress=False, on_step=stop)
    return cfg


def test_resumed_pretrain_lte_refuses_another_explainee_data_or_config(bench, tmp_path):
    from conftest import build_hf_model
    from explainers.errors import ExplainersError
    from explainers.learned.lte.config import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte

    data, enc = bench
    out = tmp_path / "plte"
    cfg = _interrupted_plte(bench, out)
    other = tmp_path / "other-encoder"
    build_hf_model(num_labels=4, seed=7).save_pretrained(other)  # same architecture, other weights
    with pytest.raises(ExplainersError, match="other weights"):
        pretrain_lte(str(other), data, out, LTEConfig(**cfg), progress=False)
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    generate_synthetic(
        tmp_path / "scenes2", SyntheticConfig(image_size=32, train_size=32, val_size=8, test_size=8, seed=5),
        progress=False,
    )
    with pytest.raises(ExplainersError, match="other images"):
        pretrain_lte(enc, f"synthetic:{tmp_path / 'scenes2'}", out, LTEConfig(**cfg), progress=False)
    with pytest.raises(ExplainersError, match="different configuration"):
        pretrain_lte(enc, data, out, LTEConfig(**{**cfg, "lr": 1e-4}), progress=False)
    # Unchanged settings resume.
    assert pretrain_lte(enc, data, out, LTEConfig(**cfg), progress=False).resumed


def test_resumed_pretrain_leta_refuses_another_encoder_data_or_config(bench, tmp_path):
    from conftest import build_hf_model
    from explainers.errors import ExplainersError
    from explainers.learned.leta import build_run_config, pretrain

    data, enc = bench
    out = tmp_path / "leta"
    settings = {"batch_size": 8, "centres": 2, "head_depth": 1, "radius": 1, "max_steps": 4, "val_images": 0}
    pretrain(enc, data, out, build_run_config(settings), progress=False, stop_after=2)
    other = tmp_path / "other-encoder"
    build_hf_model(num_labels=4, seed=7).save_pretrained(other)
    with pytest.raises(ExplainersError, match="interrupted LETA run"):
        pretrain(str(other), data, out, build_run_config(settings), progress=False)
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    generate_synthetic(
        tmp_path / "scenes2", SyntheticConfig(image_size=32, train_size=32, val_size=8, test_size=8, seed=5),
        progress=False,
    )
    with pytest.raises(ExplainersError, match="data"):
        pretrain(enc, f"synthetic:{tmp_path / 'scenes2'}", out, build_run_config(settings), progress=False)
    with pytest.raises(ExplainersError, match="different configuration"):
        pretrain(enc, data, out, build_run_config({**settings, "lr": 1e-5}), progress=False)
    pretrain(enc, data, out, build_run_config(settings), progress=False)
    assert (out / "model.safetensors").is_file()
