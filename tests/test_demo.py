"""``explainers demo`` end to end at a tiny size: shipped explainee, a few methods, downstream LETA tasks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from explainers.demo import DEMO_DOWNSTREAM_TASKS, run_demo


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_the_downstream_tasks(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_demo(
        tmp_path / "demo",
        num_images=4,
        accuracy_images=40,
        methods=["random", "rollout"],
        progress=False,
        echo=lines.append,
    )
    out = tmp_path / "demo"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["explained_images"] == 4 and summary["accuracy_images"] == 40
    # 40 fresh test scenes: the shipped explainee is far above chance (25 %) on them.
    assert summary["explainee_test_accuracy"] >= 0.8
    assert set(summary["methods"]) == {"random", "rollout"}
    metrics_md = (out / "report" / "metrics.md").read_text()
    assert "patch-insertion" not in metrics_md  # the demo's metric list is what is computed
    assert "miou" in metrics_md.lower() and "pos" in metrics_md.lower()

    # LETA explains each downstream task through the task's probe, one map per image.
    assert set(summary["downstream"]) == set(DEMO_DOWNSTREAM_TASKS)
    for task, record in summary["downstream"].items():
        assert "leta" in record["explain_seconds"] and 0.0 <= record["probe_accuracy"] <= 1.0
        with h5py.File(out / "downstream" / task / "masks" / "leta.h5") as f:
            assert len(f["ids"]) == 4
        report = (out / "downstream" / task / "report" / "metrics.md").read_text()
        assert "leta" in report and "patch-deletion" in report
    assert any("task 'color'" in line for line in lines)

    # The leaderboard ranks the comparison (the single scenario) with the other shipped scenarios.
    board = json.loads((out / "benchmark" / "leaderboard.json").read_text())
    assert board["scenarios"][0] == "single" and "cue" in board["scenarios"]
    assert set(board["methods"]) == {"random", "rollout"} and summary["leaderboard"]["html"].endswith(".html")


def test_demo_without_downstream_skips_it(tmp_path: Path) -> None:
    summary = run_demo(
        tmp_path / "demo",
        num_images=2,
        accuracy_images=8,
        methods=["random"],
        downstream=False,
        leaderboard=False,
        progress=False,
        echo=lambda *_: None,
    )
    assert summary["downstream"] == {} and not (tmp_path / "demo" / "downstream").exists()
