"""The learned assets shipped with the package: LETA explainer, linear probes (and pLTE), all bound to the
shipped explainee's encoder and reproducing their recorded numbers on freshly rendered scenes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import explainers
from explainers.data.synthetic import SyntheticConfig, render_scenes
from explainers.models import load_explainee, load_probe, probe_explainee
from explainers.models.signature import encoder_signature

ASSETS = Path(explainers.__file__).parent / "assets"
IMAGES = 400  # fresh test scenes; binomial sampling error at 80 % accuracy ≈ 2 points (1σ)


@pytest.fixture(scope="module")
def embedded():
    return load_explainee("embedded")


@pytest.fixture(scope="module")
def scenes():
    out = render_scenes(SyntheticConfig(), "test", 0, IMAGES)
    out["x"] = torch.from_numpy(out["images"]).permute(0, 3, 1, 2).float() / 255
    return out


@pytest.mark.parametrize("task", ["color", "size", "quadrant"])
def test_shipped_probe_reaches_its_recorded_accuracy(task, embedded, scenes) -> None:
    probe = load_probe(ASSETS / "probes" / task)
    record = json.loads((ASSETS / "probes" / task / "config.json").read_text())
    # Trained on the shipped explainee's current encoder (same weights fingerprint).
    assert probe.encoder["fingerprint"] == encoder_signature(embedded)["fingerprint"]
    adapter = probe_explainee(ASSETS / "probes" / task)
    with torch.no_grad():
        predicted = adapter.predict(scenes["x"]).argmax(-1).numpy()
    accuracy = (predicted == scenes["labels"][task]).mean()
    assert accuracy >= record["metrics"]["test_accuracy"] - 0.06


def test_shipped_leta_explains_the_probes(embedded, scenes) -> None:
    explainer = explainers.LETAExplainer.from_pretrained(ASSETS / "leta", encoder=embedded)
    images = scenes["x"][:32]
    # A patch is "object" when the class object covers a quarter of it.
    object_patches = torch.nn.functional.avg_pool2d(torch.from_numpy(scenes["masks"][:32]).float()[:, None], 8)
    object_patches = object_patches[:, 0] > 0.25
    # Measured on these 32 scenes: size 0.53 inside vs 0.45 outside (a weaker probe, 82 % accurate).
    for task, margin in (("color", 0.1), ("size", 0.03)):
        result = explainer.attribute(images, load_probe(ASSETS / "probes" / task).linear)
        assert result.maps.shape == (32, *embedded.grid) and torch.isfinite(result.maps).all()
        # Both tasks are properties of the object: its patches get more attribution than the rest.
        inside = result.maps[object_patches].mean()
        outside = result.maps[~object_patches].mean()
        assert inside > outside + margin, (task, float(inside), float(outside))


def test_shipped_plte_beats_random_on_fresh_scenes(embedded, scenes) -> None:
    from explainers.learned.lte.scoring import perturbation_auc

    explainer = explainers.LTEExplainer.from_pretrained(ASSETS / "plte", explainee=embedded)
    images, labels = scenes["x"][:64], torch.from_numpy(scenes["labels"]["shape"][:64])
    maps = explainer(images)
    assert maps.shape == (64, *embedded.image_size) and maps.min() >= 0 and maps.max() <= 1
    noise = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    plte_pos = perturbation_auc(embedded, images, maps, labels, "pos").mean()
    random_pos = perturbation_auc(embedded, images, noise, labels, "pos").mean()
    # Recorded on 400 test scenes (benchmarks/results/lte.md): pLTE far below random.
    assert plte_pos < random_pos - 10, (float(plte_pos), float(random_pos))
