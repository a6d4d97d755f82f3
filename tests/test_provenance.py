"""Mask files record what they were made with, and ``evaluate`` checks it (explainee weights, dataset and
labelling, class convention, LETA head); duplicated ids and repeated files; non-finite per-image values;
the fill the patch metrics use."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import explainers
from evalkit import CenterMethod, ListDataset, random_dataset, save_tiny_vit
from explainers import ExplainersError
from explainers.cli import main
from explainers.data import open_dataset
from explainers.data.base import Sample
from explainers.explain import explain_dataset
from explainers.io import MaskFile, MaskFileWriter
from explainers.metrics import evaluate_maskfiles
from explainers.metrics.report import to_markdown, write_report

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    """Same architecture and configuration as ``vit_dir``, other weights."""
    return save_tiny_vit(tmp_path_factory.mktemp("twin") / "vit", image_size=16, patch_size=8, seed=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("synth") / "scenes"
    generate_synthetic(out, SyntheticConfig(image_size=64, train_size=0, val_size=0, test_size=6), progress=False)
    return out


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    out = capsys.readouterr()
    err = "\n".join(line for line in out.err.splitlines() if "Loading weights" not in line)
    return exc.value.code or 0, out.out, err


# ------------------------------------------------------------------------------------------ recording
def test_mask_file_records_what_it_was_made_with(adapter, scenes, tmp_path):
    ds = open_dataset(f"synthetic:{scenes}", split="test", task="color")
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", progress=False, dataset_spec=f"synthetic:{scenes}")
    with MaskFile(tmp_path / "m.h5") as mf:
        assert mf.explainee_fingerprint == adapter.weights_fingerprint()
        assert mf.explainee == adapter.describe()
        info = mf.dataset_info
        assert info["spec"] == f"synthetic:{scenes}" and info["kind"] == "synthetic"
        assert info["location"] == str(scenes.resolve()) and info["split"] == "test" and info["task"] == "color"
        assert info["class_names"] == ds.class_names
        assert mf.targets == "predicted" and mf.has_head_record and mf.head is None
        np.testing.assert_array_equal(mf.labels, ds.labels)
        described = mf.describe()
        assert described["explainee_fingerprint"] == adapter.weights_fingerprint()
        assert described["dataset_info"]["task"] == "color"


def test_resume_refuses_another_explainee_of_the_same_architecture(tmp_path):
    from conftest import build_hf_model

    ds = random_dataset(4, size=16)
    out = tmp_path / "m.h5"
    first, twin = (
        explainers.load_explainee(build_hf_model("vit", seed=seed, image_size=16, patch_size=8)) for seed in (0, 1)
    )
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(CenterMethod(first, fail_after=1), ds, out, batch_size=2, progress=False)
    assert twin.describe() == first.describe()  # only the weights tell them apart
    with pytest.raises(ExplainersError, match="explainee_fingerprint"):
        explain_dataset(CenterMethod(twin), ds, out, batch_size=2, progress=False)


# ------------------------------------------------------------------------------------------ checking
def test_evaluate_refuses_another_explainee_and_records_it_when_allowed(adapter, twin_dir, tmp_path):
    ds = random_dataset(3, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", progress=False)
    twin = explainers.load_explainee(str(twin_dir))
    with pytest.raises(ExplainersError, match=r"explainee weights differ.*--allow-mismatch") as exc:
        evaluate_maskfiles(twin, ds, [tmp_path / "m.h5"], ["pos"], progress=False)
    assert "\n" not in str(exc.value)
    res = evaluate_maskfiles(
        twin, ds, [tmp_path / "m.h5"], ["pos", "patch-deletion"], allow_mismatch=True, progress=False
    )
    checks = res.files[0].checks
    assert any("explainee weights differ" in m for m in checks["mismatches"]) and not checks["unchecked"]
    assert res.config["allow_mismatch"] is True
    paths = write_report(res, tmp_path / "ev")
    data = json.loads(paths["json"].read_text())
    assert any("explainee weights differ" in m for m in data["results"][0]["checks"]["mismatches"])
    assert any("explainee weights differ" in w for w in data["warnings"])
    md = paths["md"].read_text()
    assert "scored despite a mismatch: explainee weights differ" in md
    # The report says which fill the patch metrics used (the explainee's mean colour by default).
    assert "fill=mean (removed pixels take the explainee's mean colour" in md
    assert data["metrics"][1]["options"] == {"fill": "mean"}
    # The same explainee is accepted without a word.
    ok = evaluate_maskfiles(adapter, ds, [tmp_path / "m.h5"], ["pos"], progress=False)
    assert ok.files[0].checks["mismatches"] == [] and not ok.warnings


def test_evaluate_refuses_another_labelling(adapter, scenes, tmp_path):
    spec = f"synthetic:{scenes}"
    shape = open_dataset(spec, split="test", task="shape")
    color = open_dataset(spec, split="test", task="color")
    assert (shape.labels != color.labels).any()
    explain_dataset(CenterMethod(adapter), shape, tmp_path / "m.h5", progress=False, dataset_spec=spec)
    with pytest.raises(ExplainersError) as exc:
        evaluate_maskfiles(adapter, color, [tmp_path / "m.h5"], ["pos"], progress=False, dataset_spec=spec)
    message = str(exc.value)
    assert "dataset task: file shape, data color" in message and "labels differ for" in message
    assert "dataset class_names" in message and "\n" not in message
    # A labelling that only the labels tell apart (an in-memory dataset without a task) is caught too,
    # while the images are scored.
    ds = random_dataset(4, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "r.h5", progress=False)
    relabelled = ListDataset([Sample(s.image, (s.label + 1) % 5, s.mask, s.id) for s in ds.samples], ds.name)
    with pytest.raises(ExplainersError, match=r"labels differ for 4 of 4 images \(e.g. img000"):
        evaluate_maskfiles(adapter, relabelled, [tmp_path / "r.h5"], ["pos"], progress=False)
    res = evaluate_maskfiles(
        adapter, relabelled, [tmp_path / "r.h5"], ["pos"], allow_mismatch=True, progress=False
    )
    assert any("labels differ for 4 of 4" in m for m in res.files[0].checks["mismatches"])


def test_evaluate_class_convention_defaults_to_the_files(adapter, tmp_path):
    ds = random_dataset(4, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "p.h5", progress=False)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "t.h5", targets="target", progress=False)
    assert evaluate_maskfiles(adapter, ds, [tmp_path / "p.h5"], ["pos"], progress=False).config["classes"] == (
        "predicted"
    )
    assert evaluate_maskfiles(adapter, ds, [tmp_path / "t.h5"], ["pos"], progress=False).config["classes"] == (
        "target"
    )
    with pytest.raises(ExplainersError, match="maps explain the predicted class, scored for the target class"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "p.h5"], ["pos"], classes="target", progress=False)
    with pytest.raises(ExplainersError, match="different class conventions"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "p.h5", tmp_path / "t.h5"], ["pos"], progress=False)
    res = evaluate_maskfiles(
        adapter,
        ds,
        [tmp_path / "p.h5", tmp_path / "t.h5"],
        ["pos"],
        classes="target",
        allow_mismatch=True,
        progress=False,
    )
    assert res.files[0].checks["mismatches"] and not res.files[1].checks["mismatches"]


def test_old_mask_files_are_scored_with_the_missing_checks_named(adapter, tmp_path):
    ds = random_dataset(3, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", progress=False)
    with h5py.File(tmp_path / "m.h5", "r+") as f:  # as written before provenance was recorded
        for key in ("explainee_fingerprint", "dataset_info", "head"):
            del f.attrs[key]
    res = evaluate_maskfiles(adapter, ds, [tmp_path / "m.h5"], ["pos"], progress=False)
    assert res.files[0].checks["unchecked"] == ["head", "explainee weights", "dataset"]
    assert any("could not check head, explainee weights, dataset" in w for w in res.warnings)
    assert "could not check" in to_markdown(res)


def test_duplicated_ids_and_repeated_files_are_refused(adapter, tmp_path):
    ds = random_dataset(3, size=16)
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", progress=False)
    with pytest.raises(ExplainersError, match="given twice"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "m.h5", tmp_path / "." / "m.h5"], ["pos"], progress=False)
    with MaskFile(tmp_path / "m.h5") as mf:
        meta = dict(
            method=mf.method,
            method_config=mf.method_config,
            explainee=mf.explainee,
            image_size=mf.image_size,
            dataset=mf.dataset,
        )
        maps, cols = mf.maps(), (mf.labels, mf.predicted, mf.explained)
    # The writer refuses a repeated id, so write the damaged file directly.
    w = MaskFileWriter(tmp_path / "dup.h5", **meta)
    w.append(["img000", "img001", "img002"], maps, *cols)
    w.finalize()
    with h5py.File(tmp_path / "dup.h5", "r+") as f:
        f["ids"][2] = "img000"
    with pytest.raises(ExplainersError, match=r"holds 1 image id\(s\) more than once \(e.g. img000\)"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "dup.h5"], ["pos"], progress=False)


def test_cli_allow_mismatch(vit_dir, twin_dir, tmp_path, capsys):
    from evalkit import make_voc

    voc = make_voc(tmp_path / "voc", n=2)
    common = ["--data", f"voc:{voc}"]
    maps = tmp_path / "m.h5"
    explain = ["explain", "--method", "random", "--explainee", str(vit_dir), *common, "--out", str(maps)]
    assert run_cli(explain, capsys)[0] == 0
    args = ["evaluate", "--explainee", str(twin_dir), *common, "--masks", str(maps), "--metrics", "pos"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "explainee weights differ" in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "ev").exists()
    code, _, err = run_cli([*args, "--out", str(tmp_path / "ev"), "--allow-mismatch"], capsys)
    assert code == 0, err
    assert "warning:" in err and "explainee weights differ" in err
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert data["config"]["allow_mismatch"] is True and data["results"][0]["checks"]["mismatches"]


# ------------------------------------------------------------------------------------------ LETA head
def test_leta_head_is_recorded_and_checked(scenes, tmp_path):
    from explainers.demo import assets_dir
    from explainers.methods import get_method
    from explainers.models import probe_explainee

    encoder = explainers.load_explainee("embedded")
    probe_dir = assets_dir() / "probes" / "color"
    color = open_dataset(f"synthetic:{scenes}", split="test", task="color")
    spec = f"synthetic:{scenes}"
    leta = get_method("leta", encoder, head=str(probe_dir))
    explain_dataset(leta, color, tmp_path / "leta.h5", limit=2, progress=False, dataset_spec=spec)
    with MaskFile(tmp_path / "leta.h5") as mf:
        assert mf.head["source"] == str(probe_dir) and len(mf.head["fingerprint"]) == 64
        assert mf.explainee_fingerprint == encoder.weights_fingerprint()
    # Scored against the encoder's own (shape) classifier: refused, naming the head.
    with pytest.raises(ExplainersError, match=r"maps explain head .*probes/color"):
        evaluate_maskfiles(encoder, color, [tmp_path / "leta.h5"], ["pos"], progress=False, dataset_spec=spec)
    # Scored with the encoder + that probe, the explainee the maps explain: accepted.
    res = evaluate_maskfiles(
        probe_explainee(probe_dir), color, [tmp_path / "leta.h5"], ["pos"], progress=False, dataset_spec=spec
    )
    assert res.files[0].checks["mismatches"] == [] and not res.warnings
    # Another probe (another head) on the same encoder is a mismatch.
    with pytest.raises(ExplainersError, match="maps explain head"):
        evaluate_maskfiles(
            probe_explainee(assets_dir() / "probes" / "size"),
            color,
            [tmp_path / "leta.h5"],
            ["pos"],
            progress=False,
            dataset_spec=spec,
            allow_mismatch=False,
        )
    # Without --head LETA explains the explainee's own classifier: no head recorded.
    explain_dataset(get_method("leta", encoder), color, tmp_path / "own.h5", limit=2, progress=False)
    with MaskFile(tmp_path / "own.h5") as mf:
        assert mf.has_head_record and mf.head is None


# ------------------------------------------------------------------------------------------ non-finite values
class HugeLogits(nn.Module):
    """Class 0 logit 200·(sum of the top row's normalised pixels), class 1 logit 100: on a white image the
    probability of class 1 underflows to exactly 0, so ADP divides 0 by 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=1).flatten(1)[:, :4].sum(dim=1) * 200
        return torch.stack([z, torch.full_like(z, 100.0)], dim=1)


