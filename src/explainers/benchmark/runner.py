"""``explainers benchmark``: every method on every scenario, evaluated, ranked into one leaderboard.

Layout of the output folder (everything is reused by a rerun, so an interrupted benchmark resumes)::

    OUT/data/<scenario>/                 the scenario's test scenes (deterministic; regenerated only if the
                                         configuration differs)
    OUT/<scenario>/masks/<method>.h5     one mask file per method (complete files made with the same method
                                         configuration and explainee are reused; partial ones resumed)
    OUT/<scenario>/timing.json           explain seconds per method (the cost column)
    OUT/<scenario>/report/               the evaluation report (metrics.json/.md/.npz, curves, heatmaps)
    OUT/<scenario>/evaluation.pkl        the evaluation, reused while the mask files and metrics are the same
    OUT/leaderboard.{html,md,json}       the leaderboard over all scenarios

Every scenario explains the **ground-truth** class (its labels are exact) and scores with that class.
Methods that need a learned explainer run only where one ships for the scenario's explainee; what was
left out, and why, is printed and recorded on the leaderboard.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from explainers.benchmark.leaderboard import Leaderboard, build_leaderboard, to_html, to_json, to_markdown
from explainers.benchmark.sanity import randomization_test
from explainers.benchmark.scenarios import DEFAULT_IMAGES, SCENARIOS, Scenario, asset, get_scenario
from explainers.data import open_dataset
from explainers.data.base import collate
from explainers.data.synthetic import SyntheticConfig, generate_synthetic
from explainers.devices import resolve_device
from explainers.errors import ExplainersError
from explainers.explain import explain_dataset
from explainers.io.atomic import write_bytes_atomic, write_text_atomic
from explainers.io.maskfile import MaskFile, MaskFileError
from explainers.methods import METHODS, Need, get_method
from explainers.metrics.evaluate import EvaluationResult, evaluate_maskfiles
from explainers.metrics.report import write_report
from explainers.models import load_explainee

#: Metrics of every scenario: perturbation, deletion/insertion, segmentation and localisation.
BENCHMARK_METRICS = "pos,neg,deletion,insertion,miou,pointing-game,energy-in-gt"
#: Lighter settings for the two costliest baselines (recorded in every mask file's method config).
METHOD_OPTIONS: dict[str, dict[str, Any]] = {"integrated-gradients": {"steps": 20}, "rise": {"num_masks": 1000}}
#: The scenario asset each learned method (``Need.CHECKPOINT``) loads: LTE refines the shipped pLTE.
LEARNED_ASSETS = {"plte": "plte", "lte": "plte", "leta": "leta"}
#: Images per scenario for the model-parameter randomisation check (0: skip it).
SANITY_IMAGES = 16


def _sanity(
    path: Path, adapter: Any, dataset: Any, methods: dict[str, dict[str, Any]], images: int
) -> dict[str, dict[str, float]]:
    """Mean Spearman correlation of each method's maps under the randomisation of the last block and of
    every block (:mod:`explainers.benchmark.sanity`), reused from ``path`` when already measured."""
    n = min(images, len(dataset))
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    key = {"images": n, "explainee": adapter.describe()}
    if recorded.get("key") != json.loads(json.dumps(key)):
        recorded = {"key": key, "methods": {}}
    todo = {m: o for m, o in methods.items() if recorded["methods"].get(m, {}).get("options") != o}
    if todo:
        batch = collate([dataset[i] for i in range(n)], adapter.input_geometry)
        images_t, targets = batch.images.to(adapter.device), batch.labels.to(adapter.device)
        for name, options in todo.items():
            rho = randomization_test(name, adapter, images_t, targets, options=options)
            recorded["methods"][name] = {
                "options": options,
                "spearman": {str(k): float(torch.as_tensor(v).mean()) for k, v in rho.items()},
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(recorded, indent=2) + "\n")
    return {m: recorded["methods"][m]["spearman"] for m in methods}


def training_seconds(folder: Path) -> float | None:
    """Training wall time recorded with a shipped learned explainer, or None when it records none.

    LETA records it as ``training.wall_s`` in its ``config.json``. pLTE's ``log.jsonl`` gives each epoch's
    ``time_s``, counted from the start of a run (a resumed run counts from 0 again), so the total is the
    sum of the last ``time_s`` of every run.
    """
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    wall = (config.get("training") or {}).get("wall_s")
    if isinstance(wall, int | float):
        return float(wall)
    try:
        lines = (folder / "log.jsonl").read_text().splitlines()
    except OSError:
        return None
    times = [float(r["time_s"]) for r in map(json.loads, filter(None, lines)) if r.get("time_s") is not None]
    if not times:
        return None
    ends = [t for t, after in zip(times, [*times[1:], None], strict=True) if after is None or after < t]
    return float(sum(ends))


def prepare_scenario_data(scenario: Scenario, root: Path, images: int, progress: bool) -> Path:
    """The scenario's first ``images`` test scenes (identical to those of its full dataset: scenes are a
    pure function of seed, split and index)."""
    config = SyntheticConfig(**{**scenario.synthetic, "train_size": 0, "val_size": 0, "test_size": images})
    folder = root / "data" / scenario.name
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("config") == config.to_dict():
                return folder
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: regenerate below
    generate_synthetic(folder, config, progress=progress, overwrite=True)
    return folder


def _reusable(path: Path, method_config: dict[str, Any], explainee: dict[str, Any], count: int) -> bool:
    if not path.is_file():
        return False
    try:
        with MaskFile(path) as mf:
            same_explainee = mf.explainee == json.loads(json.dumps(explainee))
            return mf.method_config == json.loads(json.dumps(method_config)) and same_explainee and len(mf) == count
    except MaskFileError:
        return False


def _evaluation_key(files: Sequence[Path], metrics: str, explainee: dict[str, Any], spec: str) -> dict[str, Any]:
    """What an evaluation depends on: the mask files (name, size, modification time), the metrics, the
    explainee and the scenes."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return json.loads(json.dumps({"files": stats, "metrics": metrics, "explainee": explainee, "data": spec}))


