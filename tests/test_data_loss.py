"""Data-loss guarantees, tested with real processes: a full disk, SIGKILL at several points, Ctrl-C,
two runs on one output, a partial mask file cut at any byte. A file under its final name is always
complete and intact; a failed run says so in one line and exits 2."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import explainers
from evalkit import save_tiny_vit
from explainers.io import MaskFile, MaskFileError, MaskFileWriter, partial_path

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(explainers.__file__).resolve().parents[1])  # the package under test, for the subprocesses
N_IMAGES = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss")
    vit = save_tiny_vit(root / "vit", image_size=32, patch_size=8)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (36, 32, 3), dtype=np.uint8)).save(images / f"im{i:02d}.png")
    return {"vit": str(vit), "data": f"folder:{images}", "root": root}


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def cli(args, *, fsize: int | None = None, wait: bool = True):
    """Run ``python -m explainers ARGS --no-progress`` in a fresh process (``fsize``: largest file it may
    write, in bytes — the ``ulimit -f`` way to fill a disk; Python ignores SIGXFSZ, so writes fail with
    EFBIG like on a full disk)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("EXPLAINERS_DEBUG", None)

    def limit() -> None:
        # Ctrl-C as in a terminal: a suite started as a background job (`cmd &`, nohup) has SIGINT ignored,
        # and children inherit that, so without this the Ctrl-C tests would send a signal nobody hears.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-m", "explainers", *args, "--no-progress"]
    if not wait:
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.Popen(cmd, env=env, preexec_fn=limit, **pipes)
    return subprocess.run(cmd, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=300)


def explain_args(setup, out, method="integrated-gradients", batch="1"):
    args = ["explain", "--method", method, "--explainee", setup["vit"], "--data", setup["data"]]
    args += ["--out", str(out), "--batch-size", batch]
    # 200 steps: about 0.1 s an image, so that a run lasts long enough to be interrupted mid-way
    return args + (["--option", "steps=200"] if method == "integrated-gradients" else [])


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("explainers: error: "), stderr
    return lines[0]


def contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, dict(f.attrs)


