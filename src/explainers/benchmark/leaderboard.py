"""The leaderboard: methods × (scenario, metric) from one evaluation per scenario, with ranks and ties.

For every column (a scenario and a metric) each method gets its dataset value (the mean of its per-image
values, or the pooled value for pooled metrics), the 95 % confidence interval of the per-image mean, and
its rank among the methods (1 = best in the metric's direction; equal values share the mean of their
ranks). The best value is marked, and so is every method **statistically tied with the best**: a paired
two-sided Wilcoxon signed-rank test over the images both methods explained (the same images, so the test
sees the per-image differences, not two overlapping intervals) does not reject equality at ``alpha``
(default 0.05). A method whose per-image values equal the best's on every image is tied. For pooled metrics
(pixel accuracy, mIoU) the test uses the per-image values behind the pooled ones.

The overall rank of a method is the mean of its ranks over every column it appears in. Costs (training
seconds once, milliseconds per image at explain time), when given, are shown next to the quality so that a
user can weigh them: overall (``costs``: per image averaged over the scenarios, training averaged over the
distinct explainers trained) and per scenario (``scenario_costs``: that scenario's own explainer and timing).

Outputs: :func:`to_json` (everything above, machine-readable), :func:`to_markdown` (one table per
scenario and the overall ranking) and :func:`to_html` (one self-contained page: tables, and each scenario's
perturbation curves and heatmap grid embedded as PNG).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explainers.benchmark.sanity import FAIL_AT
from explainers.metrics.evaluate import EvaluationResult
from explainers.metrics.report import plot_curves, plot_heatmaps

TEST_NAME = "paired two-sided Wilcoxon signed-rank test on per-image values"


@dataclass
class Cell:
    """One method in one column."""

    value: float | None
    ci95: tuple[float | None, float | None]
    n: int
    rank: float | None = None
    best: bool = False
    tied_with_best: bool = False
    p_value: float | None = None  # of the paired test against the best method (None for the best)


@dataclass
class Column:
    scenario: str
    metric: str
    direction: str  # "lower" or "higher"
    unit: str = ""

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.metric}"


@dataclass
class Leaderboard:
    scenarios: list[str]
    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, str], Cell]  # (method, column key) → cell
    overall: dict[str, float]  # method → mean rank over its columns
    alpha: float = 0.05
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: dict[str, EvaluationResult] = field(default_factory=dict, repr=False)
    #: Randomisation check per scenario: method → {"1": ρ, "<all blocks>": ρ} (mean Spearman).
    sanity: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: Cost per scenario: scenario → method → {"train_seconds": …, "ms_per_image": …} (either may be absent).
    scenario_costs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def cell(self, method: str, scenario: str, metric: str) -> Cell | None:
        return self.cells.get((method, f"{scenario}/{metric}"))

    def ranking(self) -> list[str]:
        """Methods from the best overall rank to the worst."""
        return sorted(self.overall, key=lambda m: (self.overall[m], m))


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _ranks(values: Sequence[float], direction: str) -> list[float]:
    """Ranks 1…n (1 = best in ``direction``); equal values share the mean of their ranks."""
    signed = np.asarray(values, dtype=np.float64) * (1.0 if direction == "lower" else -1.0)
    order = np.argsort(signed, kind="stable")
    ranks = np.empty(len(signed))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and signed[order[j + 1]] == signed[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks.tolist()


def paired_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``a − b`` (1.0 when every difference is zero)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if not np.any(diff != 0):
        return 1.0
    # zsplit keeps zero differences (half to each side) so that many equal images weigh towards a tie.
    return float(wilcoxon(diff, zero_method="zsplit", alternative="two-sided").pvalue)


def _aligned(result: EvaluationResult, metric: str, ids: Sequence[str], label: str) -> np.ndarray:
    f = next(f for f in result.files if f.label == label)
    where = {image_id: k for k, image_id in enumerate(f.ids)}
    return np.array([f.per_image[metric][where[i]] for i in ids], dtype=np.float64)


def build_leaderboard(
    results: Mapping[str, EvaluationResult],
    *,
    alpha: float = 0.05,
    costs: Mapping[str, Mapping[str, float]] | None = None,
    scenario_costs: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> Leaderboard:
    """Rank the methods (mask-file labels) of each scenario's evaluation."""
    if not results:
        raise ValueError("no scenario results to rank")
    methods: list[str] = []
    columns: list[Column] = []
    cells: dict[tuple[str, str], Cell] = {}
    notes: list[str] = []
    for scenario, result in results.items():
        labels = [f.label for f in result.files]
        methods += [m for m in labels if m not in methods]
        ids = _common_ids(result)
        if any(len(f.ids) != len(ids) for f in result.files):
            notes.append(f"{scenario}: paired tests use the {len(ids)} images every method explained")
        for m in result.metrics:
            column = Column(scenario, m["name"], m["direction"], m.get("unit", ""))
            columns.append(column)
            present = [f for f in result.files if m["name"] in f.summaries]
            values = [_finite(f.summaries[m["name"]]["value"]) for f in present]
            scored = [(f, v) for f, v in zip(present, values, strict=True) if v is not None]
            ranks = _ranks([v for _, v in scored], column.direction) if scored else []
            for f, v in zip(present, values, strict=True):
                s = f.summaries[m["name"]]
                lo, hi = s.get("ci95", (None, None))
                cells[(f.label, column.key)] = Cell(value=v, ci95=(_finite(lo), _finite(hi)), n=int(s.get("n", 0)))
            for (f, _), rank in zip(scored, ranks, strict=True):
                cells[(f.label, column.key)].rank = rank
            if not scored:
                continue
            best_rank = min(ranks)
            best = [f.label for (f, _), r in zip(scored, ranks, strict=True) if r == best_rank]
            reference = _aligned(result, m["name"], ids, best[0])
            for f, _ in scored:
                cell = cells[(f.label, column.key)]
                if f.label in best:
                    cell.best = cell.tied_with_best = True
                    continue
                p = paired_p_value(_aligned(result, m["name"], ids, f.label), reference) if ids else None
                cell.p_value = p
                cell.tied_with_best = p is not None and p >= alpha
    overall = {}
    for method in methods:
        ranks = [cells[(method, c.key)].rank for c in columns if (method, c.key) in cells]
        ranks = [r for r in ranks if r is not None]
        if ranks:
            overall[method] = float(np.mean(ranks))
    return Leaderboard(
        scenarios=list(results),
        methods=methods,
        columns=columns,
        cells=cells,
        overall=overall,
        alpha=alpha,
        costs={k: dict(v) for k, v in (costs or {}).items()},
        scenario_costs={sc: {m: dict(c) for m, c in v.items()} for sc, v in (scenario_costs or {}).items()},
        notes=notes,
        results=dict(results),
    )


