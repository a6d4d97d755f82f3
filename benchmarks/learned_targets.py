"""Where the learned explainers stand against the baselines on a leaderboard: the targets of issue 15.

Reads a leaderboard written by ``explainers benchmark`` (``OUT/leaderboard.json``) and prints, per
scenario and target metric (POS, NEG, deletion, insertion, mIoU, pointing game, energy in the ground
truth):

- the best method and its value;
- LTE's value and rank, and whether it is best or statistically tied with the best (the leaderboard's own
  paired test);
- pLTE's value and whether its mean beats every non-learned baseline (``random`` excluded, it is the floor);
- the best non-learned baseline.

Then, per scenario, the two counts the targets are stated in: the metrics (of all seven) on which LTE is
best or tied with the best, and those of the five core metrics (POS, NEG, deletion, insertion, mIoU) on
which pLTE beats every non-learned baseline (the target: at least 4 of 5).

    python benchmarks/learned_targets.py OUT/leaderboard.json > benchmarks/results/learned_targets.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from explainers.methods import METHODS, Need

TARGET_METRICS = ("pos", "neg", "deletion", "insertion", "miou", "pointing-game", "energy-in-gt")
#: The metrics pLTE's target counts over (pointing game and energy are LTE's extra targets).
CORE_METRICS = TARGET_METRICS[:5]
#: The learned explainers: every registered method that needs a trained checkpoint (pLTE, LTE, LETA).
LEARNED = frozenset(name for name in METHODS.names() if Need.CHECKPOINT in METHODS[name].needs)
FLOOR = "random"


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "lower" else a > b


def targets_markdown(board: dict) -> str:
    directions = {(c["scenario"], c["metric"]): c["direction"] for c in board["columns"]}
    cells = board["cells"]
    baselines = [m for m in board["methods"] if m not in LEARNED and m != FLOOR]
    lines = [
        "| scenario | metric | best | LTE (rank) | LTE best or tied | pLTE | pLTE beats every baseline "
        "| best baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    counts: dict[str, tuple[int, int, int, int]] = {}
    for scenario in board["scenarios"]:
        lte_ok = plte_ok = n = n_core = 0
        for metric in TARGET_METRICS:
            key = f"{scenario}/{metric}"
            direction = directions.get((scenario, metric))
            column = {m: cells[m][key] for m in board["methods"] if key in cells.get(m, {})}
            if direction is None or not column:
                continue
            n += 1
            best = next(m for m, c in column.items() if c["best"])
            base = [m for m in baselines if m in column]
            pick = min if direction == "lower" else max  # the first of equal values, like the leaderboard's best
            top_base = pick(base, key=lambda m: column[m]["value"])
            lte, plte = column.get("lte"), column.get("plte")
            lte_best = bool(lte and (lte["best"] or lte["tied_with_best"]))
            plte_beats = bool(plte and _better(plte["value"], column[top_base]["value"], direction))
            lte_ok += lte_best
            if metric in CORE_METRICS:
                n_core += 1
                plte_ok += plte_beats
            lte_text = f"{lte['value']:.2f} ({lte['rank']:g})" if lte else "—"
            plte_text = f"{plte['value']:.2f}" if plte else "—"
            arrow = "↓" if direction == "lower" else "↑"
            lines.append(
                f"| {scenario} | {metric} {arrow} | {best} {column[best]['value']:.2f} | {lte_text} | "
                f"{'yes' if lte_best else 'no'} | {plte_text} | {'yes' if plte_beats else 'no'} | "
                f"{top_base} {column[top_base]['value']:.2f} |"
            )
        counts[scenario] = (lte_ok, n, plte_ok, n_core)
    lines += [
        "",
        "| scenario | LTE best or tied with the best | pLTE ahead of every non-learned baseline (core metrics) |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {a} of {n} | {b} of {m} |" for s, (a, n, b, m) in counts.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("leaderboard", type=Path, help="OUT/leaderboard.json of explainers benchmark")
    args = parser.parse_args()
    print(targets_markdown(json.loads(args.leaderboard.read_text())), end="")


if __name__ == "__main__":
    main()
