"""Procedural scenes with exact ground-truth masks: the embedded, offline benchmark (docs/benchmark.md).

Every scene holds exactly one *class object* (a filled shape: the class) with a random colour, size,
rotation and position, drawn last on top of thin clutter (lines, arcs, specks: never a filled shape) and a
textured background. The ground-truth mask is the object's pixels exactly (hard edges, no anti-aliasing,
nothing drawn over it). Each image carries four labellings: ``shape`` (the default task), ``color``
(the object's colour family), ``size`` (``small``/``large``: the object's size parameter below/above the
middle of ``object_size``) and ``quadrant`` (where the object's mask centroid lies).

Everything is a pure function of ``(config.seed, split, index)``: image ``i`` of a split is the same
whatever batch it is rendered in, so any subset can be regenerated without the files.

On disk (``generate_synthetic``)::

    DIR/manifest.json            format, version, config, tasks and class names, split counts
    DIR/images/<split>/<id>.png  RGB uint8
    DIR/masks/<split>/<id>.png   L uint8, 0 or 255
    DIR/labels/<split>.csv       id + one column per task (class index)
    DIR/attributes/<split>.csv   id + per-image scene parameters (centre, size, rotation, colour, clutter)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from explainers.data.base import ImageDataset, Sample, load_image
from explainers.errors import DatasetError

FORMAT_NAME = "explainers-synthetic"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("shape", "color", "size", "quadrant")
QUADRANTS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
SIZES: tuple[str, ...] = ("small", "large")
SCENARIOS: tuple[str, ...] = ("single", "distractors", "contrast", "cue")
OMITTABLE: tuple[str, ...] = ("object", "object_b", "distractors", "cue")

# Hue centre (degrees) of each colour family; the object's hue is jittered around it.
COLOR_FAMILIES: dict[str, float] = {"red": 0.0, "yellow": 55.0, "green": 120.0, "blue": 225.0}

# Largest distance from the centre to the shape's boundary, in units of the object's size parameter:
# used to keep the whole object inside the image.
SHAPE_EXTENT: dict[str, float] = {
    "disk": 1.0,
    "square": 0.85 * math.sqrt(2.0),
    "triangle": 1.25,
    "cross": math.hypot(1.05, 0.34),
    "star": 1.2,
    "hexagon": 0.92 / math.cos(math.pi / 6),
    "ring": 1.0,
    "semidisk": 1.0,
}
SHAPES: tuple[str, ...] = tuple(SHAPE_EXTENT)

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# Clutter slots per image, fixed so that the random stream of an image never depends on the counts drawn.
_MAX_LINES, _MAX_ARCS, _MAX_DOTS, _GRATINGS = 8, 4, 12, 2
_SLOTS = _MAX_LINES + _MAX_ARCS + _MAX_DOTS
# Scenario shapes besides the class object (distractors, or the contrast scenario's second object).
_MAX_EXTRAS = 4
# Placement attempts per extra shape; one that finds no free place is left out (counted in the attributes).
_PLACEMENT_TRIES = 24
_N_UNIFORM = 13 + 4 * _GRATINGS + 3 + 5 * _MAX_LINES + 6 * _MAX_ARCS + 3 * _MAX_DOTS + 3 * _SLOTS


@dataclass
class SyntheticConfig:
    """Everything that defines a synthetic dataset; ``SyntheticConfig()`` is the shipped explainee's data.

    Sizes are in pixels unless said otherwise; ``object_size`` is the shape's radius-like size parameter
    as a fraction of ``image_size``.
    """

    image_size: int = 64
    # Shapes that differ in their parts, not only in their outline (a solid disk, a hollow ring, the bars
    # of a cross, the sharp corners of a triangle): a small ViT trained from scratch learns them within a
    # few epochs, while disk/square/triangle/cross stayed at chance for 45k images (see
    # benchmarks/results/train_classifier.md).
    shapes: tuple[str, ...] = ("disk", "ring", "cross", "triangle")
    color_families: tuple[str, ...] = ("red", "yellow", "green", "blue")
    train_size: int = 20000
    val_size: int = 2000
    test_size: int = 2000
    seed: int = 0
    object_size: tuple[float, float] = (0.2, 0.3)  # 13–19 px at 64: the object spans 3–6 patches of 8
    rotate: bool = True
    hue_jitter: float = 12.0  # degrees
    lines: tuple[int, int] = (1, 4)
    arcs: tuple[int, int] = (0, 2)
    dots: tuple[int, int] = (2, 6)
    clutter_width: tuple[float, float] = (1.0, 1.6)
    arc_radius: tuple[float, float] = (4.0, 12.0)
    dot_radius: tuple[float, float] = (0.8, 1.6)
    background_contrast: float = 0.08
    noise: float = 0.025
    # Known-truth scenario (docs/benchmark.md): "single" (one class object: the easy case), "distractors"
    # (the class object among non-class shapes of the same colours and sizes), "contrast" (two objects of
    # different classes, each in its own half of the image), "cue" (the label is the colour of a small
    # square marker in a corner; the large class object is random and carries no label information).
    scenario: str = "single"
    distractor_shapes: tuple[str, ...] = ("square", "star", "hexagon", "semidisk")
    distractors: tuple[int, int] = (2, 3)
    cue_size: float = 0.1  # side of the cue square as a fraction of image_size

    def __post_init__(self) -> None:
        # JSON round trips give lists: store tuples so configs compare equal.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPE_EXTENT]
        if unknown or len(self.shapes) < 2 or len(set(self.shapes)) != len(self.shapes):
            raise DatasetError(
                f"shapes must be at least two distinct names from {', '.join(SHAPES)}; got {list(self.shapes)}"
            )
        bad = [c for c in self.color_families if c not in COLOR_FAMILIES]
        if bad or not self.color_families or len(set(self.color_families)) != len(self.color_families):
            raise DatasetError(
                f"color_families must be distinct names from {', '.join(COLOR_FAMILIES)}; "
                f"got {list(self.color_families)}"
            )
        if self.image_size < 16:
            raise DatasetError(f"image_size must be at least 16 pixels, got {self.image_size}")
        lo, hi = self.object_size
        if not 0 < lo <= hi or max(SHAPE_EXTENT[s] for s in self.shapes) * hi >= 0.5:
            raise DatasetError(
                f"object_size {self.object_size} must be 0 < min <= max and small enough that every shape "
                "fits inside the image (max below about 0.35)"
            )
        if min(self.train_size, self.val_size, self.test_size) < 0:
            raise DatasetError("split sizes must be >= 0")
        for name, limit in (("lines", _MAX_LINES), ("arcs", _MAX_ARCS), ("dots", _MAX_DOTS)):
            a, b = getattr(self, name)
            if not 0 <= a <= b <= limit:
                raise DatasetError(f"{name} must be (min, max) with 0 <= min <= max <= {limit}")

        if self.scenario not in SCENARIOS:
            raise DatasetError(f"unknown scenario {self.scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        bad = [d for d in self.distractor_shapes if d not in SHAPE_EXTENT or d in self.shapes]
        if self.scenario == "distractors" and (bad or not self.distractor_shapes):
            raise DatasetError(
                f"distractor_shapes must be shape names from {', '.join(SHAPES)} that are not class shapes "
                f"{list(self.shapes)}; got {list(self.distractor_shapes)}"
            )
        a, b = self.distractors
        if not 0 <= a <= b <= _MAX_EXTRAS:
            raise DatasetError(f"distractors must be (min, max) with 0 <= min <= max <= {_MAX_EXTRAS}")
        # Contrast: each object (radius extent·size + 1 px) must fit in its half of the image.
        extent = max(SHAPE_EXTENT[s] for s in self.shapes)
        if self.scenario == "contrast" and 4 * extent * hi + 4 / self.image_size > 1:
            raise DatasetError(
                f"object_size {self.object_size} is too large for the contrast scenario: two objects must fit in "
                "the two halves of the image (max below about 0.18)"
            )
        if self.scenario == "cue" and not (self.cue_size * self.image_size >= 2 and self.cue_size < 0.25):
            raise DatasetError(f"cue_size must be below 0.25 of the image and at least 2 pixels, got {self.cue_size}")

    def split_size(self, split: str) -> int:
        _check_split(split)
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]

    def class_names(self, task: str = "shape") -> list[str]:
        """Class names of ``task`` (index = label)."""
        if task == "shape":
            return list(self.shapes)
        if task == "color":
            return list(self.color_families)
        if task == "size":
            return list(SIZES)
        if task == "quadrant":
            return list(QUADRANTS)
        if task == "shape_b" and self.scenario == "contrast":
            return list(self.shapes)
        if task == "cue" and self.scenario == "cue":
            return list(self.color_families)
        raise DatasetError(f"unknown task {task!r}; valid tasks: {', '.join(self.tasks())}")

    def tasks(self) -> tuple[str, ...]:
        """The labellings of this configuration's scenes (the scenario adds ``shape_b`` or ``cue``)."""
        extra = {"contrast": ("shape_b",), "cue": ("cue",)}.get(self.scenario, ())
        return (*TASKS, *extra)

    def default_task(self) -> str:
        """The labelling a classifier of this scenario is trained on."""
        return "cue" if self.scenario == "cue" else "shape"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown synthetic config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODE:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def scene_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