def _common_ids(result: EvaluationResult) -> list[str]:
    """The images every file of ``result`` scored, in the first file's order (what paired tests compare)."""
    if not result.files:
        return []
    common = set.intersection(*(set(f.ids) for f in result.files))
    return [i for i in result.files[0].ids if i in common]


def separation(board: Leaderboard, floor: str = "random") -> dict[str, dict[str, Any]]:
    """Per scenario: is ``floor`` last on every metric, and on which metrics do two other methods differ
    beyond their 95 % confidence intervals (the intervals do not overlap)?

    A method ranked below ``floor`` counts against it only when the paired test over the same images says
    the two differ (p < ``board.alpha``): ``below_floor`` (metric → methods). One ranked below it but tied
    with it is at chance level, which is what an uninformative map scores (a class-blind map on the
    class-sensitivity test, an all-zero map on a perturbation test); those go to ``at_chance``. Without
    per-image values (a board read back from JSON) every method ranked below counts."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in board.scenarios:
        cols = [c for c in board.columns if c.scenario == scenario]
        result = board.results.get(scenario)
        ids = _common_ids(result) if result is not None else []
        separated: list[str] = []
        below: dict[str, list[str]] = {}
        at_chance: dict[str, list[str]] = {}
        for c in cols:
            here = {m: board.cells[(m, c.key)] for m in board.methods if (m, c.key) in board.cells}
            floor_rank = here[floor].rank if floor in here else None
            if floor_rank is not None:
                paired = result is not None and bool(ids)
                floor_values = _aligned(result, c.metric, ids, floor) if paired else None
                for m, cell in here.items():
                    if cell.rank is None or cell.rank <= floor_rank:
                        continue
                    p = paired_p_value(_aligned(result, c.metric, ids, m), floor_values) if paired else None
                    (at_chance if p is not None and p >= board.alpha else below).setdefault(c.metric, []).append(m)
            others = [cell for m, cell in here.items() if m != floor and None not in cell.ci95]
            if any(a.ci95[1] < b.ci95[0] for a in others for b in others):  # type: ignore[operator]
                separated.append(c.metric)
        out[scenario] = {
            "floor_last": not below if floor in board.methods else None,
            "below_floor": below,
            "at_chance": at_chance,
            "separated": separated,
        }
    return out


def _below_floor_text(below: Mapping[str, Sequence[str]]) -> str:
    """``metric: a, b; metric: c`` — who ranks below random, per metric."""
    return "; ".join(f"{metric}: {', '.join(methods)}" for metric, methods in below.items())


def floor_text(s: Mapping[str, Any], floor: str = "random") -> str:
    """One sentence on where ``floor`` ranks in a scenario (``separation``'s entry), Markdown-free."""
    if s["floor_last"] is None:
        return ""
    if s["floor_last"]:
        text = f"{floor} is last on every metric (no method is worse than it by the paired test)"
    else:
        worse = _below_floor_text(s["below_floor"])
        text = f"{floor} is NOT last on every metric (worse than it by the paired test: {worse})"
    if s.get("at_chance"):
        text += f"; ranked below it but tied with it (at chance): {_below_floor_text(s['at_chance'])}"
    return text


# ---------------------------------------------------------------------------------------------------- output

_ARROW = {"lower": "↓", "higher": "↑"}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _cell_text(cell: Cell | None) -> str:
    if cell is None or cell.value is None:
        return "—"
    lo, hi = cell.ci95
    text = _fmt(cell.value)
    if lo is not None and hi is not None:
        text += f" ± {(hi - lo) / 2:.2f}"
    return text


def to_json(board: Leaderboard) -> dict[str, Any]:
    return {
        "format": "explainers-leaderboard",
        "format_version": 1,
        "test": TEST_NAME,
        "alpha": board.alpha,
        "scenarios": board.scenarios,
        "methods": board.methods,
        "columns": [
            {"scenario": c.scenario, "metric": c.metric, "direction": c.direction, "unit": c.unit}
            for c in board.columns
        ],
        "cells": {
            method: {
                key: {
                    "value": cell.value,
                    "ci95": list(cell.ci95),
                    "n": cell.n,
                    "rank": cell.rank,
                    "best": cell.best,
                    "tied_with_best": cell.tied_with_best,
                    "p_value_vs_best": cell.p_value,
                }
                for (m, key), cell in board.cells.items()
                if m == method
            }
            for method in board.methods
        },
        "overall_rank": board.overall,
        "ranking": board.ranking(),
        "costs": board.costs,
        "scenario_costs": board.scenario_costs,
        "separation": separation(board),
        "sanity": {"fail_at": FAIL_AT, "spearman": board.sanity},
        "notes": board.notes,
    }


def _scenario_table_md(board: Leaderboard, scenario: str) -> list[str]:
    cols = [c for c in board.columns if c.scenario == scenario]
    costs = board.scenario_costs.get(scenario)
    lines = [
        "| method | "
        + " | ".join(f"{c.metric} {_ARROW[c.direction]}" for c in cols)
        + (" | training (once) | per image" if costs else "")
        + " |",
        "|---|" + "---|" * (len(cols) + (2 if costs else 0)),
    ]
    for method in board.ranking() + [m for m in board.methods if m not in board.overall]:
        cells = []
        for c in cols:
            cell = board.cells.get((method, c.key))
            text = _cell_text(cell)
            if cell is not None and cell.best:
                text = f"**{text}**"
            elif cell is not None and cell.tied_with_best:
                text += " ≈"
            cells.append(text)
        if costs:
            cells += list(_cost_text(costs.get(method)))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _legend(board: Leaderboard) -> str:
    return (
        f"Mean ± half-width of the 95 % confidence interval of the per-image mean (pooled metrics show the "
        f"pooled value). **Bold**: best in the column; ≈: statistically tied with the best ({TEST_NAME}, "
        f"p ≥ {board.alpha}). Overall rank: mean of the method's ranks over every column (1 = best). "
        "Cost: training wall time of a learned explainer, once per explainee (overall: the mean over the "
        "distinct explainers), and explain time per image, both as measured on the machines that ran them."
    )


def _cost_text(cost: Mapping[str, float] | None) -> tuple[str, str]:
    if not cost:
        return "—", "—"
    train = cost.get("train_seconds")
    per_image = cost.get("ms_per_image")
    return (
        f"{train:,.0f} s" if train is not None else "—",
        _fmt(per_image, 1) + " ms" if per_image is not None else "—",
    )


def to_markdown(board: Leaderboard, title: str = "Leaderboard") -> str:
    lines = [f"# {title}", "", _legend(board), "", "## Overall", ""]
    lines += ["| rank | method | mean rank | training (once) | per image |", "|---|---|---|---|---|"]
    for k, method in enumerate(board.ranking(), start=1):
        train, per_image = _cost_text(board.costs.get(method))
        lines.append(f"| {k} | {method} | {board.overall[method]:.2f} | {train} | {per_image} |")
    sep = separation(board)
    for scenario in board.scenarios:
        lines += ["", f"## {scenario}", "", *_scenario_table_md(board, scenario), ""]
        s = sep[scenario]
        lines.append(
            f"{floor_text(s)}; metrics where two methods differ beyond their 95 % CIs: "
            f"{', '.join(s['separated']) or 'none'}."
        )
    if board.sanity:
        lines += ["", "## Sanity check: model-parameter randomisation", "", _SANITY_TEXT, ""]
        for scenario, rows in board.sanity.items():
            lines += [f"**{scenario}**", "", *_sanity_rows(rows, "md"), ""]
    if board.notes:
        lines += ["", *(f"- {n}" for n in board.notes)]
    return "\n".join(lines) + "\n"


_SANITY_TEXT = (
    "Mean Spearman correlation between each method's maps for the trained explainee and for copies whose "
    f"last block, or every block, is re-initialised (lower is better). A method fails at ρ ≥ {FAIL_AT} with "
    "every block randomised: its maps do not depend on what the model learned. Learned explainers (pLTE, LTE, "
    "LETA) are the ones trained for the original weights, used with the randomised copies on purpose. Not part "
    "of the ranking."
)


def _sanity_rows(rows: Mapping[str, Mapping[str, float]], kind: str) -> list[str]:
    ks = sorted({k for r in rows.values() for k in r}, key=int)
    out = []
    if kind == "md":
        out += ["| method | " + " | ".join(f"ρ, last {k} block(s)" for k in ks) + " | verdict |"]
        out += ["|---|" + "---|" * (len(ks) + 1)]
    for method, r in rows.items():
        verdict = "fails" if r.get(ks[-1], 0.0) >= FAIL_AT else "passes"
        cells = [_fmt(r.get(k)) for k in ks]
        if kind == "md":
            out.append(f"| {method} | " + " | ".join(cells) + f" | {verdict} |")
        else:
            tds = "".join(f"<td>{c}</td>" for c in cells)
            cls = ' class="fail"' if verdict == "fails" else ""
            out.append(f'<tr><td class="name">{html.escape(method)}</td>{tds}<td{cls}>{verdict}</td></tr>')
    if kind == "html":
        head = "".join(f"<th>ρ, last {k} block(s)</th>" for k in ks)
        out = [f"<table><thead><tr><th>method</th>{head}<th>verdict</th></tr></thead><tbody>", *out, "</tbody></table>"]
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1400px;
color:#1b1f24;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.name{text-align:left}
thead th{background:#f6f8fa;position:sticky;top:0}
td.best{font-weight:700;background:#dafbe1}td.tied{background:#f0fff4}td.fail{color:#cf222e;font-weight:700}
.rank{color:#57606a;font-size:.75rem;margin-left:.3rem}
.legend{color:#57606a;font-size:.85rem;max-width:70rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.85rem}
"""


def _png_tag(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode()
    caption = html.escape(alt)
    img = f'<img alt="{caption}" src="data:image/png;base64,{data}">'
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def to_html(board: Leaderboard, title: str = "Leaderboard", plots: bool = True) -> str:
    """One self-contained page (no external resources): tables, then each scenario's plots."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="legend">{esc(_legend(board)).replace("**Bold**", "<b>Bold</b>")}</p>',
        '<h2 id="overall">Overall</h2>',
        "<table><thead><tr><th>rank</th><th>method</th><th>mean rank</th><th>training (once)</th>"
        "<th>per image</th></tr></thead><tbody>",
    ]
    for k, method in enumerate(board.ranking(), start=1):
        train, per_image = _cost_text(board.costs.get(method))
        parts.append(
            f'<tr><td>{k}</td><td class="name">{esc(method)}</td><td>{board.overall[method]:.2f}</td>'
            f"<td>{esc(train)}</td><td>{esc(per_image)}</td></tr>"
        )
    parts.append("</tbody></table>")
    sep = separation(board)
    for scenario in board.scenarios:
        cols = [c for c in board.columns if c.scenario == scenario]
        costs = board.scenario_costs.get(scenario)
        parts.append(f'<h2 id="{esc(scenario)}">{esc(scenario)}</h2>')
        parts.append(
            "<table><thead><tr><th>method</th>"
            + "".join(f'<th title="{esc(c.unit)}">{esc(c.metric)} {_ARROW[c.direction]}</th>' for c in cols)
            + ("<th>training (once)</th><th>per image</th>" if costs else "")
            + "</tr></thead><tbody>"
        )
        for method in board.ranking() + [m for m in board.methods if m not in board.overall]:
            row = [f"<td>{esc(method)}</td>"]
            for c in cols:
                cell = board.cells.get((method, c.key))
                cls = "best" if cell and cell.best else "tied" if cell and cell.tied_with_best else ""
                rank = f'<span class="rank">#{cell.rank:g}</span>' if cell and cell.rank is not None else ""
                title_attr = f' title="p = {cell.p_value:.3g} vs best"' if cell and cell.p_value is not None else ""
                row.append(f'<td class="{cls}"{title_attr}>{esc(_cell_text(cell))}{rank}</td>')
            if costs:
                row += [f"<td>{esc(t)}</td>" for t in _cost_text(costs.get(method))]
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</tbody></table>")
        s = sep[scenario]
        if s["floor_last"] is not None:
            parts.append(
                f'<p class="legend">{esc(floor_text(s))}; '
                f"methods differ beyond their 95 % CIs on: {esc(', '.join(s['separated']) or 'none')}.</p>"
            )
        result = board.results.get(scenario)
        if plots and result is not None:
            parts.append(_png_tag(plot_curves(result), f"{scenario}: mean perturbation curves"))
            parts.append(_png_tag(plot_heatmaps(result), f"{scenario}: heatmaps of the first images"))
    if board.sanity:
        parts += [
            '<h2 id="sanity">Sanity check: model-parameter randomisation</h2>',
            f'<p class="legend">{esc(_SANITY_TEXT)}</p>',
        ]
        for scenario, rows in board.sanity.items():
            parts += [f"<h3>{esc(scenario)}</h3>", *_sanity_rows(rows, "html")]
    if board.notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in board.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
