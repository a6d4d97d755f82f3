"""Run ``explainers benchmark``, check its page in a real headless browser, and record the results.

    python benchmarks/leaderboard.py --out /tmp/bench [--images N] [--scenarios a,b] [--methods x,y]

Writes ``benchmarks/results/benchmark.md`` (machine, command, wall time, the separation summary and the
leaderboard's tables) and ``benchmarks/results/leaderboard.png`` (a Chromium screenshot of the page: the
page opens, and its tables and plots render). Needs ``chromium`` on the PATH for the screenshot
(``apt-get install chromium``); without it the script stops with an error rather than skipping the check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _timing import machine

RESULTS = Path(__file__).resolve().parent / "results"


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no chromium on the PATH: install it (apt-get install chromium) to check the page in a browser")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={png}",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file() or png.stat().st_size < 10_000:
        sys.exit(f"chromium wrote no usable screenshot of {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--scenarios", default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--no-record", action="store_true", help="Do not write into benchmarks/results.")
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="A line for the record's header (repeatable), e.g. how long the runs that filled a reused "
        "output folder took.",
    )
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "explainers", "benchmark", "--out", str(args.out), "--quiet"]
    for flag, value in (("--images", args.images), ("--scenarios", args.scenarios), ("--methods", args.methods)):
        if value is not None:
            cmd += [flag, str(value)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start

    png = (RESULTS if not args.no_record else args.out) / "leaderboard.png"
    screenshot(args.out / "leaderboard.html", png)
    board = json.loads((args.out / "leaderboard.json").read_text())
    lines = [
        "# Benchmark leaderboard",
        "",
        f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- command: `explainers {' '.join(cmd[3:])}` (via `python benchmarks/leaderboard.py`)",
        f"- wall time: {seconds:.0f} s (everything explained from scratch unless the output folder was reused)",
        f"- page checked in headless Chromium: `{png.name}`",
        *(f"- {note}" for note in args.note),
        "",
        "## Does each scenario separate methods?",
        "",
        "A method counts as below random on a metric when it ranks below it and the paired test over the same "
        "images says they differ (p < 0.05); ranked below but tied is at chance, which is what an "
        "uninformative map scores.",
        "",
        "| scenario | random last on every metric | worse than random | at chance (below random, tied) | "
        "metrics where two methods differ beyond their 95 % CIs |",
        "|---|---|---|---|---|",
    ]

    def per_metric(entry: dict) -> str:
        return "; ".join(f"{metric}: {', '.join(methods)}" for metric, methods in entry.items()) or "—"

    for scenario, s in board["separation"].items():
        lines.append(
            f"| {scenario} | {s['floor_last']} | {per_metric(s.get('below_floor', {}))} | "
            f"{per_metric(s.get('at_chance', {}))} | {', '.join(s['separated']) or 'none'} |"
        )
    lines += ["", (args.out / "leaderboard.md").read_text().split("\n", 1)[1]]
    text = "\n".join(lines)
    if args.no_record:
        print(text)
    else:
        (RESULTS / "benchmark.md").write_text(text)
        print(f"recorded {RESULTS / 'benchmark.md'} and {png}")


if __name__ == "__main__":
    main()
