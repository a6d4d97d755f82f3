"""``explainers benchmark`` end to end on a few scenes: outputs, reuse on rerun, scenario selection."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from explainers.benchmark.runner import run_benchmark
from explainers.errors import ExplainersError

pytestmark = pytest.mark.slow


class _Checker(HTMLParser):
    """Well-formedness of the tags the page uses, and no external resources."""

    VOID = frozenset({"meta", "img", "br", "hr", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()


def test_benchmark_writes_a_leaderboard_and_reuses_its_mask_files(tmp_path: Path, one_thread, monkeypatch) -> None:
    lines: list[str] = []
    board = run_benchmark(
        tmp_path, scenarios=["single"], methods=["random", "gae", "plte"], images=6, progress=False, echo=lines.append
    )
    assert board.scenarios == ["single"] and set(board.methods) == {"random", "gae", "plte"}
    assert board.overall["random"] == max(board.overall.values())  # the floor ranks last overall
    data = json.loads((tmp_path / "leaderboard.json").read_text())
    assert data["separation"]["single"]["floor_last"] is True
    assert set(data["cells"]["gae"]) == {
        f"single/{m}" for m in ("pos", "neg", "deletion", "insertion", "miou", "pointing-game", "energy-in-gt")
    }
    page = (tmp_path / "leaderboard.html").read_text()
    checker = _Checker()
    checker.feed(page)
    assert checker.stack == [] and len(checker.images) == 2
    assert all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "| plte |" in (tmp_path / "leaderboard.md").read_text()

    # The randomisation check: gae reads the explainee's attention and gradients, so its maps change.
    assert set(board.sanity["single"]) == {"random", "gae", "plte"}
    assert set(board.sanity["single"]["gae"]) == {"1", "4"}  # the shipped explainee has 4 blocks
    assert board.sanity["single"]["gae"]["4"] < 0.5 and "Sanity check" in (tmp_path / "leaderboard.md").read_text()

    masks = sorted((tmp_path / "single" / "masks").glob("*.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in masks}
    again = run_benchmark(
        tmp_path, scenarios=["single"], methods=["random", "gae", "plte"], images=6, progress=False, echo=lines.append
    )
    assert {p: p.stat().st_mtime_ns for p in masks} == stamps  # nothing explained twice
    assert again.overall == board.overall and again.sanity == board.sanity

    # Nothing scored twice either: the evaluation is reused while its mask files are unchanged ...
    import explainers.benchmark.runner as runner

    scored = runner.evaluate_maskfiles
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return scored(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_maskfiles", counting)
    third = run_benchmark(
        tmp_path, scenarios=["single"], methods=["random", "gae", "plte"], images=6, progress=False, echo=lines.append
    )
    assert calls == [] and third.overall == board.overall
    # ... and redone when one of them changes.
    (tmp_path / "single" / "masks" / "random.h5").unlink()
    run_benchmark(
        tmp_path, scenarios=["single"], methods=["random", "gae", "plte"], images=6, progress=False, echo=lines.append
    )
    assert calls == [1]


def test_scenario_selection_and_learned_methods_without_an_explainer(tmp_path: Path, one_thread) -> None:
    with pytest.raises(ExplainersError, match="unknown scenario"):
        run_benchmark(tmp_path, scenarios=["crowded"], progress=False)
    with pytest.raises(ExplainersError, match="unknown method"):
        run_benchmark(tmp_path, methods=["nope"], progress=False)
    # Another explainee for a scenario: the shipped pLTE does not belong to it, so plte is left out and said so.
    lines: list[str] = []
    board = run_benchmark(
        tmp_path,
        scenarios=["contrast"],
        methods=["random", "rollout", "plte"],
        images=3,
        explainees={"contrast": "embedded"},
        sanity_images=0,
        progress=False,
        echo=lines.append,
    )
    assert board.methods == ["random", "rollout"]
    # Each contrast scene is explained for both of its objects' classes; the contrast metric is scored.
    assert board.cell("rollout", "contrast", "class-sensitivity").n == 6
    assert any("plte not run" in n for n in board.notes) and any("plte: skipped" in line for line in lines)