def assert_same_maps(a, b):
    (da, _), (db, _) = contents(a), contents(b)
    assert da.keys() == db.keys()
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["root"] / "reference.h5"
    proc = cli(explain_args(setup, out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.slow
def test_explain_on_a_full_disk_fails_in_one_line_and_leaves_nothing_final(setup, reference, tmp_path):
    out = tmp_path / "maps.h5"
    proc = cli(explain_args(setup, out), fsize=30_000)  # the full file is ~60 kB: the disk fills half-way
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert "cannot write" in line and "File too large" in line
    assert not out.exists(), "a failed write must leave no file under the final name"
    assert not lock_path(out).exists(), "the lock is released on the way out"
    # Space again: the rerun resumes what was committed and ends with the uninterrupted file.
    proc = cli(explain_args(setup, out))
    assert proc.returncode == 0, proc.stderr
    with MaskFile(out) as mf:
        assert len(mf) == N_IMAGES
    assert_same_maps(out, reference)


@pytest.mark.slow
def test_evaluate_on_a_full_disk_keeps_the_previous_report(setup, reference, tmp_path):
    report = tmp_path / "report"
    args = ["evaluate", "--explainee", setup["vit"], "--data", setup["data"], "--masks", str(reference)]
    args += ["--metrics", "pos,neg", "--out", str(report)]
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    sizes = sorted(len(b) for b in before.values())
    assert len(sizes) >= 3
    # Small files still fit, the largest does not: the old code then left new small files beside the old
    # metrics.json (a mixed report).
    proc = cli(args, fsize=sizes[-1] - 1)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write" in one_error_line(proc.stderr)
    after = {p.name: p.read_bytes() for p in report.iterdir()}
    assert after == before, "the previous report is left exactly as it was, with no temporary files"
    data = json.loads(before["metrics.json"])
    import hashlib

    for name, digest in data["report_files"].items():
        assert hashlib.sha256(before[name]).hexdigest() == digest


def test_a_crash_between_report_renames_leaves_no_complete_looking_report(tmp_path, monkeypatch):
    from explainers.io import atomic

    folder = tmp_path / "report"
    atomic.write_files_together(folder, {"a.npz": b"old-a", "metrics.json": b"old"}, last="metrics.json")
    calls = []
    real_replace = os.replace

    def crash_after_one(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process dies between two renames
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_files_together(
            folder, {"a.npz": b"new-a", "b.md": b"new-b", "metrics.json": b"new"}, last="metrics.json"
        )
    assert not (folder / "metrics.json").exists(), "without its marker the report visibly is incomplete"
    assert sorted(p.name for p in folder.iterdir()) == ["a.npz"], "temporary files are cleaned up"


def read_count(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["count"])
    except Exception:  # being written: not readable at this instant
        return -1


@pytest.mark.slow
def test_explain_killed_at_several_points_resumes_to_the_uninterrupted_file(setup, reference, tmp_path):
    out = tmp_path / "maps.h5"
    partial = partial_path(out)
    kills = 0
    for threshold in (0, 4, 8):
        proc = cli(explain_args(setup, out), wait=False)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if partial.exists() and read_count(partial) >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.communicate()
        assert not out.exists() or proc.returncode == 0
    assert kills >= 2, "the runs were too fast to be killed"
    assert lock_path(out).exists(), "a killed run leaves its lock behind"
    proc = cli(explain_args(setup, out))  # the stale lock is taken over; the committed rows are kept
    assert proc.returncode == 0, proc.stderr
    assert "from the interrupted run" in proc.stdout
    assert_same_maps(out, reference)
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_resumes(setup, reference, tmp_path):
    out = tmp_path / "maps.h5"
    proc = cli(explain_args(setup, out), wait=False)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and read_count(partial_path(out)) < 3:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("explainers: interrupted"), err
    assert not out.exists() and not lock_path(out).exists()
    proc = cli(explain_args(setup, out))
    assert proc.returncode == 0, proc.stderr
    assert_same_maps(out, reference)


HOLDER = """
import sys, time
from explainers.io import MaskFileWriter
w = MaskFileWriter(sys.argv[1], method="x", method_config={}, explainee={}, image_size=(2, 2), dataset="d")
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_until_the_first_is_gone(setup, reference, tmp_path):
    out = tmp_path / "maps.h5"
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = partial_path(out).read_bytes()
        proc = cli([*explain_args(setup, out, method="rollout"), "--overwrite"])
        assert proc.returncode == 2
        line = one_error_line(proc.stderr)
        assert "being written by another run" in line and f"pid {holder.pid}" in line
        assert partial_path(out).read_bytes() == before, "the running writer's file is untouched"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder crashed: its lock is stale and taken over.
    proc = cli([*explain_args(setup, out, method="rollout"), "--no-resume"])
    assert proc.returncode == 0, proc.stderr
    with MaskFile(out) as mf:
        assert len(mf) == N_IMAGES and mf.method == "rollout"


META = dict(method="m", method_config={}, explainee={"id": 1}, image_size=(6, 5), dataset="list")


def batch(start: int, n: int):
    rng = np.random.default_rng(start)
    return dict(
        ids=[f"img{i:03d}" for i in range(start, start + n)],
        maps=rng.random((n, 6, 5)).astype(np.float32),
        labels=np.arange(start, start + n),
        predicted=np.zeros(n),
        explained=np.ones(n),
        extras={"score": rng.random(n)},
    )


def test_resume_survives_a_partial_file_cut_at_any_byte(tmp_path):
    batches = [batch(4 * k, 4) for k in range(4)]
    full = tmp_path / "full.h5"
    w = MaskFileWriter(full, **META, chunk_images=4)
    for b in batches:
        w.append(**b)
    w.finalize()
    reference, _ = contents(full)

    source = tmp_path / "interrupted.h5"
    w = MaskFileWriter(source, **META, chunk_images=4)
    for b in batches[:3]:
        w.append(**b)
    w.close()
    data = partial_path(source).read_bytes()
    step = max(1, len(data) // 24)
    # Cut at any byte (HDF5 refuses a file shorter than it says it is: those start over), or a block of
    # bytes zeroed anywhere (the checksums catch damaged rows: recovery stops before them).
    damaged = {f"cut{k}": data[:k] for k in sorted({*range(0, 64, 7), *range(64, len(data), step)})}
    damaged |= {f"zero{k}": data[:k] + bytes(64) + data[k + 64 :] for k in range(0, len(data) - 64, step)}
    damaged["intact"] = data
    with h5py.File(partial_path(source), "r") as f:  # where the third batch's maps chunk lies
        third = f["maps"].id.get_chunk_info(2)
    start = third.byte_offset + third.size // 2
    damaged["third_maps_chunk"] = data[:start] + bytes(8) + data[start + 8 :]
    recovered = {}
    for name, content in damaged.items():
        out = tmp_path / f"{name}.h5"
        partial_path(out).write_bytes(content)
        try:
            w = MaskFileWriter(out, **META, chunk_images=4)  # never crashes
        except MaskFileError as exc:  # zeroed identity attributes: refused as another run's file
            assert name.startswith("zero") and ("different run" in str(exc) or "not an explainers" in str(exc))
            continue
        recovered[name] = w.count
        assert w.count in (0, 4, 8, 12)
        for b in batches:
            keep = [i for i, image_id in enumerate(b["ids"]) if image_id not in w.done_ids]
            if keep:
                w.append(
                    ids=[b["ids"][i] for i in keep],
                    maps=b["maps"][keep],
                    labels=b["labels"][keep],
                    predicted=b["predicted"][keep],
                    explained=b["explained"][keep],
                    extras={"score": b["extras"]["score"][keep]},
                )
        w.finalize(expected_ids=[i for b in batches for i in b["ids"]])
        got, attrs = contents(out)
        assert bool(attrs["complete"]) and int(attrs["count"]) == 16
        for k in reference:
            np.testing.assert_array_equal(got[k], reference[k], err_msg=f"{name}: {k}")
        out.unlink()
    assert recovered["intact"] == 12, "an undamaged partial file keeps every committed row"
    assert recovered["third_maps_chunk"] == 8, "recovery stops at the damaged batch (the checksum catches it)"
