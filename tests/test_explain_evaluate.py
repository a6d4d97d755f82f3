"""The explain pipeline (mask files, resume, extras, PNGs), the evaluation driver and both CLI commands,
including the bad inputs that must fail with one clear line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import explainers
from evalkit import CenterMethod, ListDataset, make_voc, random_dataset
from explainers import ExplainersError
from explainers.cli import main
from explainers.data.base import Sample
from explainers.explain import explain_dataset
from explainers.io import MaskFile, MaskFileWriter, partial_path
from explainers.metrics import evaluate_maskfiles


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc"), n=3)


def run_cli(args, capsys):
    """(exit code, stdout, the error line(s)); progress bars of model loading are dropped from stderr."""
    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    out = capsys.readouterr()
    err = "\n".join(line for line in out.err.splitlines() if "Loading weights" not in line)
    return exc.value.code or 0, out.out, err


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def test_explain_dataset_writes_everything(adapter, tmp_path):
    ds = random_dataset(5, size=16)
    summary = explain_dataset(
        CenterMethod(adapter),
        ds,
        tmp_path / "m.h5",
        batch_size=2,
        progress=False,
        png_dir=tmp_path / "png",
        limit=4,
    )
    assert summary.images == 4 and summary.written == 4 and not summary.nonfinite_ids
    with MaskFile(tmp_path / "m.h5") as mf:
        assert mf.ids == ds.ids[:4] and mf.method == "test-center" and mf.targets == "predicted"
        assert mf.explainee == adapter.describe() and mf.image_size == (16, 16)
        np.testing.assert_array_equal(mf.labels, [0, 1, 2, 3])
        images = torch.stack(
            [
                torch.nn.functional.interpolate(
                    ds[i].image[None], size=(16, 16), mode="bilinear", align_corners=False
                )[0]
                for i in range(4)
            ]
        )
        with torch.no_grad():
            predicted = adapter.predict(images.clamp(0, 1)).argmax(1).numpy()
        np.testing.assert_array_equal(mf.predicted, predicted)
        np.testing.assert_array_equal(mf.explained, predicted)
        np.testing.assert_array_equal(mf.extra("selected_step"), predicted * 2)
        maps = mf.maps()
        assert maps.shape == (4, 16, 16) and maps.min() == 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [f"img{i:03d}.png" for i in range(4)]
    summary = explain_dataset(CenterMethod(adapter), ds, tmp_path / "t.h5", targets="target", progress=False)
    with MaskFile(tmp_path / "t.h5") as mf:
        np.testing.assert_array_equal(mf.explained, mf.labels)


def test_explain_resumes_after_interruption(adapter, tmp_path):
    ds = random_dataset(5, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "full.h5", batch_size=2, progress=False)
    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(CenterMethod(adapter, fail_after=2), ds, out, batch_size=2, progress=False)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(ExplainersError, match="rerun the explain command"):
        MaskFile(out)
    with pytest.raises(ExplainersError, match="different run"):
        explain_dataset(CenterMethod(adapter, normalize=False), ds, out, batch_size=2, progress=False)
    method = CenterMethod(adapter)
    summary = explain_dataset(method, ds, out, batch_size=2, progress=False)
    assert summary.written == 1 and method.calls == 1  # 4 were committed before the interruption
    full, resumed = read(tmp_path / "full.h5"), read(out)
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k])
    with pytest.raises(ExplainersError, match="already exists"):
        explain_dataset(CenterMethod(adapter), ds, out, progress=False)


def test_explain_target_needs_labels(adapter, tmp_path):
    ds = ListDataset([Sample(image=torch.rand(3, 16, 16), label=-1, mask=None, id="u")])
    with pytest.raises(ExplainersError, match="--class predicted"):
        explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", targets="target", progress=False)


def test_evaluate_api_classes_and_nonfinite(adapter, tmp_path):
    ds = random_dataset(4, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "c.h5", progress=False)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "t.h5", targets="target", progress=False)
    # The class convention scored defaults to the one the maps were made for.
    res = evaluate_maskfiles(adapter, ds, [tmp_path / "t.h5"], "pos,neg,map", progress=False)
    assert res.config["classes"] == "target" and not res.warnings
    f = res.files[0]
    assert f.summaries["pos"]["class"] == "target" and f.summaries["map"]["class"].startswith("predicted")
    assert len(f.per_image["pos"]) == 4 and f.curves["pos"].shape == (4, 10)
    assert f.summaries["pos"]["value"] == pytest.approx(f.per_image["pos"].mean())
    pred = evaluate_maskfiles(adapter, ds, [tmp_path / "c.h5"], ["pos"], progress=False)
    assert pred.config["classes"] == "predicted"
    assert pred.files[0].curves["pos"][:, 0].tolist() == [1.0] * 4  # the clean image is always "correct"

    # A NaN map: refused by default, naming the image; excluded (and listed) when asked.
    with MaskFile(tmp_path / "c.h5") as mf:
        maps, ids = mf.maps(), mf.ids
        meta = dict(
            method=mf.method,
            method_config=mf.method_config,
            explainee=mf.explainee,
            image_size=mf.image_size,
            dataset=mf.dataset,
        )
        cols = (mf.labels, mf.predicted, mf.explained)
    maps[2, 3, 3] = np.nan
    w = MaskFileWriter(tmp_path / "nan.h5", **meta)
    w.append(ids, maps, *cols)
    w.finalize()
    with pytest.raises(ExplainersError, match=r"1 image\(s\) contain NaN.*img002.*--nonfinite exclude"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "nan.h5"], ["pos"], progress=False)
    res = evaluate_maskfiles(
        adapter,
        ds,
        [tmp_path / "c.h5", tmp_path / "nan.h5"],
        ["pos", "pixel-accuracy"],
        nonfinite="exclude",
        progress=False,
    )
    clean, nan = res.files
    assert nan.excluded == ["img002"] and nan.ids == ["img000", "img001", "img003"] and not clean.excluded
    np.testing.assert_array_equal(nan.per_image["pos"], clean.per_image["pos"][[0, 1, 3]])
    assert nan.label == "test-center (nan)"  # two files of one method get told apart


def test_evaluate_refuses_mismatches(adapter, tmp_path):
    ds = random_dataset(3, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "c.h5", progress=False)
    other = random_dataset(3, size=16, seed=1)
    other.samples = [Sample(s.image, s.label, s.mask, f"x{i}") for i, s in enumerate(other.samples)]
    with pytest.raises(ExplainersError, match=r"3 of 3 images .* are not in dataset"):
        evaluate_maskfiles(adapter, other, [tmp_path / "c.h5"], ["pos"], progress=False)
    from conftest import build_hf_model

    bigger = explainers.load_explainee(build_hf_model("vit", image_size=24, patch_size=8))
    with pytest.raises(ExplainersError, match=r"16×16 maps but explainee .* takes 24×24"):
        evaluate_maskfiles(bigger, ds, [tmp_path / "c.h5"], ["pos"], progress=False)
    unlabelled = ListDataset([Sample(s.image, -1, s.mask, s.id) for s in ds.samples])
    explain_dataset(CenterMethod(adapter), unlabelled, tmp_path / "u.h5", progress=False)
    with pytest.raises(ExplainersError, match="--class target needs ground-truth labels"):
        evaluate_maskfiles(
            adapter, unlabelled, [tmp_path / "u.h5"], ["pos"], classes="target", progress=False
        )
    no_masks = random_dataset(3, size=16, masks=False)
    with pytest.raises(ExplainersError, match="needs ground-truth masks"):
        evaluate_maskfiles(adapter, no_masks, [tmp_path / "c.h5"], ["miou"], progress=False)
    res = evaluate_maskfiles(adapter, no_masks, [tmp_path / "c.h5"], "all", progress=False)
    assert "miou" not in res.files[0].summaries and "patch-insertion" in res.files[0].summaries


def test_cli_explain_and_evaluate(vit_dir, voc, tmp_path, capsys):
    common = ["--explainee", str(vit_dir), "--data", f"voc:{voc}"]
    for method, extra in (
        ("random", ["--option", "seed=3"]),
        ("test-center", ["--png", str(tmp_path / "png")]),
    ):
        code, out, err = run_cli(
            [
                "explain",
                "--method",
                method,
                *common,
                "--out",
                str(tmp_path / f"{method}.h5"),
                "--batch-size",
                "2",
                *extra,
            ],
            capsys,
        )
        assert code == 0, err
        assert f"wrote {tmp_path / method}.h5: 3 maps" in out
    with MaskFile(tmp_path / "random.h5") as mf:
        assert mf.method_config["seed"] == 3 and "voc:" in mf.dataset
    code, out, err = run_cli(
        [
            "evaluate",
            *common,
            "--masks",
            str(tmp_path / "random.h5"),
            "--masks",
            str(tmp_path / "test-center.h5"),
            "--metrics",
            "pos,neg,insertion,adp,miou,map",
            "--out",
            str(tmp_path / "ev"),
            "--metric-option",
            "insertion.steps=4",
        ],
        capsys,
    )
    assert code == 0, err
    ev = tmp_path / "ev"
    names = {p.name for p in ev.iterdir()}
    assert names == {"metrics.json", "metrics.npz", "metrics.md", "curves.png", "heatmaps.png"}
    data = json.loads((ev / "metrics.json").read_text())
    assert data["config"]["classes"] == "predicted"  # VOC has no class labels
    assert [r["label"] for r in data["results"]] == ["random", "test-center"]
    assert data["curve_x"]["insertion"] == [0, 0.25, 0.5, 0.75, 1]
    assert data["versions"]["explainers"] == explainers.__version__ and data["machine"]["cpu_count"]
    assert data["results"][0]["summaries"]["adp"]["maps_minmax_normalized"] is True
    npz = np.load(ev / "metrics.npz")
    assert npz["r1/pos"].mean() == pytest.approx(data["results"][1]["values"]["pos"])
    assert list(npz["r0/ids"]) == ["2007_000000", "2007_000001", "2007_000002"]
    md = (ev / "metrics.md").read_text()
    assert "| random | 3 |" in md and "| test-center | 3 |" in md and "pos ↓" in md and "map ↑" in md
    assert "| method |" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "pos,bogus"], "unknown metric(s) bogus; valid metrics: "),
        (["--class", "target"], "--class target needs ground-truth labels"),
        (["--nonfinite", "skip"], "--nonfinite must be fail or exclude"),
        (["--metric-option", "adp=3"], "METRIC.KEY=VALUE"),
        (["--metric-option", "pos.steps=3", "--metrics", "pos"], "has no option(s) steps"),
    ],
)
def test_cli_bad_input_is_one_line(vit_dir, voc, tmp_path_factory, capsys, args, message):
    work = tmp_path_factory.mktemp("bad")
    common = ["--explainee", str(vit_dir), "--data", f"voc:{voc}"]
    maps = work / "m.h5"
    assert run_cli(["explain", "--method", "random", *common, "--out", str(maps)], capsys)[0] == 0
    code, _, err = run_cli(
        ["evaluate", *common, "--masks", str(maps), "--out", str(work / "ev"), *args], capsys
    )
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert not (work / "ev" / "metrics.json").exists()


def test_cli_incomplete_mask_file(vit_dir, voc, tmp_path, capsys):
    partial_path(tmp_path / "m.h5").write_bytes(b"")
    code, _, err = run_cli(
        [
            "evaluate",
            "--explainee",
            str(vit_dir),
            "--data",
            f"voc:{voc}",
            "--masks",
            str(tmp_path / "m.h5"),
            "--out",
            str(tmp_path / "ev"),
        ],
        capsys,
    )
    assert code == 2 and "incomplete" in err and "rerun the explain command" in err
    code, _, err = run_cli(
        [
            "explain",
            "--method",
            "nope",
            "--explainee",
            str(vit_dir),
            "--data",
            f"voc:{voc}",
            "--out",
            str(tmp_path / "x.h5"),
        ],
        capsys,
    )
    assert code == 2 and "unknown method 'nope'" in err