# ----------------------------------------------------------------------------------------------------------
# Rendering


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV→RGB; h in degrees, s and v in [0,1]; returns (..., 3)."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1.0 - np.abs(np.mod(h, 2.0) - 1.0))
    zero = np.zeros_like(c)
    sector = np.floor(h).astype(np.int64) % 6
    table = np.stack(
        [
            np.stack([c, x, zero], -1),
            np.stack([x, c, zero], -1),
            np.stack([zero, c, x], -1),
            np.stack([zero, x, c], -1),
            np.stack([x, zero, c], -1),
            np.stack([c, zero, x], -1),
        ],
        0,
    )
    rgb = np.take_along_axis(table, sector[None, ..., None], axis=0)[0]
    return rgb + (v - c)[..., None]


def _shape_inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of unit-size shape ``name`` at object coordinates (u, v) (any broadcastable shape)."""
    rho2 = u * u + v * v
    if name == "disk":
        return rho2 <= 1.0
    if name == "ring":
        return (rho2 <= 1.0) & (rho2 >= 0.55**2)
    if name == "semidisk":
        # Centred on its own bounding box's middle so that position and size mean the same as for others.
        return (u * u + (v - 0.5) ** 2 <= 1.0) & (v <= 0.5)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.05) & (av <= 0.34)) | ((av <= 1.05) & (au <= 0.34))
    if name in ("triangle", "hexagon"):
        sides, inradius = (3, 0.625) if name == "triangle" else (6, 0.92)
        inside = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for k in range(sides):
            a = math.pi / 2 + 2 * math.pi * k / sides
            inside &= u * math.cos(a) + v * math.sin(a) <= inradius
        return inside
    if name == "star":
        # Five-pointed star: fold the angle into one sector, then test against the outer-inner edge.
        outer, inner, sector = 1.2, 0.5, 2 * math.pi / 5
        phi = np.mod(np.arctan2(u, -v), sector) - sector / 2
        rho = np.sqrt(rho2)
        px, py = rho * np.cos(phi), np.abs(rho * np.sin(phi))
        ax, ay = outer, 0.0
        bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        # Inside when on the origin's side of the edge a→b.
        cross_p = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        cross_o = (bx - ax) * (0 - ay) - (by - ay) * (0 - ax)
        return np.sign(cross_p) == np.sign(cross_o)
    raise DatasetError(f"unknown shape {name!r}; valid shapes: {', '.join(SHAPES)}")


def _scene_params(config: SyntheticConfig, split: str, index: int) -> dict[str, Any]:
    """Draw one scene's parameters from its own random stream (seed, split, index).

    All scalars come from one fixed-length uniform draw (one call is much faster than dozens), consumed in
    a fixed order that never depends on the values drawn, so every parameter is stable.
    """
    rng = np.random.default_rng([config.seed, _SPLIT_CODE[split], index])
    u = rng.random(_N_UNIFORM)
    pos = 0

    def take(k: int = 1, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        nonlocal pos
        out = lo + (hi - lo) * u[pos : pos + k]
        pos += k
        return out

    def count(bounds: tuple[int, int]) -> int:
        return min(bounds[0] + int(take()[0] * (bounds[1] - bounds[0] + 1)), bounds[1])

    size_px = config.image_size
    shape = index % len(config.shapes)  # balanced classes; everything else is random
    color = min(int(take()[0] * len(config.color_families)), len(config.color_families) - 1)
    scale = float(take(1, *config.object_size)[0]) * size_px
    margin = SHAPE_EXTENT[config.shapes[shape]] * scale + 1.0
    centre = take(2, margin, size_px - margin)  # (x, y)
    angle = float(take(1, 0.0, 2 * math.pi)[0]) if config.rotate else float(take(1)[0] * 0.0)
    hue = COLOR_FAMILIES[config.color_families[color]] + float(take(1, -1.0, 1.0)[0]) * config.hue_jitter
    sat, val = float(take(1, 0.7, 1.0)[0]), float(take(1, 0.75, 1.0)[0])

    # Background: a muted base colour, a linear gradient and two gratings, plus pixel noise.
    bg_hsv = (float(take(1, 0, 360)[0]), float(take(1, 0.0, 0.25)[0]), float(take(1, 0.3, 0.6)[0]))
    gradient = take(2, -1.0, 1.0)
    g_angle = take(_GRATINGS, 0, math.pi)
    gratings = np.stack(
        [
            # Trigonometry of per-image scalars in Python: exactly the same whatever the batch.
            np.array([math.cos(a) for a in g_angle]),
            np.array([math.sin(a) for a in g_angle]),
            take(_GRATINGS, 1.0, 6.0),  # cycles per image
            take(_GRATINGS, 0, 2 * math.pi),  # phase
            take(_GRATINGS, 0.2, 1.0),  # amplitude
        ],
        -1,
    )

    # Clutter: every slot is drawn, then only the first n of each kind are used.
    n = (count(config.lines), count(config.arcs), count(config.dots))
    lines = take(4 * _MAX_LINES, -0.1 * size_px, 1.1 * size_px).reshape(_MAX_LINES, 4)
    line_w = take(_MAX_LINES, *config.clutter_width)
    arcs = np.stack(
        [
            take(_MAX_ARCS, 0, size_px),
            take(_MAX_ARCS, 0, size_px),
            take(_MAX_ARCS, *config.arc_radius),
            take(_MAX_ARCS, 0, 2 * math.pi),
            take(_MAX_ARCS, math.pi / 3, 4 * math.pi / 3),  # span: never a closed ring
            take(_MAX_ARCS, *config.clutter_width),
        ],
        -1,
    )
    dots = np.stack([take(_MAX_DOTS, 0, size_px), take(_MAX_DOTS, 0, size_px), take(_MAX_DOTS, *config.dot_radius)], -1)
    clutter_hsv = np.stack([take(_SLOTS, 0, 360), take(_SLOTS, 0.0, 0.9), take(_SLOTS, 0.15, 1.0)], -1)
    assert pos == _N_UNIFORM, pos
    # Uniform noise with standard deviation 1 (uniform draws are several times faster than normal ones).
    noise = (rng.random((size_px, size_px, 3), dtype=np.float32) - 0.5) * math.sqrt(12.0)
    return {
        "shape": shape,
        "color": color,
        "scale": scale,
        "centre": centre,
        "angle": angle,
        "rotation": (math.cos(angle), math.sin(angle)),
        "hsv": (hue, sat, val),
        "bg_hsv": bg_hsv,
        "gradient": gradient,
        "gratings": gratings,
        "noise": noise,
        "n": n,
        "lines": lines,
        "line_w": line_w,
        "arcs": arcs,
        "dots": dots,
        "clutter_hsv": clutter_hsv,
    }


def _object_radius(name: str, scale: float) -> float:
    """Radius of a disc that holds the whole shape, plus a pixel of clearance."""
    return SHAPE_EXTENT[name] * scale + 1.0


def _random_colour(rng: np.random.Generator, config: SyntheticConfig) -> tuple[int, tuple[float, float, float]]:
    family = int(rng.integers(len(config.color_families)))
    hue = COLOR_FAMILIES[config.color_families[family]] + float(rng.uniform(-1.0, 1.0)) * config.hue_jitter
    return family, (hue, float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.75, 1.0)))


def _scenario_params(config: SyntheticConfig, split: str, index: int, base: dict[str, Any]) -> dict[str, Any]:
    """The scenario's additions to one scene, drawn from a second random stream of (seed, split, index).

    The background, clutter and class object come from the scene's own stream as in the "single"
    scenario (the contrast scenario only moves the class object into its half), so every scenario is a
    controlled change of the same scenes. Extra shapes never overlap the class object or each other: each
    is placed where the discs holding the two shapes are apart (tries that find no place drop the shape).
    """
    out: dict[str, Any] = {"extras": [], "cue": None, "centre": None}
    if config.scenario == "single":
        return out
    rng = np.random.default_rng([config.seed, _SPLIT_CODE[split], index, 1])
    size = float(config.image_size)
    a_name = config.shapes[base["shape"]]

    def shape_params(name: str, centre: np.ndarray, scale: float) -> dict[str, Any]:
        angle = float(rng.uniform(0.0, 2 * math.pi)) if config.rotate else 0.0
        family, hsv = _random_colour(rng, config)
        return {
            "name": name,
            "centre": centre,
            "scale": scale,
            "rotation": (math.cos(angle), math.sin(angle)),
            "hsv": hsv,
            "color": family,
        }

    if config.scenario == "distractors":
        placed = [(np.asarray(base["centre"], dtype=np.float64), _object_radius(a_name, base["scale"]))]
        for _ in range(int(rng.integers(config.distractors[0], config.distractors[1] + 1))):
            name = config.distractor_shapes[int(rng.integers(len(config.distractor_shapes)))]
            scale = float(rng.uniform(*config.object_size)) * size
            radius = _object_radius(name, scale)
            tries = rng.uniform(radius, size - radius, size=(_PLACEMENT_TRIES, 2))
            free = [c for c in tries if all(np.hypot(*(c - pc)) > radius + pr for pc, pr in placed)]
            extra = shape_params(name, free[0] if free else tries[0], scale)
            if free:
                placed.append((free[0], radius))
                out["extras"].append(extra)
    elif config.scenario == "contrast":
        vertical_split, a_side = int(rng.integers(2)), int(rng.integers(2))
        n = len(config.shapes)
        b_shape = (base["shape"] + 1 + int(rng.integers(n - 1))) % n
        b_scale = float(rng.uniform(*config.object_size)) * size

        def centre_in_half(name: str, scale: float, side: int) -> np.ndarray:
            r = _object_radius(name, scale)
            across = rng.uniform(side * size / 2 + r, (side + 1) * size / 2 - r)
            along = rng.uniform(r, size - r)
            return np.array([along, across] if vertical_split else [across, along])

        out["centre"] = centre_in_half(a_name, base["scale"], a_side)
        b_name = config.shapes[b_shape]
        extra = shape_params(b_name, centre_in_half(b_name, b_scale, 1 - a_side), b_scale)
        extra["shape"] = b_shape
        out["extras"].append(extra)
    elif config.scenario == "cue":
        side = max(2, round(config.cue_size * size))
        far = size - 1 - side
        corners = np.array([[1, 1], [far, 1], [1, far], [far, far]], dtype=np.float64)
        centre, radius = np.asarray(base["centre"], dtype=np.float64), _object_radius(a_name, base["scale"])
        # Nearest point of each corner square to the object's centre: free when outside the object's disc.
        nearest = np.clip(centre, corners, corners + side)
        free = np.flatnonzero(np.hypot(*(nearest - centre).T) > radius)
        corner = int(free[int(rng.integers(len(free)))])  # the opposite corner is always free
        family, (hue, _, _) = _random_colour(rng, config)
        out["cue"] = {
            "corner": corner,
            "x0": corners[corner, 0],
            "y0": corners[corner, 1],
            "side": side,
            "color": family,
            "hsv": (hue, float(rng.uniform(0.85, 1.0)), float(rng.uniform(0.85, 1.0))),
        }
    return out


def render_scenes(
    config: SyntheticConfig, split: str, start: int = 0, count: int | None = None, omit: Collection[str] = ()
) -> dict:
    """Render images ``start … start+count-1`` of ``split``.

    Returns a dict with ``images`` (uint8 N×H×W×3), ``masks`` (bool N×H×W, the class object's pixels),
    ``clutter`` (bool N×H×W, visible clutter pixels), ``labels`` ({task: int64 N}), ``attributes``
    ({name: array N}: centre, size, rotation, colour, clutter counts…) and ``ids``; and the scenario's
    other objects, all-false where the scenario has none: ``distractor_masks`` (every distractor),
    ``masks_b`` (the contrast scenario's second object) and ``cue_masks`` (the cue square).
    Indices may go beyond the split's stored size (fresh scenes from the same distribution).

    ``omit`` renders the same scenes without some of their parts — ``object`` (the class object),
    ``object_b``, ``distractors``, ``cue`` — for interventions: what is behind them (background and clutter)
    shows instead. The masks still describe the full scene.
    """
    _check_split(split)
    unknown = sorted(set(omit) - set(OMITTABLE))
    if unknown:
        raise DatasetError(f"cannot omit {', '.join(unknown)}; valid parts: {', '.join(OMITTABLE)}")
    if count is None:
        count = config.split_size(split) - start
    if start < 0 or count < 0:
        raise DatasetError(f"start and count must be >= 0, got start={start}, count={count}")
    size = config.image_size
    params = [_scene_params(config, split, start + i) for i in range(count)]
    scenario = [_scenario_params(config, split, start + i, p) for i, p in enumerate(params)]
    for p, extra in zip(params, scenario, strict=True):
        if extra["centre"] is not None:
            p["centre"] = extra["centre"]
    n = count

    def stack(key: str) -> np.ndarray:
        return np.stack([np.asarray(p[key], dtype=np.float32) for p in params])

    # Pixel-centre coordinates, broadcast as N×H×W.
    coords = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = coords[None, :, None], coords[None, None, :]

    images_u8 = np.zeros((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    clutter = np.zeros((n, size, size), dtype=bool)
    extra_masks = np.zeros((n, _MAX_EXTRAS, size, size), dtype=bool)
    cue_masks = np.zeros((n, size, size), dtype=bool)
    if n:
        # Background: base colour + gradient + gratings + noise. Everything that varies along both axes
        # is built from per-row and per-column factors, so each full-size operation is a single pass.
        bg = stack("bg_hsv")
        base = _hsv_to_rgb(bg[:, 0], bg[:, 1], bg[:, 2])  # N×3
        grad = stack("gradient")
        rel_x, rel_y = xs / size - 0.5, ys / size - 0.5
        shade = grad[:, 0, None, None] * rel_x + grad[:, 1, None, None] * rel_y  # N×H×W in [-1,1]
        gr = stack("gratings")  # N×G×5: cos, sin of the orientation, frequency, phase, amplitude
        two_pi = np.float32(2 * np.pi)
        for g in range(_GRATINGS):
            ca, sa, f, ph, amp = (gr[:, g, j, None, None] for j in range(5))
            # sin(ax + by + c) = sin(ax)·cos(by + c) + cos(ax)·sin(by + c)
            ax, by = ca * f * two_pi * rel_x, sa * f * two_pi * rel_y + ph
            shade += amp * np.sin(ax) * np.cos(by) + amp * np.cos(ax) * np.sin(by)
        shade *= np.float32(config.background_contrast / 2)
        images = stack("noise")
        images *= np.float32(config.noise)
        images += shade[..., None]
        images += base[:, None, None, :]
        np.clip(images, 0.0, 1.0, out=images)
        images *= np.float32(255.0)
        np.rint(images, out=images)
        images_u8 = images.astype(np.uint8)
        del images

        # Clutter, in a fixed order: lines, arcs, dots (each slot used only when below the image's count).
        counts = np.array([p["n"] for p in params])  # N×3
        lines, line_w, arcs, dots = stack("lines"), stack("line_w"), stack("arcs"), stack("dots")

        # Which slot is visible at each pixel (-1: background); later slots cover earlier ones and the
        # class object (slot _SLOTS) covers everything. Each slot is computed only where it is used.
        top = np.full((n, size, size), -1, dtype=np.int16)

        def paint(slot: int, active: np.ndarray, inside_fn: Any) -> None:
            sel = np.flatnonzero(active)
            if sel.size == n:
                top[inside_fn(slice(None))] = slot
            elif sel.size:
                sub = top[sel]
                sub[inside_fn(sel)] = slot
                top[sel] = sub

        def line(k: int) -> Any:
            def inside(sel: Any) -> np.ndarray:
                x0, y0, x1, y1 = (lines[sel, k, j, None, None] for j in range(4))
                dx, dy = x1 - x0, y1 - y0
                length = np.maximum(np.hypot(dx, dy), np.float32(1e-3))
                half_w = line_w[sel, k, None, None] / 2
                # Distance across the line and position along it: a thin rectangle (square caps).
                across = np.abs(xs * (dy / length) - (ys * (dx / length) + (x0 * dy - y0 * dx) / length))
                along = xs * (dx / length) + (ys * (dy / length) - (x0 * dx + y0 * dy) / length)
                return (across <= half_w) & (along >= -half_w) & (along <= length + half_w)

            return inside

        def arc(k: int) -> Any:
            def inside(sel: Any) -> np.ndarray:
                cx, cy, r, a0, span, w = (arcs[sel, k, j, None, None] for j in range(6))
                rho = np.hypot(xs - cx, ys - cy)
                phi = np.mod(np.arctan2(ys - cy, xs - cx) - a0, two_pi)
                return (np.abs(rho - r) <= w / 2) & (phi <= span)

            return inside

        def dot(k: int) -> Any:
            def inside(sel: Any) -> np.ndarray:
                cx, cy, r = (dots[sel, k, j, None, None] for j in range(3))
                return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r

            return inside

        for k in range(_MAX_LINES):
            paint(k, k < counts[:, 0], line(k))
        for k in range(_MAX_ARCS):
            paint(_MAX_LINES + k, k < counts[:, 1], arc(k))
        for k in range(_MAX_DOTS):
            paint(_MAX_LINES + _MAX_ARCS + k, k < counts[:, 2], dot(k))

        # The class object, drawn last: its pixels are exactly the mask.
        masks[:] = _shapes_inside(
            [config.shapes[p["shape"]] for p in params], stack("centre"), stack("scale"), stack("rotation"), size
        )
        # The scenario's extra shapes (distractors, the second object: never overlapping the class object),
        # then the class object, then the cue square on top.
        extra_hsv = np.zeros((n, _MAX_EXTRAS, 3), dtype=np.float32)
        for k in range(_MAX_EXTRAS):
            rows = [i for i, sc in enumerate(scenario) if len(sc["extras"]) > k]
            if not rows:
                continue
            ex = [scenario[i]["extras"][k] for i in rows]
            extra_masks[rows, k] = _shapes_inside(
                [e["name"] for e in ex],
                np.array([e["centre"] for e in ex], dtype=np.float32),
                np.array([e["scale"] for e in ex], dtype=np.float32),
                np.array([e["rotation"] for e in ex], dtype=np.float32),
                size,
            )
            extra_hsv[rows, k] = [e["hsv"] for e in ex]
            if ("object_b" if config.scenario == "contrast" else "distractors") not in omit:
                top[extra_masks[:, k]] = _SLOTS + 1 + k
        if "object" not in omit:
            top[masks] = _SLOTS
        cue_hsv = np.zeros((n, 3), dtype=np.float32)
        for i, sc in enumerate(scenario):
            if sc["cue"] is not None:
                c = sc["cue"]
                x0, y0, side = int(c["x0"]), int(c["y0"]), int(c["side"])
                cue_masks[i, y0 : y0 + side, x0 : x0 + side] = True
                cue_hsv[i] = c["hsv"]
        if "cue" not in omit:
            top[cue_masks] = _SLOTS + 1 + _MAX_EXTRAS
        clutter = top >= 0
        clutter &= ~masks
        clutter &= ~extra_masks.any(axis=1)
        clutter &= ~cue_masks

        # Flat colours of the clutter slots, the object, the extra shapes and the cue, composited in one pass.
        hsv = np.concatenate(
            [stack("clutter_hsv"), stack("hsv")[:, None, :], extra_hsv, cue_hsv[:, None, :]], axis=1
        )  # N×(S+2+E)×3
        rgb = np.clip(_hsv_to_rgb(hsv[..., 0], hsv[..., 1], hsv[..., 2]), 0, 1)
        table = np.rint(rgb * 255).astype(np.uint8)
        where = np.nonzero(top >= 0)
        images_u8[where] = table[where[0], top[where]]

    is_contrast = config.scenario == "contrast"
    distractor_masks = np.zeros_like(masks) if is_contrast else extra_masks.any(axis=1)
    masks_b = extra_masks[:, 0] if is_contrast else np.zeros_like(masks)
    labels = _labels(params, masks, config)
    attributes = _attributes(params, masks, images_u8)
    if config.scenario == "distractors":
        attributes["n_distractors"] = np.array([len(sc["extras"]) for sc in scenario], dtype=np.int64)
    if is_contrast:
        labels["shape_b"] = np.array([sc["extras"][0]["shape"] for sc in scenario], dtype=np.int64)
        attributes["color_b"] = np.array([sc["extras"][0]["color"] for sc in scenario], dtype=np.int64)
    if config.scenario == "cue":
        labels["cue"] = np.array([sc["cue"]["color"] for sc in scenario], dtype=np.int64)
        attributes["cue_corner"] = np.array([sc["cue"]["corner"] for sc in scenario], dtype=np.int64)
    return {
        "images": images_u8,
        "masks": masks,
        "clutter": clutter,
        "distractor_masks": distractor_masks,
        "masks_b": masks_b,
        "cue_masks": cue_masks,
        "labels": labels,
        "attributes": attributes,
        "ids": [scene_id(split, start + i) for i in range(n)],
    }


def _shapes_inside(
    names: Sequence[str], centre: np.ndarray, scale: np.ndarray, rotation: np.ndarray, size: int
) -> np.ndarray:
    """Membership masks N×H×W of one shape per image: its name, centre (x, y), size parameter (pixels) and
    rotation (cos, sin), at pixel centres; vectorised over the images of each shape name."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = coords[None, :, None], coords[None, None, :]
    cos_s = (rotation[:, 0] / scale)[:, None, None]
    sin_s = (rotation[:, 1] / scale)[:, None, None]
    dx, dy = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    u = cos_s * dx + sin_s * dy
    v = cos_s * dy - sin_s * dx
    out = np.zeros((len(names), size, size), dtype=bool)
    name_of = np.array(names)
    for name in dict.fromkeys(names):
        sel = name_of == name
        out[sel] = _shape_inside(name, u[sel], v[sel])
    return out


def _quadrants(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask centroid (x, y) per image and the quadrant it lies in (0 TL, 1 TR, 2 BL, 3 BR)."""
    _, h, w = masks.shape
    area = masks.sum(axis=(1, 2)).clip(min=1)
    cx = (masks.sum(axis=1) * (np.arange(w) + 0.5)).sum(axis=1) / area
    cy = (masks.sum(axis=2) * (np.arange(h) + 0.5)).sum(axis=1) / area
    quadrant = (cy >= h / 2).astype(np.int64) * 2 + (cx >= w / 2).astype(np.int64)
    return np.stack([cx, cy], -1), quadrant


def _labels(params: list[dict], masks: np.ndarray, config: SyntheticConfig) -> dict[str, np.ndarray]:
    _, quadrant = _quadrants(masks)
    # ``scale`` is object_size * image_size (pixels); large = above the middle of the sampled range.
    middle = 0.5 * sum(config.object_size) * config.image_size
    return {
        "shape": np.array([p["shape"] for p in params], dtype=np.int64),
        "color": np.array([p["color"] for p in params], dtype=np.int64),
        "size": np.array([p["scale"] > middle for p in params], dtype=np.int64),
        "quadrant": quadrant,
    }


def _attributes(params: list[dict], masks: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
    centroid, _ = _quadrants(masks)
    n = len(params)
    # The object's flat colour, read back from the image (exact: nothing is drawn over the object).
    rgb = np.zeros((n, 3), np.uint8)
    if n:
        first = masks.reshape(n, -1).argmax(axis=1)
        rgb = images.reshape(n, -1, 3)[np.arange(n), first]
    return {
        "centre_x": np.array([p["centre"][0] for p in params], dtype=np.float64),
        "centre_y": np.array([p["centre"][1] for p in params], dtype=np.float64),
        "centroid_x": centroid[:, 0],
        "centroid_y": centroid[:, 1],
        "size": np.array([p["scale"] for p in params], dtype=np.float64),
        "rotation": np.degrees(np.array([p["angle"] for p in params], dtype=np.float64)),
        "hue": np.mod(np.array([p["hsv"][0] for p in params], dtype=np.float64), 360.0),
        "area": masks.sum(axis=(1, 2)).astype(np.int64),
        "object_r": rgb[:, 0].astype(np.int64),
        "object_g": rgb[:, 1].astype(np.int64),
        "object_b": rgb[:, 2].astype(np.int64),
        "n_lines": np.array([p["n"][0] for p in params], dtype=np.int64),
        "n_arcs": np.array([p["n"][1] for p in params], dtype=np.int64),
        "n_dots": np.array([p["n"][2] for p in params], dtype=np.int64),
    }


# ----------------------------------------------------------------------------------------------------------
# Writing


def generate_synthetic(
    out: Path | str,
    config: SyntheticConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    chunk: int = 256,
) -> Path:
    """Render every split of ``config`` and write the dataset folder ``out`` (layout in the module doc).

    The folder is written next to ``out`` under a temporary name and renamed into place at the end, so an
    interrupted run never leaves a folder that looks complete. A non-empty ``out`` is refused unless
    ``overwrite=True``.
    """
    config = config or SyntheticConfig()
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(
            f"{out} already exists and is not empty; choose another --out or pass overwrite=True (--overwrite)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # Chunks are rendered and written by a few threads: numpy's array operations and PNG encoding (zlib)
    # release the GIL, so this uses both cores. Results come back in order, so the CSVs are sorted.
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        for split in SPLITS:
            for folder in ("images", *_mask_folders(config).values()):
                (tmp / folder / split).mkdir(parents=True, exist_ok=True)
        jobs = [
            (split, start, min(chunk, config.split_size(split) - start))
            for split in SPLITS
            for start in range(0, config.split_size(split), chunk)
        ]
        rows: dict[str, tuple[list, list]] = {split: ([], []) for split in SPLITS}
        attr_names: list[str] = list(render_scenes(config, "test", 0, 1)["attributes"])
        with tqdm(
            total=sum(job[2] for job in jobs), desc=f"synthesising {out.name}", unit="img", disable=not progress
        ) as bar:
            for split, label_rows, attr_rows in pool.map(lambda job: _write_chunk(tmp, config, *job), jobs):
                rows[split][0].extend(label_rows)
                rows[split][1].extend(attr_rows)
                bar.update(len(label_rows))
        for split, (label_rows, attr_rows) in rows.items():
            _write_csv(tmp / "labels" / f"{split}.csv", ["id", *config.tasks()], label_rows)
            _write_csv(tmp / "attributes" / f"{split}.csv", ["id", *attr_names], attr_rows)
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "tasks": {t: config.class_names(t) for t in config.tasks()},
            "default_task": config.default_task(),
            "scenario": config.scenario,
            # The ground truth of each labelling: the folder of masks that shows the labelled evidence.
            "task_masks": {t: _mask_folders(config)[_TASK_EVIDENCE.get(t, "object")] for t in config.tasks()},
            "splits": {s: config.split_size(s) for s in SPLITS},
            "image_size": [config.image_size, config.image_size],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a dataset is meant to be shared
        if out.exists():
            # overwrite=True (or an empty folder): move the old one aside first so the swap is quick.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        # Stop the queued chunks and wait for the running ones before deleting their folder.
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pool.shutdown(wait=True)
    return out


def _write_chunk(root: Path, config: SyntheticConfig, split: str, start: int, count: int) -> tuple:
    """Render one chunk, write its PNGs and return its CSV rows."""
    scenes = render_scenes(config, split, start, count)
    attrs = scenes["attributes"]
    label_rows, attr_rows = [], []
    folders = _mask_folders(config)
    for i, sid in enumerate(scenes["ids"]):
        Image.fromarray(scenes["images"][i], "RGB").save(root / "images" / split / f"{sid}.png", compress_level=1)
        for part, folder in folders.items():
            _write_mask(root / folder / split / f"{sid}.png", scenes[_RENDERED_MASK[part]][i])
        label_rows.append([sid, *(int(scenes["labels"][t][i]) for t in config.tasks())])
        attr_rows.append([sid, *(_fmt(attrs[a][i]) for a in attrs)])
    return split, label_rows, attr_rows


def _fmt(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, (float, np.floating)) else int(value)


# Which object of a scene each labelling is about (its ground truth), the folder of each object's masks and
# the key of :func:`render_scenes`'s output that holds them. PNGs are saved at compression level 1: these
# small noisy images barely compress better at higher levels, and it is much faster.
_TASK_EVIDENCE = {"shape_b": "object_b", "cue": "cue"}
_RENDERED_MASK = {"object": "masks", "object_b": "masks_b", "distractors": "distractor_masks", "cue": "cue_masks"}


def _mask_folders(config: SyntheticConfig) -> dict[str, str]:
    """Mask folders written for ``config``'s scenario, by scene part."""
    extra = {
        "distractors": {"distractors": "masks_distractors"},
        "contrast": {"object_b": "masks_b"},
        "cue": {"cue": "masks_cue"},
    }.get(config.scenario, {})
    return {"object": "masks", **extra}


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, compress_level=1)


def _write_csv(path: Path, header: Sequence[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------------------
# Reading


class SyntheticDataset(ImageDataset):
    """One split of a folder written by :func:`generate_synthetic`, labelled by one task.

    ``task`` defaults to the scenario's own labelling (``cue`` for the cue scenario, else ``shape``); each
    sample's mask is the ground truth of that labelling (the cue square for ``cue``). A **contrast**
    dataset labelled by ``shape`` holds every scene twice, once per object: sample ``2i`` is scene ``i``
    labelled with its first object (id ``<scene>-a``, mask = that object), sample ``2i + 1`` the same image
    labelled with the other object (id ``<scene>-b``), so explaining the ground-truth class explains each
    object in turn; the other object's mask is the sample's ``counter_mask``.
    """

    def __init__(self, root: Path | str, split: str = "test", task: str | None = None) -> None:
        self.root = Path(root).expanduser()
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(
                f"{self.root} is not a synthetic dataset (no manifest.json); "
                "make one with `explainers data synth --out DIR`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read {manifest_path}: {exc}; regenerate the dataset") from None
        if manifest.get("format") != FORMAT_NAME:
            raise DatasetError(
                f"{manifest_path} is not a synthetic dataset manifest (format {manifest.get('format')!r}); "
                "make one with `explainers data synth --out DIR`"
            )
        if int(manifest.get("version", 0)) > FORMAT_VERSION:
            raise DatasetError(
                f"{self.root} uses synthetic format version {manifest['version']}, newer than this library's "
                f"{FORMAT_VERSION}; upgrade explainers or regenerate the dataset"
            )
        self.manifest = manifest
        self.config = SyntheticConfig.from_dict(manifest["config"])
        splits = manifest["splits"]
        if split not in splits:
            raise DatasetError(f"unknown split {split!r} in {self.root}; valid splits: {', '.join(splits)}")
        tasks = manifest["tasks"]
        task = task or manifest.get("default_task", "shape")
        if task not in tasks:
            raise DatasetError(f"unknown task {task!r} in {self.root}; valid tasks: {', '.join(tasks)}")
        self.split, self.task = split, task
        self.class_names = list(tasks[task])
        self.name = f"synthetic:{self.root} ({split}, task={task})"
        self._rows = _read_csv(self.root / "labels" / f"{split}.csv")
        if len(self._rows) != int(splits[split]):
            raise DatasetError(
                f"{self.root}/labels/{split}.csv has {len(self._rows)} rows but the manifest says "
                f"{splits[split]}; the dataset is incomplete: regenerate it"
            )
        self.scenario = str(manifest.get("scenario", "single"))
        #: Contrast scenes labelled by shape are explained once per object (see the class docstring).
        self.pairs = self.scenario == "contrast" and task == "shape"
        self._scene_ids = [row["id"] for row in self._rows]
        mask_folder = manifest.get("task_masks", {}).get(task, "masks")
        if self.pairs:
            self._ids = [f"{sid}-{half}" for sid in self._scene_ids for half in "ab"]
            self._labels = np.array([int(row[t]) for row in self._rows for t in ("shape", "shape_b")], dtype=np.int64)
            self._mask_folders = ("masks", "masks_b")
        else:
            self._ids = list(self._scene_ids)
            self._labels = np.array([int(row[task]) for row in self._rows], dtype=np.int64)
            self._mask_folders = (mask_folder,)
        self._attrs: list[dict[str, str]] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def label_of(self, index: int) -> int:
        return int(self._labels[self._index(index)])

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return index % len(self)

    def _scene(self, index: int) -> int:
        """Row of the scene behind sample ``index`` (contrast pairs share one scene)."""
        index = self._index(index)
        return index // 2 if self.pairs else index

    def image_path(self, index: int) -> Path:
        return self.root / "images" / self.split / f"{self._scene_ids[self._scene(index)]}.png"

    def mask_path(self, index: int, other: bool = False) -> Path:
        """The ground-truth mask of sample ``index`` (``other``: the contrast pair's other object)."""
        index = self._index(index)
        half = (index % 2) ^ int(other) if self.pairs else 0
        return self.root / self._mask_folders[half] / self.split / f"{self._scene_ids[self._scene(index)]}.png"

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        index = self._index(index)
        image = load_image(self.image_path(index))
        mask = torch.from_numpy(_read_mask(self.mask_path(index)))
        sample = Sample(image=image, label=int(self._labels[index]), mask=mask, id=self._ids[index])
        if self.pairs:
            sample.counter_mask = torch.from_numpy(_read_mask(self.mask_path(index, other=True)))
        return sample

    def attributes(self, index: int) -> dict[str, Any]:
        """Every labelling (index and name) and the scene parameters of image ``index``."""
        out: dict[str, Any] = {"id": self._ids[self._index(index)]}
        index = self._scene(index)
        if self._attrs is None:
            path = self.root / "attributes" / f"{self.split}.csv"
            self._attrs = _read_csv(path) if path.is_file() else [{} for _ in self._rows]
        for task, names in self.manifest["tasks"].items():
            label = int(self._rows[index][task])
            out[task] = label
            out[f"{task}_name"] = names[label]
        for key, value in self._attrs[index].items():
            if key != "id":
                out[key] = float(value) if any(c in value for c in ".eE") else int(value)
        return out

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole split in memory: uint8 N×H×W×3 images, bool N×H×W masks, int64 N labels."""
        n, size = len(self), self.config.image_size
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        masks = np.empty((n, size, size), dtype=bool)

        def read(i: int) -> None:
            images[i] = _read_rgb(self.image_path(i))
            masks[i] = _read_mask(self.mask_path(i))

        # PNG decoding releases the GIL: threads make this about twice as fast on two cores.
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(read, range(n)))
        return images, masks, self._labels.copy()


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"missing {path}; the synthetic dataset is incomplete: regenerate it")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}; regenerate the synthetic dataset") from None


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) > 127
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}; regenerate the synthetic dataset") from None


__all__ = [
    "QUADRANTS",
    "SHAPES",
    "SIZES",
    "TASKS",
    "SyntheticConfig",
    "SyntheticDataset",
    "generate_synthetic",
    "render_scenes",
    "scene_id",
]
