"""``explainers demo``: the whole pipeline on the embedded benchmark, offline, in a few minutes on a CPU.

1. generate the synthetic scenes (the test split of the shipped explainee's data; everything with
   ``retrain``);
2. load the shipped small ViT explainee (or train it again) and measure its test accuracy;
3. explain test images with the baselines and the learned explainers whose weights ship;
4. score every method with the evaluation suite and write the comparison table, curves and heatmaps;
5. explain downstream tasks of the same encoder (linear probes for the object's colour and size) with the
   one pre-trained LETA explainer, which never saw those tasks, next to baselines on the same probes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from explainers.benchmark.runner import run_benchmark
from explainers.benchmark.scenarios import SCENARIOS, asset
from explainers.data import open_dataset
from explainers.data.base import ImageDataset
from explainers.data.synthetic import TASKS, SyntheticConfig, generate_synthetic
from explainers.errors import ExplainersError
from explainers.explain import explain_dataset
from explainers.io.atomic import write_text_atomic
from explainers.methods import available_methods, get_method
from explainers.metrics.evaluate import evaluate_maskfiles
from explainers.metrics.report import to_markdown, write_report
from explainers.models import load_explainee, probe_explainee
from explainers.training.classifier import evaluate_accuracy, train_classifier


@dataclass(frozen=True)
class DemoMethod:
    name: str
    options: dict[str, Any]
    #: Shipped asset the method needs (relative to the package's assets folder), if any.
    asset: str | None = None


# RISE and IG are far costlier than the rest; the demo uses lighter settings and says so in the report.
DEMO_METHODS: tuple[DemoMethod, ...] = (
    DemoMethod("random", {}),
    DemoMethod("raw-attention", {}),
    DemoMethod("rollout", {}),
    DemoMethod("attention-gradcam", {}),
    DemoMethod("gae", {}),
    DemoMethod("transformer-attribution", {}),
    DemoMethod("partial-lrp", {}),
    DemoMethod("lrp", {}),
    DemoMethod("attnlrp", {}),
    DemoMethod("legrad", {}),
    DemoMethod("integrated-gradients", {"steps": 20}),
    DemoMethod("rise", {"num_masks": 1000}),
    # The `single` scenario's pLTE, so that the demo's comparison and `explainers benchmark` rank the same one.
    DemoMethod("plte", {}, asset=SCENARIOS["single"].plte),
    DemoMethod("lte", {}, asset=SCENARIOS["single"].plte),
)


# Every metric family; patch-insertion is left out only to keep the demo short (patch-deletion, its
# mirror, stays). ``explainers evaluate --metrics all`` computes it.
DEMO_METRICS = (
    "pos,neg,deletion,neg-deletion,insertion,patch-deletion,adp,pic,pixel-accuracy,miou,map,pointing-game,energy-in-gt"
)

# The leaderboard that ends the demo: the main comparison above plus a quick run of the other scenarios
# whose explainee ships (docs/benchmark.md), with these methods on a few scenes each.
DEMO_BENCHMARK_METHODS: tuple[str, ...] = ("random", "rollout", "gae", "attnlrp", "legrad", "plte")
DEMO_BENCHMARK_IMAGES = 16
DEMO_SANITY_IMAGES = 8


# Downstream tasks: linear probes on the shipped explainee's frozen encoder, explained by LETA
# (docs/learned-explainers.md).
DEMO_DOWNSTREAM_TASKS: tuple[str, ...] = ("color", "size")
DEMO_DOWNSTREAM_METHODS: tuple[DemoMethod, ...] = (
    DemoMethod("random", {}),
    DemoMethod("rollout", {}),
    DemoMethod("gae", {}),
    DemoMethod("leta", {}, asset="leta"),
)
# Patch deletion/insertion with LETA's own masking (removed patches take the encoder's mean colour).
DEMO_DOWNSTREAM_METRICS = "pos,neg,patch-deletion,patch-insertion,miou"
DEMO_DOWNSTREAM_OPTIONS = {"patch-deletion": {"fill": "mean"}, "patch-insertion": {"fill": "mean"}}


def assets_dir() -> Path:
    return Path(str(resources.files("explainers") / "assets"))


def prepare_data(out: Path, n_test: int, full: bool, progress: bool) -> Path:
    """The demo's synthetic data: the first ``n_test`` test scenes of the default config (identical to the
    shipped explainee's test split, which is deterministic per index), or the whole default dataset."""
    default = SyntheticConfig()
    config = default if full else dataclasses.replace(default, train_size=0, val_size=0, test_size=n_test)
    folder = out / ("data-full" if full else "data")
    manifest = folder / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded.get("config") == config.to_dict() and set(recorded.get("tasks", {})) == set(TASKS):
            return folder  # already generated with this exact config (by this version's generator)
    generate_synthetic(folder, config, progress=progress, overwrite=True)
    return folder


