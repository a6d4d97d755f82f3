"""The shipped scenario explainees: accuracy, and the cue explainee's evidence checked by intervention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainers import load_explainee
from explainers.benchmark.scenarios import SCENARIOS, asset
from explainers.data.synthetic import SyntheticConfig, render_scenes

SCENES = 300


def predictions(adapter, config: SyntheticConfig, omit=()) -> tuple[np.ndarray, dict]:
    scenes = render_scenes(config, "test", 0, SCENES, omit=omit)
    images = torch.from_numpy(scenes["images"]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return adapter.predict(images).argmax(1).numpy(), scenes


def test_cue_explainee_uses_the_cue_and_ignores_the_object(one_thread):
    scenario = SCENARIOS["cue"]
    adapter = load_explainee(str(asset(scenario.explainee)))
    config = SyntheticConfig(**scenario.synthetic)
    clean, scenes = predictions(adapter, config)
    labels = scenes["labels"]["cue"]
    assert (clean == labels).mean() >= 0.95
    # Without the cue nothing tells the colour: accuracy drops to chance (4 classes) and most predictions
    # change. Without the large, salient object the model answers exactly as before.
    no_cue, _ = predictions(adapter, config, omit=("cue",))
    assert (no_cue == labels).mean() <= 0.4 and (no_cue != clean).mean() >= 0.6
    no_object, _ = predictions(adapter, config, omit=("object",))
    assert (no_object != clean).mean() <= 0.02


@pytest.mark.parametrize(
    "name", [s.name for s in SCENARIOS.values() if s.name != "contrast" and asset(s.explainee) is not None]
)
def test_each_scenario_explainee_is_accurate_on_its_scenes(name, one_thread):
    scenario = SCENARIOS[name]
    adapter = load_explainee(str(asset(scenario.explainee)))
    predicted, scenes = predictions(adapter, SyntheticConfig(**scenario.synthetic))
    labels = scenes["labels"]["cue" if name == "cue" else "shape"]
    assert (predicted == labels).mean() >= 0.95


def test_cue_plte_points_at_the_cue(one_thread):
    from explainers.methods import get_method
    from explainers.metrics.localization import energy_share

    scenario = SCENARIOS["cue"]
    adapter = load_explainee(str(asset(scenario.explainee)))
    plte = get_method("plte", adapter, explainer=str(asset(scenario.plte)))
    scenes = render_scenes(SyntheticConfig(**scenario.synthetic), "test", 0, 32)
    images = torch.from_numpy(scenes["images"]).permute(0, 3, 1, 2).float() / 255
    maps = plte(images, torch.from_numpy(scenes["labels"]["cue"]))
    on_cue = energy_share(maps, torch.from_numpy(scenes["cue_masks"])).mean().item()
    on_object = energy_share(maps, torch.from_numpy(scenes["masks"])).mean().item()
    # The cue is 0.9 % of the image: a map that ignored it would put about that share of its mass there.
    assert on_cue > 0.2 and on_cue > 2 * on_object
