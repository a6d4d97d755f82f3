"""Linear probes on a frozen encoder: fitting, files, the probe as an explainee, and LETA on a probe."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import build_hf_model
from explainers import ExplainersError, load_explainee
from explainers.cli import main
from explainers.learned.leta import LETAConfig, LETAExplainer
from explainers.models import load_probe, probe_explainee
from explainers.training.probe import fit_linear, train_probe
from test_leta_pretrain import make_tiny_benchmark

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_tiny_benchmark(tmp_path_factory.mktemp("probe-bench"))


def test_fit_linear_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.arange(3).repeat(40)
    x = centres[labels] + torch.randn(120, 3, generator=g) + 10.0  # offset: the folded bias must undo it
    linear = fit_linear(x, labels, 3, weight_decay=1e-4)
    assert (linear(x).argmax(1) == labels).float().mean() > 0.95
    assert linear.in_features == 3 and linear.out_features == 3


def test_train_save_load_and_explainee(tmp_path, bench, capsys):
    data, enc = bench
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train-probe",
                "--encoder",
                enc,
                "--data",
                data,
                "--task",
                "color",
                "--out",
                str(tmp_path / "probe"),
                "--no-progress",
            ]
        )
    assert exc.value.code in (0, None), capsys.readouterr().err
    cfg = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert cfg["task"] == "color" and cfg["class_names"] == ["red", "yellow", "green", "blue"]
    assert cfg["encoder"]["embed_dim"] == 32 and len(cfg["encoder"]["fingerprint"]) == 64
    assert set(cfg["metrics"]) == {"train_accuracy", "val_accuracy", "test_accuracy"}
    assert cfg["command"].startswith("explainers train-probe") and "--task color" in cfg["command"]
    probe = load_probe(tmp_path / "probe")
    assert probe.linear.weight.shape == (4, 32)

    adapter = probe_explainee(tmp_path / "probe")  # encoder loaded from the spec recorded in the probe
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        z = adapter.cls_embedding(adapter.normalize(images))
        assert torch.allclose(adapter.predict(images), probe(z), atol=1e-5)
    assert adapter.num_classes == 4 and adapter.class_names == cfg["class_names"]
    assert adapter.identifier.endswith("+probe:color")
    # Every command takes the probe as an explainee spec.
    by_spec = load_explainee(f"probe:{tmp_path / 'probe'}")
    with torch.no_grad():
        assert torch.equal(by_spec.predict(images), adapter.predict(images))


def test_probe_on_another_encoder_is_refused(tmp_path, bench):
    data, enc = bench
    probe = train_probe(
        load_explainee(enc), data, "quadrant", max_images=8, progress=False, val_split=None, test_split=None
    )
    probe.save_pretrained(tmp_path / "probe")
    other = load_explainee(build_hf_model(num_labels=4, seed=5))
    with pytest.raises(ExplainersError, match=r"linear probe .* made for other weights than encoder"):
        probe_explainee(tmp_path / "probe", encoder=other)
    explainer = LETAExplainer.build(other, LETAConfig(head_depth=1, radius=1))
    with pytest.raises(ExplainersError, match="train a probe on this encoder"):
        explainer(torch.rand(1, 3, 32, 32), head=str(tmp_path / "probe"))


def test_leta_explains_a_probe_head_given_by_directory(tmp_path, bench):
    data, enc = bench
    encoder = load_explainee(enc)
    probe = train_probe(
        encoder, data, "quadrant", max_images=8, progress=False, val_split=None, test_split=None
    )
    probe.save_pretrained(tmp_path / "probe")
    explainer = LETAExplainer.build(encoder, LETAConfig(head_depth=1, radius=1))
    images = torch.rand(2, 3, 32, 32)
    by_dir = explainer.attribute(images, head=str(tmp_path / "probe"))
    by_linear = explainer.attribute(images, head=probe.linear)
    assert torch.allclose(by_dir.scores, by_linear.scores, atol=1e-5)
    # A Sequential ending in the probe's Linear (dropout in front) is the same head.
    seq = nn.Sequential(nn.Dropout(0.1), probe.linear).eval()
    assert torch.allclose(explainer.attribute(images, head=seq).scores, by_linear.scores, atol=1e-5)
    with pytest.raises(ExplainersError, match="cannot use a Sequential"):
        explainer(images, head=nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)))


def test_explain_command_takes_explainer_and_head_folders(tmp_path, bench, capsys):
    """`explainers explain --method leta --explainer DIR --head PROBE` equals the Python transfer rule."""
    import h5py

    from explainers.data import open_dataset
    from explainers.methods import get_method

    data, enc = bench
    encoder = load_explainee(enc)
    probe = train_probe(encoder, data, "color", max_images=8, progress=False, val_split=None, test_split=None)
    probe.save_pretrained(tmp_path / "probe")
    LETAExplainer.build(encoder, LETAConfig(head_depth=1, radius=1)).save_pretrained(tmp_path / "leta")
    common = ["explain", "--method", "leta", "--explainee", enc, "--data", data, "--limit", "3", "--no-progress"]
    args = [*common, "--explainer", str(tmp_path / "leta"), "--head", str(tmp_path / "probe")]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "maps.h5")])
    assert exc.value.code in (0, None), capsys.readouterr().err
    method = get_method("leta", encoder, explainer=str(tmp_path / "leta"), head=str(tmp_path / "probe"))
    dataset = open_dataset(data)
    images = torch.stack([dataset[i].image for i in range(3)])
    with h5py.File(tmp_path / "maps.h5") as f:
        assert torch.allclose(torch.from_numpy(f["maps"][:]), method(images), atol=1e-5)
    # The same option twice is a user error, not a silent choice.
    with pytest.raises(SystemExit) as exc:
        main([*args, "--option", f"head={tmp_path / 'probe'}", "--out", str(tmp_path / "again.h5")])
    assert exc.value.code == 2 and "both given" in capsys.readouterr().err