def run_demo(
    out: str | Path = "explainers-demo",
    *,
    retrain: bool = False,
    explainee: str | None = None,
    num_images: int = 32,
    accuracy_images: int = 1000,
    methods: list[str] | None = None,
    downstream: bool = True,
    progress: bool = True,
    echo=print,
    device: str | None = None,
    leaderboard: bool = True,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary written to ``out/summary.json``.

    ``leaderboard`` ends the demo with the leaderboard of the main comparison and a quick run of the other
    benchmark scenarios whose explainees ship (only with the shipped explainee).

    ``device`` runs the explainee and explainers there (default: the CPU).
    ``methods`` replaces the main comparison's method list; ``downstream`` adds LETA on the probes' tasks
    (only with the shipped explainee, whose encoder the shipped LETA explainer and probes belong to).
    """
    if retrain and explainee is not None:
        raise ExplainersError("--retrain and --explainee exclude each other")
    if num_images < 2 or accuracy_images < 1:
        raise ExplainersError("--images must be at least 2 and --accuracy-images at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    echo("[1/6] generating the embedded benchmark scenes")
    data_dir = prepare_data(out, max(num_images, accuracy_images), full=retrain, progress=progress)
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    if retrain:
        echo("[2/6] training the small ViT explainee from scratch (--retrain)")
        train_classifier(data_dir, out / "explainee", progress=progress, overwrite=True)
        explainee_spec = str(out / "explainee")
    elif explainee is not None:
        echo(f"[2/6] loading the explainee {explainee}")
        explainee_spec = explainee
    else:
        echo("[2/6] loading the shipped small ViT explainee")
        explainee_spec = "embedded"
    adapter = load_explainee(explainee_spec, device=device)
    test = open_dataset(f"synthetic:{data_dir}", split="test")
    accuracy_set = _first(test, accuracy_images)
    accuracy = evaluate_accuracy(adapter, accuracy_set)
    timings["explainee_s"] = time.perf_counter() - t
    echo(f"      explainee test accuracy: {accuracy:.2%} on {len(accuracy_set)} images")

    t = time.perf_counter()
    chosen = _choose_methods(methods)
    echo(f"[3/6] explaining {num_images} test images with {len(chosen)} methods: {', '.join(m.name for m in chosen)}")
    mask_files, method_seconds = _explain_all(adapter, test, chosen, out / "masks", num_images, data_dir, progress)
    timings["explain_s"] = time.perf_counter() - t

    t = time.perf_counter()
    echo("[4/6] evaluating: perturbation AUCs, deletion/insertion, ADP/PIC, segmentation against exact masks")
    result = evaluate_maskfiles(
        adapter,
        test,  # the mask files name their images; the class convention is theirs (target)
        mask_files,
        DEMO_METRICS,
        progress=progress,
        dataset_spec=f"synthetic:{data_dir}",
    )
    paths = write_report(result, out / "report")
    timings["evaluate_s"] = time.perf_counter() - t
    echo("")
    echo(to_markdown(result))

    t = time.perf_counter()
    downstream_summary: dict[str, Any] = {}
    if explainee_spec == "embedded" and downstream:
        downstream_summary = _downstream_tasks(out, data_dir, num_images, progress, echo, device)
    timings["downstream_s"] = time.perf_counter() - t

    t = time.perf_counter()
    board_paths: dict[str, str] = {}
    if leaderboard:
        board_paths = _leaderboard(out, result, method_seconds, num_images, explainee_spec, progress, echo, device)
    timings["leaderboard_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    summary = {
        "explainee": explainee_spec,
        "explainee_test_accuracy": accuracy,
        "accuracy_images": len(accuracy_set),
        "explained_images": num_images,
        "methods": {m.name: {"options": m.options, "explain_seconds": method_seconds[m.name]} for m in chosen},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "report": {k: str(v) for k, v in paths.items()},
        "downstream": downstream_summary,
        "leaderboard": board_paths,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    echo(
        f"explainee accuracy {accuracy:.2%}; report in {out / 'report'} (metrics.md, curves.png, heatmaps.png)"
        + (f", downstream tasks in {out / 'downstream'}" if downstream_summary else "")
        + (f", leaderboard {board_paths['html']}" if board_paths else "")
        + f"; total {timings['total_s']:.0f} s"
    )
    return summary


def _leaderboard(
    out: Path,
    result: Any,
    method_seconds: dict[str, float],
    num_images: int,
    explainee_spec: str,
    progress: bool,
    echo,
    device: str | None,
) -> dict[str, str]:
    """Rank the main comparison (the ``single`` scenario) together with a quick run of the other scenarios."""
    others = [s.name for s in SCENARIOS.values() if s.name != "single" and asset(s.explainee) is not None]
    if explainee_spec != "embedded":
        others = []  # the scenarios' explainees stand beside the shipped one; a user's own model ranks alone
    # The same methods in every scenario, so that the overall rank compares like with like.
    methods = [m for m in DEMO_BENCHMARK_METHODS if m in available_methods() and m in method_seconds]
    if not methods:
        return {}
    result = dataclasses.replace(result, files=[f for f in result.files if f.label in methods])
    echo(
        "[6/6] leaderboard: the comparison above"
        + (
            f" and the {', '.join(others)} scenario(s) ({DEMO_BENCHMARK_IMAGES} scenes, {', '.join(methods)})"
            if others
            else ""
        )
    )
    board = run_benchmark(
        out / "benchmark",
        scenarios=others,
        methods=methods,
        images=DEMO_BENCHMARK_IMAGES,
        sanity_images=DEMO_SANITY_IMAGES,
        device=device,
        given={"single": result},
        given_ms_per_image={m: 1000.0 * method_seconds[m] / num_images for m in methods},
        progress=progress,
        echo=lambda line: echo(f"      {line}"),
    )
    ranking = board.ranking()
    echo(f"      overall rank: {', '.join(f'{k}. {m}' for k, m in enumerate(ranking[:5], start=1))}")
    return {kind: str(out / "benchmark" / f"leaderboard.{kind}") for kind in ("html", "md", "json")}


def _explain_all(
    adapter: Any,
    dataset: Any,
    chosen: list[DemoMethod],
    mask_dir: Path,
    num_images: int,
    data_dir: Path,
    progress: bool,
) -> tuple[list[Path], dict[str, float]]:
    """Explain the first ``num_images`` of ``dataset`` with every chosen method into ``mask_dir/NAME.h5``."""
    mask_dir.mkdir(parents=True, exist_ok=True)
    mask_files, method_seconds = [], {}
    for spec in chosen:
        options = dict(spec.options)
        if spec.asset is not None:
            options.setdefault("explainer", str(assets_dir() / spec.asset))
        method = get_method(spec.name, adapter, **options)
        start = time.perf_counter()
        path = mask_dir / f"{spec.name}.h5"
        explain_dataset(
            method,
            dataset,
            path,
            batch_size=16,
            # The ground-truth class, for every method: the shipped pLTE was trained for it, so LTE refines
            # towards it (and the scenes are all labelled).
            targets="target",
            limit=num_images,
            overwrite=True,
            resume=False,
            progress=progress,
            dataset_spec=f"synthetic:{data_dir}",
        )
        method_seconds[spec.name] = round(time.perf_counter() - start, 2)
        mask_files.append(path)
    return mask_files, method_seconds


def _downstream_tasks(
    out: Path, data_dir: Path, num_images: int, progress: bool, echo, device: str | None = None
) -> dict[str, Any]:
    """LETA (one pre-trained explainer, no task training) on the probes' tasks, next to baselines."""
    tasks = [t for t in DEMO_DOWNSTREAM_TASKS if (assets_dir() / "probes" / t / "config.json").exists()]
    chosen = _choose_methods([m.name for m in DEMO_DOWNSTREAM_METHODS], DEMO_DOWNSTREAM_METHODS)
    if not tasks or not any(m.name == "leta" for m in chosen):
        return {}
    echo(f"[5/6] downstream tasks of the same encoder ({', '.join(tasks)}): LETA, pre-trained once, no task training")
    summary: dict[str, Any] = {}
    for task in tasks:
        adapter = probe_explainee(assets_dir() / "probes" / task)
        if device is not None:
            adapter.to(device)
        test = open_dataset(f"synthetic:{data_dir}", split="test", task=task)
        task_dir = out / "downstream" / task
        files, seconds = _explain_all(adapter, test, chosen, task_dir / "masks", num_images, data_dir, progress)
        result = evaluate_maskfiles(
            adapter,
            test,
            files,
            DEMO_DOWNSTREAM_METRICS,
            metric_options=DEMO_DOWNSTREAM_OPTIONS,
            progress=progress,
            dataset_spec=f"synthetic:{data_dir}",
        )
        paths = write_report(result, task_dir / "report")
        accuracy = evaluate_accuracy(adapter, _first(test, num_images))
        echo(f"\ntask {task!r} (linear probe, accuracy {accuracy:.2%} on these {num_images} images)")
        echo(to_markdown(result))
        summary[task] = {
            "probe_accuracy": accuracy,
            "explain_seconds": seconds,
            "report": {k: str(v) for k, v in paths.items()},
        }
    return summary


class _Prefix(ImageDataset):
    """The first ``n`` images of a dataset as a dataset (a view, no copies). Module-level, so that it
    pickles into DataLoader workers under any start method; ids and labels come from the dataset without
    decoding images."""

    def __init__(self, dataset: ImageDataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.name, self.class_names = f"{dataset.name} (first {n})", dataset.class_names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):  # type: ignore[override]
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset[index]

    @property
    def ids(self) -> list[str]:
        return self.dataset.ids[: self.n]

    def label_of(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset.label_of(index)


def _first(dataset: ImageDataset, n: int) -> ImageDataset:
    return _Prefix(dataset, n)


def _choose_methods(names: list[str] | None, defaults: tuple[DemoMethod, ...] = DEMO_METHODS) -> list[DemoMethod]:
    registered = set(available_methods())
    by_name = {m.name: m for m in defaults}
    if names:
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise ExplainersError(f"unknown method(s) {unknown}; available: {', '.join(sorted(registered))}")
        chosen = [by_name.get(n, DemoMethod(n, {})) for n in names]
    else:
        chosen = [m for m in defaults if m.name in registered]
    missing = [m for m in chosen if m.asset is not None and not (assets_dir() / m.asset / "config.json").exists()]
    return [m for m in chosen if m not in missing]
