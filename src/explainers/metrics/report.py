"""Write an :class:`~explainers.metrics.evaluate.EvaluationResult`: ``metrics.json`` (values, summaries,
config, versions, machine), ``metrics.npz`` (per-image arrays), ``metrics.md`` (one comparison table),
``curves.png`` (mean perturbation curves) and ``heatmaps.png`` (the first images with each file's maps).
The report is written as one unit (:func:`explainers.io.atomic.write_files_together`): every file is
written in full under a temporary name first, so a failed write leaves the previous report untouched; the
old ``metrics.json`` is removed before the renames and the new one renamed last, so a report with a
``metrics.json`` is always one complete, consistent set (its ``report_files`` lists the others' SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from explainers._version import __version__
from explainers.io.atomic import write_files_together
from explainers.io.lock import OutputLock
from explainers.maps import overlay
from explainers.metrics.evaluate import EvaluationResult

#: Every file a report may hold (a new report removes the old ones it does not rewrite).
REPORT_FILES = ("metrics.json", "metrics.npz", "metrics.md", "curves.png", "heatmaps.png")
_ARROW = {"lower": "↓", "higher": "↑"}


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers."""
    out = {
        "explainers": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: EvaluationResult) -> dict[str, Any]:
    return _clean(
        {
            "format": "explainers-metrics",
            "format_version": 1,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "config": result.config,
            "metrics": result.metrics,
            "curve_x": result.curve_x,
            "results": [
                {
                    "label": f.label,
                    "maskfile": f.info,
                    "num_images": len(f.ids),
                    "excluded_nonfinite": f.excluded,
                    "maps": f.maps_info,
                    "checks": f.checks,
                    "values": {name: s["value"] for name, s in f.summaries.items()},
                    "summaries": f.summaries,
                    "mean_curves": {
                        name: np.nanmean(c, axis=0).tolist() for name, c in f.curves.items() if len(c)
                    },
                    "per_image_npz_prefix": f"r{k}",
                }
                for k, f in enumerate(result.files)
            ],
            "warnings": result.warnings,
            "timing": result.timing,
            "versions": versions(),
            "machine": machine(),
        }
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}"