def test_nonfinite_metric_values_fail_or_are_excluded_and_counted(tmp_path):
    adapter = explainers.load_explainee(HugeLogits(), image_size=4, mean=[0.5] * 3, std=[0.5] * 3)
    samples = [
        Sample(torch.ones(3, 4, 4), 1, None, "white"),  # p(class 1) = 0 → ADP NaN
        Sample(torch.zeros(3, 4, 4), 1, None, "black"),  # p(class 1) = 1 → ADP finite
    ]
    ds = ListDataset(samples, "huge")
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "m.h5", targets="target", progress=False)
    with pytest.raises(ExplainersError, match=r"metric adp is NaN or inf for 1 image\(s\) \(white\).*exclude"):
        evaluate_maskfiles(adapter, ds, [tmp_path / "m.h5"], ["adp"], progress=False)
    res = evaluate_maskfiles(adapter, ds, [tmp_path / "m.h5"], ["adp", "pic"], nonfinite="exclude", progress=False)
    adp = res.files[0].summaries["adp"]
    assert adp["nonfinite_excluded"] == 1 and adp["nonfinite_ids"] == ["white"] and adp["n"] == 1
    assert np.isnan(res.files[0].per_image["adp"][0]) and adp["value"] == res.files[0].per_image["adp"][1]
    assert "nonfinite_excluded" not in res.files[0].summaries["pic"]
    paths = write_report(res, tmp_path / "ev")
    data = json.loads(paths["json"].read_text())
    assert data["results"][0]["summaries"]["adp"]["nonfinite_excluded"] == 1
    assert "adp: 1 image(s) with a NaN/inf value left out of the mean (white)" in paths["md"].read_text()
