"""Pointing game and energy inside the ground truth against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit import hand_adapter
from explainers import ExplainersError
from explainers.metrics import BatchContext, MetricInputs, get_metric


def score(name, maps, gt, ignore=None, **options):
    n = len(maps)
    inputs = MetricInputs(
        images=torch.ones(n, 3, 4, 4),  # not read
        maps=maps,
        classes=torch.zeros(n, dtype=torch.long),
        clean_logits=torch.zeros(n, 2),
        ids=[f"img{i}" for i in range(n)],
        gt=gt,
        ignore=ignore,
    )
    return get_metric(name, **options).compute(BatchContext(hand_adapter(), inputs)).values


GT = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)


def test_pointing_game_by_hand():
    inside = torch.zeros(4, 4)
    inside[1, 1] = 1.0  # unique maximum inside the 2×2 ground truth
    outside = torch.zeros(4, 4)
    outside[3, 3] = 1.0
    tie = torch.zeros(4, 4)
    tie[0, 0] = tie[0, 3] = tie[3, 0] = 1.0  # three maxima, one inside
    constant = torch.full((4, 4), 0.3)  # 16 maxima, 4 inside
    maps = torch.stack([inside, outside, tie, constant])
    values = score("pointing-game", maps, GT.expand(4, 4, 4))
    np.testing.assert_allclose(values, [100, 0, 100 / 3, 25])


def test_pointing_game_tolerance_and_ignore():
    m = torch.zeros(1, 4, 4)
    m[0, 2, 2] = 1.0  # diagonal neighbour of the ground truth's corner (1, 1)
    assert score("pointing-game", m, GT[None])[0] == 0
    assert score("pointing-game", m, GT[None], tolerance=1)[0] == 100
    # An ignored pixel never counts as the peak: the next-highest value inside the GT wins.
    m[0, 0, 0] = 0.5
    ignore = torch.zeros(1, 4, 4, dtype=torch.bool)
    ignore[0, 2, 2] = True
    assert score("pointing-game", m, GT[None], ignore=ignore)[0] == 100
    with pytest.raises(ExplainersError, match="tolerance"):
        get_metric("pointing-game", tolerance=-1)


def test_energy_by_hand():
    # Values 0…15 row-major; min–max → v/15; mass inside the GT (0, 1, 4, 5) = 10, total = 120.
    ramp = torch.arange(16.0).reshape(4, 4)
    # Shifted and scaled copies score the same (min–max first); a constant map is uniform: 4/16.
    maps = torch.stack([ramp, 3 * ramp - 7, torch.full((4, 4), 2.0)])
    values = score("energy-in-gt", maps, GT.expand(3, 4, 4))
    np.testing.assert_allclose(values, [100 * 10 / 120, 100 * 10 / 120, 25])
    # Ignoring pixel 15 (the maximum): min–max over the rest → v/14, inside 10, total 105.
    ignore = torch.zeros(1, 4, 4, dtype=torch.bool)
    ignore[0, 3, 3] = True
    assert score("energy-in-gt", ramp[None], GT[None], ignore=ignore)[0] == pytest.approx(100 * 10 / 105)


def test_localization_refuses_missing_or_empty_ground_truth():
    maps = torch.rand(2, 4, 4)
    gt = torch.stack([GT, torch.zeros(4, 4, dtype=torch.bool)])
    for name in ("pointing-game", "energy-in-gt"):
        with pytest.raises(ExplainersError, match="img1"):
            score(name, maps, gt)
        with pytest.raises(ExplainersError, match="ground-truth masks"):
            score(name, maps, None)
        m = get_metric(name)
        assert m.direction == "higher" and m.category == "localization" and m.needs_gt


def test_class_sensitivity_by_hand():
    own = torch.zeros(4, 4, dtype=torch.bool)
    own[0, :2] = True  # 2 pixels
    other = torch.zeros(4, 4, dtype=torch.bool)
    other[3, :] = True  # 4 pixels
    on_own = torch.zeros(4, 4)
    on_own[0, 0] = 1.0  # own mean 0.5 > other mean 0
    on_other = torch.zeros(4, 4)
    on_other[3, 0] = on_other[3, 1] = 1.0  # own 0 < other 0.5
    spread = torch.zeros(4, 4)
    spread[0, 0] = spread[3, 0] = spread[3, 1] = 1.0  # own 0.5 == other 0.5: a tie, half credit
    # Uniform over both objects: equal means although the other object is twice as large (mass 2 vs 4).
    both = (own | other).float()
    maps = torch.stack([on_own, on_other, spread, both])
    n = len(maps)
    inputs = MetricInputs(
        images=torch.ones(n, 3, 4, 4),
        maps=maps,
        classes=torch.zeros(n, dtype=torch.long),
        clean_logits=torch.zeros(n, 2),
        ids=[f"img{i}" for i in range(n)],
        gt=own.expand(n, 4, 4),
        counter=other.expand(n, 4, 4),
    )
    values = get_metric("class-sensitivity").compute(BatchContext(hand_adapter(), inputs)).values
    np.testing.assert_allclose(values, [100, 0, 50, 50])
    inputs.counter = None
    with pytest.raises(ExplainersError, match="counter-evidence"):
        get_metric("class-sensitivity").compute(BatchContext(hand_adapter(), inputs))


def test_contrast_counter_evidence_reaches_the_metrics(tmp_path):
    """A contrast dataset's counter masks travel through collate into the evaluation."""
    from explainers.data.base import collate
    from explainers.data.synthetic import SyntheticConfig, SyntheticDataset, generate_synthetic

    cfg = SyntheticConfig(scenario="contrast", object_size=(0.12, 0.17), train_size=0, val_size=0, test_size=2)
    data = SyntheticDataset(generate_synthetic(tmp_path / "c", cfg, progress=False), split="test")
    batch = collate([data[i] for i in range(4)], (32, 32))
    assert batch.counter is not None and batch.counter.shape == (4, 32, 32)
    # Sample 2i's counter-evidence is sample 2i+1's ground truth and vice versa.
    assert torch.equal(batch.counter[0], batch.masks[1]) and torch.equal(batch.counter[1], batch.masks[0])
    # A map equal to the ground truth favours it; its counter map (the other object) does not.
    maps = batch.masks.float()
    inputs = MetricInputs(
        images=batch.images,
        maps=maps,
        classes=batch.labels,
        clean_logits=torch.zeros(4, 2),
        ids=batch.ids,
        gt=batch.masks,
        counter=batch.counter,
    )
    np.testing.assert_allclose(
        get_metric("class-sensitivity").compute(BatchContext(hand_adapter(), inputs)).values, 100
    )
    inputs.maps = batch.counter.float()
    np.testing.assert_allclose(get_metric("class-sensitivity").compute(BatchContext(hand_adapter(), inputs)).values, 0)
