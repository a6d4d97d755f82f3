"""The leaderboard's ranks, ties, overall rank and outputs on evaluation results made by hand."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from explainers.benchmark.leaderboard import (
    build_leaderboard,
    paired_p_value,
    separation,
    to_html,
    to_json,
    to_markdown,
)
from explainers.metrics.base import summary_stats
from explainers.metrics.evaluate import EvaluationResult, FileResult

IDS = [f"img{i}" for i in range(20)]
METRICS = [
    {"name": "pos", "direction": "lower", "unit": "AUC", "category": "perturbation"},
    {"name": "miou", "direction": "higher", "unit": "%", "category": "segmentation"},
]


def file_result(label: str, per_image: dict[str, np.ndarray], ids=IDS) -> FileResult:
    f = FileResult(info={}, label=label, ids=list(ids), excluded=[], maps_info={}, checks={})
    for name, values in per_image.items():
        f.per_image[name] = np.asarray(values, dtype=np.float64)
        stats = summary_stats(f.per_image[name])
        f.summaries[name] = {"value": stats["mean"], **stats}
    return f


def result(files: list[FileResult]) -> EvaluationResult:
    return EvaluationResult(config={}, metrics=METRICS, files=files, curve_x={}, timing={})


def scenario_a() -> EvaluationResult:
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 30, size=20)
    return result(
        [
            # "good" beats "fair" on every image by 5 (a clear difference); "twin" equals "good" but for
            # one image (a tie); "random" is worst everywhere.
            file_result("good", {"pos": base, "miou": 80 - base}),
            file_result("twin", {"pos": base + np.eye(20)[0], "miou": 80 - base - np.eye(20)[0]}),
            file_result("fair", {"pos": base + 5, "miou": 75 - base}),
            file_result("random", {"pos": base + 20, "miou": 40 - base}),
        ]
    )


def test_ranks_best_and_ties_by_the_paired_test():
    board = build_leaderboard({"a": scenario_a()})
    pos = {m: board.cell(m, "a", "pos") for m in board.methods}
    assert [pos[m].rank for m in ("good", "twin", "fair", "random")] == [1, 2, 3, 4]
    assert pos["good"].best and not pos["twin"].best
    # One image differs by 1, 19 by 0 (zsplit): ranks 10 (×19 zeros, half to each side) and 20 → W+ = 115,
    # mean 105, variance 20·21·41/24 − (19³ − 19)/48 = 575 → z = 10/√575, p = 2(1 − Φ(z)) ≈ 0.677: tied.
    z = 10 / math.sqrt(575)
    assert pos["twin"].tied_with_best and pos["twin"].p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert not pos["fair"].tied_with_best and pos["fair"].p_value < 1e-4
    miou = board.cell("fair", "a", "miou")
    assert miou.rank == 3 and not miou.tied_with_best
    # Overall: mean rank over both columns.
    assert board.overall == {"good": 1.0, "twin": 2.0, "fair": 3.0, "random": 4.0}
    assert board.ranking() == ["good", "twin", "fair", "random"]


def test_equal_values_share_ranks_and_are_all_best():
    same = np.linspace(1, 2, 20)
    res = result([file_result("x", {"pos": same, "miou": same}), file_result("y", {"pos": same, "miou": same})])
    board = build_leaderboard({"s": res})
    for m in ("x", "y"):
        cell = board.cell(m, "s", "pos")
        assert cell.rank == 1.5 and cell.best and cell.tied_with_best


def test_paired_p_value_by_hand():
    # All 6 differences positive and distinct: exact two-sided p = 2 / 2^6.
    assert paired_p_value(np.arange(1.0, 7.0), np.zeros(6)) == pytest.approx(2 / 64)
    assert paired_p_value(np.ones(5), np.ones(5)) == 1.0


def test_separation_and_outputs():
    board = build_leaderboard({"a": scenario_a()}, costs={"good": {"train_seconds": 120.0, "ms_per_image": 3.5}})
    sep = separation(board)
    assert sep["a"]["floor_last"] is True
    assert set(sep["a"]["separated"]) == {"pos", "miou"}  # good vs fair: CIs of a shift of 5 vs spread 10/√20

    data = json.loads(json.dumps(to_json(board)))
    assert data["ranking"][0] == "good" and data["cells"]["twin"]["a/pos"]["tied_with_best"]
    md = to_markdown(board)
    assert re.search(r"\| good \| \*\*\d+\.\d\d ± \d+\.\d\d\*\*", md)
    assert "≈" in md and "120 s" in md and "3.5 ms" in md
    page = to_html(board, plots=False)
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 2
    assert 'class="best"' in page and 'class="tied"' in page
    assert "http" not in page  # self-contained: nothing fetched from elsewhere


def test_random_not_last_is_reported():
    res = scenario_a()
    res.files[3] = file_result("random", {"pos": np.full(20, 1.0), "miou": np.full(20, 99.0)})
    board = build_leaderboard({"a": res})
    sep = separation(board)["a"]
    assert sep["floor_last"] is False
    # random is best on both metrics here: every other method ranks below it, and the text says so.
    assert sep["below_floor"] == {"pos": ["good", "twin", "fair"], "miou": ["good", "twin", "fair"]}
    assert "worse than it by the paired test: pos: good, twin, fair; miou: good, twin, fair" in to_markdown(board)


def test_a_method_tied_with_random_is_at_chance_not_below_it():
    # "flat" is worse than random on the mean but only by noise: 10 images a little worse, 10 a little
    # better (signed-rank p = 1 by symmetry of the magnitudes); "bad" is worse on every image.
    res = scenario_a()
    rnd = res.files[3].per_image
    noise = np.where(np.arange(20) < 10, 0.5, -0.4)
    res.files.append(file_result("flat", {"pos": rnd["pos"] + noise, "miou": rnd["miou"] - noise}))
    board = build_leaderboard({"a": res})
    sep = separation(board)["a"]
    assert board.cell("flat", "a", "pos").rank > board.cell("random", "a", "pos").rank
    assert sep["floor_last"] is True and sep["below_floor"] == {}
    assert sep["at_chance"] == {"pos": ["flat"], "miou": ["flat"]}
    assert "at chance): pos: flat; miou: flat" in to_markdown(board)
    res.files.append(file_result("bad", {"pos": rnd["pos"] + 3, "miou": rnd["miou"] - 3}))
    sep = separation(build_leaderboard({"a": res}))["a"]
    assert sep["floor_last"] is False and sep["below_floor"] == {"pos": ["bad"], "miou": ["bad"]}


def test_sanity_table_verdicts():
    board = build_leaderboard({"a": scenario_a()})
    board.sanity = {"a": {"good": {"1": 0.8, "12": 0.1}, "fair": {"1": 0.95, "12": 0.7}}}
    md = to_markdown(board)
    assert "| good | 0.80 | 0.10 | passes |" in md and "| fair | 0.95 | 0.70 | fails |" in md
    page = to_html(board, plots=False)
    assert '<td class="fail">fails</td>' in page
    assert to_json(board)["sanity"]["spearman"]["a"]["fair"]["12"] == 0.7


def test_scenario_costs_are_shown_next_to_each_scenario_table():
    costs = {"a": {"good": {"train_seconds": 1234.0, "ms_per_image": 5.25}, "fair": {"ms_per_image": 2.0}}}
    board = build_leaderboard({"a": scenario_a()}, scenario_costs=costs)
    md = to_markdown(board)
    assert "| training (once) | per image |" in md
    good = next(line for line in md.splitlines() if line.startswith("| good |") and "±" in line)
    assert good.endswith("| 1,234 s | 5.2 ms |")
    fair = next(line for line in md.splitlines() if line.startswith("| fair |") and "±" in line)
    assert fair.endswith("| — | 2.0 ms |")
    page = to_html(board, plots=False)
    assert "<th>training (once)</th><th>per image</th>" in page and "<td>1,234 s</td><td>5.2 ms</td>" in page
    assert to_json(board)["scenario_costs"]["a"]["good"]["train_seconds"] == 1234.0


def test_training_seconds_read_from_the_explainer_records(tmp_path):
    from explainers.benchmark.runner import training_seconds

    leta = tmp_path / "leta"
    leta.mkdir()
    (leta / "config.json").write_text(json.dumps({"training": {"wall_s": 631.2}}))
    assert training_seconds(leta) == 631.2
    # pLTE: time_s counts from the start of each run; a resumed run starts again from 0.
    plte = tmp_path / "plte"
    plte.mkdir()
    (plte / "config.json").write_text(json.dumps({"training": {"epoch": 3}}))
    records = [{"epoch": 0}, {"time_s": 10.0}, {"time_s": 25.0}, {"time_s": 4.0}, {"time_s": 9.5}]
    (plte / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert training_seconds(plte) == 25.0 + 9.5
    (plte / "log.jsonl").unlink()
    assert training_seconds(plte) is None
    assert training_seconds(tmp_path / "missing") is None