def comparison_table(result: EvaluationResult) -> list[str]:
    """Markdown rows: one per mask file, a column per metric (value ± 95% CI half-width of the mean)."""
    metrics = result.metrics
    head = (
        "| method | images | " + " | ".join(f"{m['name']} {_ARROW[m['direction']]}" for m in metrics) + " |"
    )
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for f in result.files:
        cells = []
        for m in metrics:
            s = f.summaries[m["name"]]
            lo, hi = s["ci95"]
            half = None if lo is None or hi is None else (hi - lo) / 2
            cell = _fmt(s["value"])
            if half is not None and s["value"] is not None:
                cell += f" ± {half:.2f}"
            cells.append(cell)
        lines.append(f"| {f.label} | {len(f.ids)} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(result: EvaluationResult) -> str:
    """The comparison table, then what each metric means and notes (exclusions, map normalisation)."""
    metrics = result.metrics
    lines = [
        f"# Evaluation on {result.config['dataset']}",
        "",
        f"Explainee: `{result.config['explainee'].get('identifier')}`; class convention: "
        f"`{result.config['classes']}`; {result.timing['images']} images.",
        "",
        *comparison_table(result),
    ]
    lines += ["", "± = half-width of the 95% confidence interval of the per-image mean (Student t).", ""]
    lines.append("| metric | better | class | options | unit |")
    lines.append("|---|---|---|---|---|")
    for m in metrics:
        cls = result.files[0].summaries[m["name"]]["class"] if result.files else ""
        lines.append(f"| {m['name']} | {m['direction']} | {cls} | {_options(m)} | {m['unit']} |")
    notes = [
        f"- {f.label}: {len(f.excluded)} image(s) with NaN/inf maps excluded"
        for f in result.files
        if f.excluded
    ]
    notes += [f"- {line}" for line in result.warnings]
    if any(m["category"] == "adp-pic" for m in metrics):
        notes += [
            f"- {f.label}: stored maps min–max normalised per image: {f.maps_info['minmax_normalized']}"
            for f in result.files
        ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


#: What a metric option value means, where the value alone does not say it.
_OPTION_WORDS = {
    ("fill", "mean"): "removed pixels take the explainee's mean colour, 0 in its normalised space",
    ("fill", "black"): "removed pixels are black (0 in [0,1])",
}


def _options(metric: dict[str, Any]) -> str:
    opts = metric.get("options") or {}
    if not opts:
        return "—"
    return "; ".join(
        f"{k}={v}" + (f" ({_OPTION_WORDS[(k, v)]})" if (k, v) in _OPTION_WORDS else "") for k, v in opts.items()
    )


def plot_curves(result: EvaluationResult) -> bytes | None:
    """PNG of the mean curve of every curve metric, one panel each, one line per mask file."""
    names = [m["name"] for m in result.metrics if m["name"] in result.curve_x]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        x = result.curve_x[name]
        for f in result.files:
            curve = f.curves.get(name)
            if curve is not None and len(curve):
                ax.plot(x, np.nanmean(curve, axis=0), marker="." if len(x) <= 20 else None, label=f.label)
        ax.set_title(name)
        ax.set_xlabel("fraction inserted" if "insertion" in name else "fraction removed")
        ax.set_ylabel("accuracy" if name in ("pos", "neg") else "probability of the class")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def plot_heatmaps(result: EvaluationResult, alpha: float = 0.4) -> bytes | None:
    """PNG grid: a row per preview image, the image then each mask file's map over it (jet, ``alpha``)."""
    preview = result.preview
    if not preview or not len(preview.get("ids", [])):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    images, ids = preview["images"], preview["ids"]
    cols = 1 + len(result.files)
    fig = Figure(figsize=(1.9 * cols, 1.9 * len(ids)))
    axes = fig.subplots(len(ids), cols, squeeze=False)
    for r, image_id in enumerate(ids):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_ylabel(image_id, fontsize="x-small")
        image = torch.from_numpy(np.ascontiguousarray(images[r])).permute(2, 0, 1)
        for c, f in enumerate(result.files, start=1):
            heat = torch.from_numpy(preview["maps"][c - 1][r])
            axes[r, c].imshow(overlay(image, heat, alpha=alpha))
            if r == 0:
                axes[r, c].set_title(f.label, fontsize="small")
        axes[r, 0].set_title("image" if r == 0 else "", fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the outputs into ``out_dir`` (metrics.json/.npz/.md, curves.png, heatmaps.png); returns
    their paths."""
    out = Path(out_dir)
    arrays: dict[str, np.ndarray] = {}
    for k, f in enumerate(result.files):
        arrays[f"r{k}/ids"] = np.asarray(f.ids, dtype=str)
        for name, values in f.per_image.items():
            arrays[f"r{k}/{name}"] = values
        for name, curve in f.curves.items():
            arrays[f"r{k}/{name}/curve"] = curve
        for name, counts in f.counts.items():
            arrays[f"r{k}/{name}/counts"] = counts
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    files: dict[str, bytes] = {"metrics.npz": buf.getvalue(), "metrics.md": to_markdown(result).encode()}
    for name, png in (("curves.png", plot_curves(result)), ("heatmaps.png", plot_heatmaps(result))):
        if png is not None:
            files[name] = png
    summary = to_json(result)
    # The JSON names its sibling files with their hashes: a reader can tell they belong together.
    summary["report_files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    files["metrics.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    # One unit, with metrics.json as the mark of a complete report; one evaluate per folder at a time.
    with OutputLock(out):
        written = write_files_together(out, files, last="metrics.json", stale=REPORT_FILES)
    keys = dict(zip(REPORT_FILES, ("json", "npz", "md", "png", "heatmaps"), strict=True))
    return {keys[name]: written[name] for name in REPORT_FILES if name in written}
