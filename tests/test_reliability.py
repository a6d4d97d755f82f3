"""The reliability catalogue: bad inputs and what the user is told.

Each row is (name, command line, expected fragment of the one error line). Every row must end with exit
status 2 and exactly one line ``explainers: error: …`` on stderr — never a traceback. To add a case, add
a row; ``{placeholders}`` are paths from the ``world`` fixture below (add a file there if a case needs
one). The second table does the same for the Python API: the call must raise an ``ExplainersError``
subclass whose message holds the fragment.
"""

from __future__ import annotations

import json
import os
import socket

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import explainers
from evalkit import make_coco, make_voc, save_tiny_vit
from explainers.cli import main
from explainers.errors import ExplainersError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every file the catalogue needs, made once."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": str(root), "vit": str(save_tiny_vit(root / "vit", image_size=16, patch_size=8))}
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    w["images"] = str(images)
    bad_images = root / "bad_images"
    bad_images.mkdir()
    (bad_images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    w["bad_images"] = str(bad_images)
    w["voc"] = str(make_voc(root / "voc", n=2))
    escaping = make_voc(root / "voc_escape", n=2)
    (escaping / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\n../../secret\n")
    w["voc_escape"] = str(escaping)

    def coco(name, edit):
        folder = root / name
        make_coco(folder)
        ann = folder / "annotations" / "instances_val2017.json"
        data = json.loads(ann.read_text())
        edit(data)
        ann.write_text(json.dumps(data))
        return str(folder)

    w["coco_escape"] = coco("coco_escape", lambda d: d["images"][0].update(file_name="../../etc/passwd"))
    w["coco_absolute"] = coco("coco_abs", lambda d: d["images"][0].update(file_name="/etc/passwd"))
    w["coco_no_file_name"] = coco("coco_nfn", lambda d: d["images"][0].pop("file_name"))
    w["coco_no_id"] = coco("coco_nid", lambda d: d["images"][1].pop("id"))
    w["coco_non_object"] = coco("coco_nobj", lambda d: d["images"].append("000000000009.jpg"))
    w["coco_dup_id"] = coco("coco_dup", lambda d: d["images"].append(dict(d["images"][0])))
    w["coco_bad_size"] = coco("coco_size", lambda d: d["images"][0].update(height="12"))
    w["coco_no_image_id"] = coco("coco_niid", lambda d: d["annotations"][0].pop("image_id"))
    w["coco_ann_dict"] = coco("coco_anndict", lambda d: d.update(annotations={"a": 1}))
    invalid = root / "coco_json"
    make_coco(invalid)
    (invalid / "annotations" / "instances_val2017.json").write_text("{not json")
    w["coco_json"] = str(invalid)

    masks = root / "masks.h5"
    assert run(["explain", "--method", "random", "--explainee", w["vit"], "--data", f"folder:{images}",
                "--out", str(masks)])[0] == 0
    w["masks"] = str(masks)
    (root / "partial.h5.partial").write_bytes(b"")
    w["partial_only"] = str(root / "partial.h5")
    (root / "not_hdf5.h5").write_bytes(b"definitely not HDF5")
    w["not_hdf5"] = str(root / "not_hdf5.h5")
    with h5py.File(root / "foreign.h5", "w") as f:
        f["maps"] = np.zeros((1, 2, 2))
    w["foreign"] = str(root / "foreign.h5")
    for name, edit in (
        ("reshaped", lambda f: (f.__delitem__("maps"), f.create_dataset("maps", data=np.zeros((3, 4, 4))))),
        ("unfinished", lambda f: f.attrs.__setitem__("complete", False)),
        ("miscounted", lambda f: f.attrs.__setitem__("count", 7)),
        ("no_ids", lambda f: f.__delitem__("ids")),
    ):
        target = root / f"{name}.h5"
        target.write_bytes(masks.read_bytes())
        with h5py.File(target, "r+") as f:
            edit(f)
        w[name] = str(target)
    (root / "a_file").write_text("x")
    w["a_file"] = str(root / "a_file")
    # A run in progress on this host: the lock of busy.h5 names a live process (our parent).
    (root / ".busy.h5.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    w["busy"] = str(root / "busy.h5")
    other = root / "other_method.h5"
    assert run(["explain", "--method", "random", "--explainee", w["vit"], "--data", f"folder:{images}",
                "--out", str(other), "--limit", "1"])[0] == 0
    other.rename(root / "other.h5.partial")  # a partial file of another method (random, 1 image)
    w["other"] = str(root / "other.h5")
    return w


def run(args):
    """(exit status, stderr) of the CLI in this process."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            progress = ["--no-progress"] if args[0] in ("explain", "evaluate") else []
            main([*args, *progress])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, err.getvalue()


EXPLAIN = ["explain", "--explainee", "{vit}", "--data", "folder:{images}"]
EVALUATE = ["evaluate", "--explainee", "{vit}", "--data", "folder:{images}"]

# (name, command line, fragment of the one error line)
CLI_CASES = [
    # ---- explain: options
    ("unknown method", [*EXPLAIN, "--method", "nope", "--out", "{root}/o1.h5"], "unknown method 'nope'"),
    ("evaluate batch size 0", [*EVALUATE, "--masks", "{masks}", "--out", "{root}/ev0", "--batch-size", "0"],
     "--batch-size must be at least 1"),
    ("batch size 0", [*EXPLAIN, "--method", "random", "--out", "{root}/o2.h5", "--batch-size", "0"],
     "batch size must be at least 1"),
    ("limit 0", [*EXPLAIN, "--method", "random", "--out", "{root}/o3.h5", "--limit", "0"],
     "--limit must be at least 1"),
    ("bad class mode", [*EXPLAIN, "--method", "random", "--out", "{root}/o4.h5", "--class", "mine"],
     "--class must be predicted or target"),
    ("bad dtype", [*EXPLAIN, "--method", "random", "--out", "{root}/o5.h5", "--dtype", "float64"],
     "dtype must be float32 or float16"),
    ("option not KEY=VALUE", [*EXPLAIN, "--method", "random", "--out", "{root}/o6.h5", "--option", "seed"],
     "is not KEY=VALUE"),
    ("unknown method option", [*EXPLAIN, "--method", "random", "--out", "{root}/o7.h5", "--option", "zzz=1"],
     "bad options for method 'random'"),
    ("explainer twice", [*EXPLAIN, "--method", "plte", "--out", "{root}/o8.h5", "--explainer", "x",
                         "--option", "explainer=y"], "both given"),
    ("unknown data option", [*EXPLAIN, "--method", "random", "--out", "{root}/o9.h5", "--data-option", "zz=1"],
     "have no option(s) zz"),
    ("target class without labels", [*EXPLAIN, "--method", "random", "--out", "{root}/o10.h5", "--class",
                                     "target"], "needs labels"),
    # ---- explain: where the output goes
    ("out is a folder", [*EXPLAIN, "--method", "random", "--out", "{images}"], "is a directory"),
    ("out under a file", [*EXPLAIN, "--method", "random", "--out", "{a_file}/m.h5"], "cannot"),
    ("out under /proc", [*EXPLAIN, "--method", "random", "--out", "/proc/m.h5"], "cannot write /proc/m.h5"),
    ("png under a file", [*EXPLAIN, "--method", "random", "--out", "{root}/p1.h5", "--png", "{a_file}/png"],
     "cannot create the PNG folder"),
    ("png is a file", [*EXPLAIN, "--method", "random", "--out", "{root}/p2.h5", "--png", "{a_file}"],
     "cannot create the PNG folder"),
    ("png under /proc", [*EXPLAIN, "--method", "random", "--out", "{root}/p3.h5", "--png", "/proc/pngs"],
     "cannot create the PNG folder"),
    ("complete out exists", [*EXPLAIN, "--method", "random", "--out", "{masks}"], "already exists and is complete"),
    ("another run writes it", [*EXPLAIN, "--method", "random", "--out", "{busy}"], "being written by another run"),
    ("partial of another method", [*EXPLAIN, "--method", "raw-attention", "--out", "{other}"],
     "written for a different run"),
    # ---- explain: datasets
    ("missing dataset path", ["explain", "--explainee", "{vit}", "--data", "folder:{root}/nowhere", "--method",
                              "random", "--out", "{root}/d1.h5"], "dataset path does not exist"),
    ("unknown dataset kind", ["explain", "--explainee", "{vit}", "--data", "zip:{images}", "--method", "random",
                              "--out", "{root}/d2.h5"], "zip"),
    ("undecodable image", ["explain", "--explainee", "{vit}", "--data", "folder:{bad_images}", "--method",
                           "random", "--out", "{root}/d3.h5"], "cannot decode image"),
    ("voc id escaping the root", ["explain", "--explainee", "{vit}", "--data", "voc:{voc_escape}", "--method",
                                  "random", "--out", "{root}/d4.h5"], "not a plain image id"),
    ("coco file_name ../", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_escape}", "--method",
                            "random", "--out", "{root}/d5.h5"], "points outside the dataset folder"),
    ("coco absolute file_name", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_absolute}",
                                 "--method", "random", "--out", "{root}/d6.h5"], "points outside the dataset folder"),
    ("coco image without file_name", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_no_file_name}",
                                      "--method", "random", "--out", "{root}/d7.h5"], "has no 'file_name'"),
    ("coco image without id", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_no_id}", "--method",
                               "random", "--out", "{root}/d8.h5"], "has no 'id'"),
    ("coco images holding strings", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_non_object}",
                                     "--method", "random", "--out", "{root}/d9.h5"], "not an object"),
    ("coco duplicate image id", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_dup_id}", "--method",
                                 "random", "--out", "{root}/d10.h5"], "appears twice"),
    ("coco height as a string", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_bad_size}",
                                 "--method", "random", "--out", "{root}/d11.h5"], "must be a positive integer"),
    ("coco annotation without image_id", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_no_image_id}",
                                          "--method", "random", "--out", "{root}/d12.h5"], "no integer 'image_id'"),
    ("coco annotations not a list", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_ann_dict}",
                                     "--method", "random", "--out", "{root}/d13.h5"], "must be a list"),
    ("coco invalid json", ["explain", "--explainee", "{vit}", "--data", "coco:{coco_json}", "--method",
                           "random", "--out", "{root}/d14.h5"], "is not valid JSON"),
    # ---- explainee
    ("missing explainee", ["explain", "--explainee", "{root}/no_model", "--data", "folder:{images}", "--method",
                           "random", "--out", "{root}/e1.h5"], "explainee directory not found"),
    ("info on a missing explainee", ["info", "--explainee", "{root}/no_model"], "explainee directory not found"),
    # ---- evaluate: mask files
    ("mask file missing", [*EVALUATE, "--masks", "{root}/none.h5", "--out", "{root}/ev1"], "mask file not found"),
    ("mask file only partial", [*EVALUATE, "--masks", "{partial_only}", "--out", "{root}/ev2"], "incomplete"),
    ("mask file not HDF5", [*EVALUATE, "--masks", "{not_hdf5}", "--out", "{root}/ev3"], "not a readable HDF5"),
    ("HDF5 but not a mask file", [*EVALUATE, "--masks", "{foreign}", "--out", "{root}/ev4"],
     "not an explainers mask file"),
    ("maps replaced by another shape", [*EVALUATE, "--masks", "{reshaped}", "--out", "{root}/ev5"], "damaged"),
    ("mask file marked incomplete", [*EVALUATE, "--masks", "{unfinished}", "--out", "{root}/ev6"],
     "marked incomplete"),
    ("count disagrees with rows", [*EVALUATE, "--masks", "{miscounted}", "--out", "{root}/ev7"],
     "says it holds 7 images"),
    ("mask file without ids", [*EVALUATE, "--masks", "{no_ids}", "--out", "{root}/ev8"], "lacks dataset(s) ids"),
    # ---- evaluate: options and output
    ("unknown metric", [*EVALUATE, "--masks", "{masks}", "--out", "{root}/ev9", "--metrics", "pos,bogus"],
     "unknown metric(s) bogus"),
    ("metric option without metric", [*EVALUATE, "--masks", "{masks}", "--out", "{root}/ev10", "--metric-option",
                                      "adp=3"], "METRIC.KEY=VALUE"),
    ("bad nonfinite mode", [*EVALUATE, "--masks", "{masks}", "--out", "{root}/ev11", "--nonfinite", "skip"],
     "--nonfinite must be fail or exclude"),
    ("max batch 0", [*EVALUATE, "--masks", "{masks}", "--out", "{root}/ev12", "--max-batch", "0",
                     "--metrics", "pos"], "--max-batch must be at least 1"),
    ("report folder is a file", [*EVALUATE, "--masks", "{masks}", "--out", "{a_file}", "--metrics", "pos"],
     "cannot"),
    ("report under /proc", [*EVALUATE, "--masks", "{masks}", "--out", "/proc/report", "--metrics", "pos"],
     "cannot"),
]


@pytest.mark.parametrize(("args", "fragment"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_catalogue(world, args, fragment, monkeypatch):
    monkeypatch.delenv("EXPLAINERS_DEBUG", raising=False)
    code, err = run([a.format(**world) for a in args])
    lines = [ln for ln in err.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("explainers: error: "), err
    assert fragment in lines[0], lines[0]


def test_the_catalogue_is_big_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 40 and len({c[0] for c in CLI_CASES}) == len(CLI_CASES)


def _vit(world):
    return explainers.load_explainee(world["vit"])


def _method(world, images):
    method = explainers.get_method("random", _vit(world))
    return method(images)


def _bomb(world, monkeypatch):
    from explainers.data.base import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    return load_image(os.path.join(world["images"], "im0.png"))


def _nan_image(world):
    images = torch.rand(2, 3, 16, 16)
    images[1, 0, 3, 4] = float("nan")
    return _method(world, images)


# (name, call(world, monkeypatch), fragment of the message)
API_CASES = [
    ("images in 0..255", lambda w, m: _method(w, torch.rand(2, 3, 16, 16) * 255), "divide 0…255 images by 255"),
    ("normalised images", lambda w, m: _method(w, torch.randn(2, 3, 16, 16) * 2), "not images normalised"),
    ("NaN pixel", lambda w, m: _nan_image(w), "image 1 of the batch has NaN"),
    ("decompression bomb", _bomb, "decompression bomb"),
    ("unknown dataset option", lambda w, m: explainers.open_dataset(f"folder:{w['images']}", colour=1),
     "no option(s) colour"),
    ("subpackage attribute", lambda w, m: explainers.nonexistent, None),
]


@pytest.mark.parametrize(("call", "fragment"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_catalogue(world, call, fragment, monkeypatch):
    if fragment is None:  # a plain AttributeError, as for any module
        with pytest.raises(AttributeError):
            call(world, monkeypatch)
        return
    with pytest.raises(ExplainersError) as exc:
        call(world, monkeypatch)
    assert fragment in str(exc.value)


def test_subpackages_are_reachable_from_the_package():
    assert explainers.metrics.evaluate_maskfiles is not None
    assert explainers.io.MaskFile is not None and explainers.data.open_dataset is explainers.open_dataset


def test_explain_refuses_a_nan_image_naming_it(world, tmp_path):
    from evalkit import ListDataset
    from explainers.data.base import Sample
    from explainers.explain import explain_dataset

    good = torch.rand(3, 16, 16)
    bad = good.clone()
    bad[0, 0, 0] = float("inf")
    data = ListDataset([Sample(good, 0, None, "fine"), Sample(bad, 1, None, "broken-7")])
    method = explainers.get_method("random", _vit(world))
    with pytest.raises(ExplainersError, match="image broken-7 has NaN or infinite"):
        explain_dataset(method, data, tmp_path / "m.h5", progress=False)
    assert not (tmp_path / "m.h5").exists()


def test_png_names_are_one_to_one_and_stay_in_their_folder():
    from explainers.explain import png_name

    ids = ["a/b", "a_b", "a__b", "a b", "a%20b", "a%2Fb", "..", ".", "/etc/passwd", "A", "a", "é", "e\u0301",
           "x.png", "x"]
    names = [png_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(("/" not in n and "\\" not in n and n not in (".png", "..png")) or n == "..png" for n in names)
    assert all(n.endswith(".png") and n not in (".", "..") for n in names)
