"""benchmarks/learned_targets.py: the issue-15 summary of a leaderboard, on a hand-built board."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learned_targets.py"
    spec = importlib.util.spec_from_file_location("learned_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(value: float, best: bool = False, tied: bool = False, rank: float = 1.0) -> dict:
    return {"value": value, "best": best, "tied_with_best": tied, "rank": rank}


def test_targets_count_lte_best_or_tied_and_plte_against_every_baseline():
    # Scenario "s", two metrics. pos (lower is better): attnlrp best at 10, LTE tied with it at 11, pLTE 12
    # behind gae's 11.5. miou (higher): LTE best at 70, pLTE 65 ahead of both baselines (60, 64); random's
    # 99 must not count as a baseline.
    board = {
        "scenarios": ["s"],
        "methods": ["attnlrp", "gae", "lte", "plte", "random"],
        "columns": [
            {"scenario": "s", "metric": "pos", "direction": "lower"},
            {"scenario": "s", "metric": "miou", "direction": "higher"},
        ],
        "cells": {
            "attnlrp": {"s/pos": _cell(10.0, best=True), "s/miou": _cell(60.0, rank=4)},
            "gae": {"s/pos": _cell(11.5, rank=3), "s/miou": _cell(64.0, rank=3)},
            "lte": {"s/pos": _cell(11.0, tied=True, rank=2), "s/miou": _cell(70.0, best=True)},
            "plte": {"s/pos": _cell(12.0, rank=4), "s/miou": _cell(65.0, rank=2)},
            "random": {"s/pos": _cell(40.0, rank=5), "s/miou": _cell(99.0, rank=5)},
        },
    }
    text = _module().targets_markdown(board)
    rows = [line for line in text.splitlines() if line.startswith("| s |")]
    assert rows[0] == "| s | pos ↓ | attnlrp 10.00 | 11.00 (2) | yes | 12.00 | no | attnlrp 10.00 |"
    assert rows[1] == "| s | miou ↑ | lte 70.00 | 70.00 (1) | yes | 65.00 | yes | gae 64.00 |"
    assert rows[2] == "| s | 2 of 2 | 1 of 2 |"