def _cached_evaluation(path: Path, key: dict[str, Any]) -> EvaluationResult | None:
    """The scenario's evaluation from ``path`` when it was made from the same mask files and settings.

    Scoring is the costliest part of a benchmark (every perturbation curve is dozens of forward passes per
    image), so a rerun that only adds a scenario, or one that redraws the leaderboard, skips it. The cache
    is a pickle that the benchmark itself wrote into its own output folder; an unreadable or stale one is
    recomputed.
    """
    if not path.is_file():
        return None
    try:
        cached = pickle.loads(path.read_bytes())
    except Exception:
        return None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("result"), EvaluationResult):
        return cached["result"]
    return None


def _store_evaluation(path: Path, key: dict[str, Any], result: EvaluationResult) -> None:
    write_bytes_atomic(path, pickle.dumps({"key": key, "result": result}))


def run_benchmark(
    out: str | Path,
    *,
    scenarios: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    images: int = DEFAULT_IMAGES,
    explainees: dict[str, str] | None = None,
    metrics: str = BENCHMARK_METRICS,
    sanity_images: int = SANITY_IMAGES,
    device: str | None = None,
    given: Mapping[str, EvaluationResult] | None = None,
    given_ms_per_image: Mapping[str, float] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Leaderboard:
    """Run ``methods`` (default: every registered one) on ``scenarios`` (default: every scenario whose
    explainee ships or is given in ``explainees``; an empty list runs none) and write the leaderboard into
    ``out``, on ``device`` (default: this process's GPU if any, else the CPU).

    ``given``: evaluations already made elsewhere (the demo's main comparison), ranked first, with their
    explain cost per image in ``given_ms_per_image``.
    """
    if images < 2:
        raise ExplainersError(f"--images must be at least 2 per scenario, got {images}")
    explainees = dict(explainees or {})
    unknown = sorted(set(explainees) - set(SCENARIOS))
    if unknown:
        raise ExplainersError(f"--explainee-for names unknown scenario(s) {unknown}; valid: {', '.join(SCENARIOS)}")
    registered = METHODS.names()
    chosen_methods = list(methods) if methods else list(registered)
    bad = [m for m in chosen_methods if m not in registered]
    if bad:
        raise ExplainersError(f"unknown method(s) {bad}; available: {', '.join(registered)}")
    notes: list[str] = []
    if scenarios is not None:
        chosen = [get_scenario(s) for s in scenarios]
        for s in chosen:
            if s.name not in explainees and asset(s.explainee) is None:
                raise ExplainersError(
                    f"scenario {s.name!r} has no shipped explainee (assets/{s.explainee}); train one (see "
                    f"docs/benchmark.md) and pass --explainee-for {s.name}=DIR"
                )
    else:
        chosen = [s for s in SCENARIOS.values() if s.name in explainees or asset(s.explainee) is not None]
        for s in SCENARIOS.values():
            if s not in chosen:
                notes.append(f"scenario {s.name} not run: no shipped explainee (assets/{s.explainee})")
    for note in notes:
        echo(f"note: {note}")

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, EvaluationResult] = dict(given or {})
    seconds_per_image: dict[str, list[float]] = {m: [ms] for m, ms in (given_ms_per_image or {}).items()}
    scenario_costs: dict[str, dict[str, dict[str, float]]] = {
        name: {m: {"ms_per_image": ms} for m, ms in (given_ms_per_image or {}).items()} for name in (given or {})
    }
    trained: dict[str, dict[str, float]] = {}  # method → asset folder → training seconds
    board_sanity: dict[str, dict[str, dict[str, float]]] = {}
    for k, scenario in enumerate(chosen, start=1):
        echo(f"[{k}/{len(chosen)}] scenario {scenario.name}: {scenario.description}")
        data_dir = prepare_scenario_data(scenario, root, images, progress)
        spec = f"synthetic:{data_dir}"
        dataset = open_dataset(spec, split="test")
        explainee_spec = explainees.get(scenario.name) or str(asset(scenario.explainee))
        adapter = load_explainee(explainee_spec, device=str(resolve_device(device)))
        scenario_dir = root / scenario.name
        timing_path = scenario_dir / "timing.json"
        timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
        files = []
        sanity_methods: dict[str, dict[str, Any]] = {}
        for name in chosen_methods:
            options = dict(METHOD_OPTIONS.get(name, {}))
            if Need.CHECKPOINT in METHODS[name].needs:
                # A learned explainer belongs to one explainee: the shipped one only fits the shipped model.
                kind = LEARNED_ASSETS.get(name)
                folder = None
                if kind is not None and scenario.name not in explainees:
                    folder = asset(getattr(scenario, kind))
                if folder is None:
                    what = f"{kind} explainer" if kind else "trained explainer"
                    notes.append(f"{scenario.name}: {name} not run (no {what} for its explainee)")
                    echo(f"      {name}: skipped, no {what} ships for this explainee")
                    continue
                options["explainer"] = str(folder)
                seconds = training_seconds(folder)
                if seconds is not None:
                    trained.setdefault(name, {})[str(folder)] = seconds
                    scenario_costs.setdefault(scenario.name, {}).setdefault(name, {})["train_seconds"] = seconds
            method = get_method(name, adapter, **options)
            sanity_methods[name] = options
            path = scenario_dir / "masks" / f"{name}.h5"
            if _reusable(path, method.config(), adapter.describe(), len(dataset)) and name in timing:
                files.append(path)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            summary = explain_dataset(
                method,
                dataset,
                path,
                targets="target",
                overwrite=True,
                progress=progress,
                dataset_spec=spec,
            )
            if summary is not None and summary.written:
                timing[name] = {"seconds": round(time.perf_counter() - start, 3), "images": summary.written}
                write_text_atomic(timing_path, json.dumps(timing, indent=2) + "\n")
            files.append(path)
        if sanity_images:
            board_sanity[scenario.name] = _sanity(
                scenario_dir / "sanity.json", adapter, dataset, sanity_methods, sanity_images
            )
        scenario_metrics = ",".join(m for m in (metrics, scenario.extra_metrics) if m)
        cache, key = scenario_dir / "evaluation.pkl", _evaluation_key(files, scenario_metrics, adapter.describe(), spec)
        result = _cached_evaluation(cache, key)
        if result is None:
            result = evaluate_maskfiles(
                adapter, dataset, files, scenario_metrics, classes="target", progress=progress, dataset_spec=spec
            )
            _store_evaluation(cache, key, result)
        write_report(result, scenario_dir / "report")
        results[scenario.name] = result
        ran = {f.label for f in result.files}
        for name, t in timing.items():
            if name not in ran:
                continue  # explained in an earlier run with other --methods
            ms = 1000.0 * t["seconds"] / max(1, t["images"])
            seconds_per_image.setdefault(name, []).append(ms)
            scenario_costs.setdefault(scenario.name, {}).setdefault(name, {})["ms_per_image"] = ms

    if not results:
        raise ExplainersError(
            "nothing to rank: no scenario has an explainee here; pass --explainee-for SCENARIO=DIR (docs/benchmark.md)"
        )
    costs: dict[str, dict[str, float]] = {
        m: {"ms_per_image": sum(v) / len(v)} for m, v in seconds_per_image.items()
    }
    for m, per_folder in trained.items():
        costs.setdefault(m, {})["train_seconds"] = sum(per_folder.values()) / len(per_folder)
    board = build_leaderboard(results, costs=costs, scenario_costs=scenario_costs)
    board.notes = notes + board.notes
    board.sanity = board_sanity
    write_text_atomic(root / "leaderboard.json", json.dumps(to_json(board), indent=2) + "\n")
    write_text_atomic(root / "leaderboard.md", to_markdown(board))
    write_text_atomic(root / "leaderboard.html", to_html(board))
    echo(f"leaderboard: {root / 'leaderboard.html'} (also .md, .json)")
    return board
