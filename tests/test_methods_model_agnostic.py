"""Integrated Gradients and RISE: completeness, options, an explicit re-computation, any explainee."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import build_hf_model
from explainers import load_explainee
from explainers.methods import get_method
from explainers.methods.integrated_gradients import integrated_gradients, quadrature
from explainers.methods.rise import RiseMasks, default_grid_size


class _SmoothCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).mean((2, 3)))


def _plain():
    return load_explainee(_SmoothCNN().eval(), image_size=32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.2])


def test_quadrature_rules_integrate_polynomials():
    for rule in ("gauss-legendre", "riemann-middle", "riemann-trapezoid", "riemann-right"):
        a, w = quadrature(200, rule)
        assert abs(float(w.sum()) - 1) < 1e-6
        assert abs(float((w * a**2).sum()) - 1 / 3) < 1e-2
    a, w = quadrature(5, "gauss-legendre")  # exact for degree ≤ 9
    assert abs(float((w.double() * a.double() ** 9).sum()) - 0.1) < 1e-6


@pytest.mark.parametrize("which", ["vit", "plain"])
def test_integrated_gradients_completeness(which, images):
    adapter = load_explainee(build_hf_model("vit")) if which == "vit" else _plain()
    targets = torch.tensor([0, 2, 4])
    attributions = integrated_gradients(adapter, images, targets, steps=50, internal_batch_size=40)
    with torch.no_grad():
        full = adapter.predict(images).gather(1, targets[:, None])[:, 0]
        black = adapter.predict(torch.zeros_like(images)).gather(1, targets[:, None])[:, 0]
    # Σ attributions = f(x) − f(black) before the channel sum and the absolute value
    torch.testing.assert_close(attributions.sum((1, 2, 3)), full - black, rtol=1e-3, atol=1e-4)
    # the method: channel sum, then |·| (default) or the positive part
    raw = integrated_gradients(adapter, images, targets, steps=10).sum(1)
    maps = get_method("integrated-gradients", adapter, steps=10, normalize=False)(images, targets)
    torch.testing.assert_close(maps, raw.abs())
    positive = get_method("integrated-gradients", adapter, steps=10, sign="positive", normalize=False)(
        images, targets
    )
    torch.testing.assert_close(positive, raw.clamp(min=0))


def test_integrated_gradients_chunking_does_not_change_the_result(images):
    adapter = load_explainee(build_hf_model("deit-distilled"))
    targets = torch.tensor([1, 1, 3])
    whole = integrated_gradients(
        adapter, images, targets, steps=6, rule="riemann-trapezoid", internal_batch_size=18
    )
    ones = integrated_gradients(
        adapter, images, targets, steps=6, rule="riemann-trapezoid", internal_batch_size=1
    )
    torch.testing.assert_close(whole, ones, rtol=1e-4, atol=1e-6)
    # the memory budget picks the chunk: a tiny budget means one image per pass, same maps
    tiny = get_method("integrated-gradients", adapter, steps=6, memory_budget_mb=1e-6, normalize=False)
    roomy = get_method("integrated-gradients", adapter, steps=6, normalize=False)
    torch.testing.assert_close(tiny(images, targets), roomy(images, targets), rtol=1e-4, atol=1e-6)
    assert tiny._auto_batch == 1 and roomy._auto_batch > 18


def test_rise_masks():
    masks = RiseMasks(300, 4, 0.5, (32, 24), seed=3)
    m = masks.chunk(0, 300)
    assert m.shape == (300, 32, 24) and m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.5) < 0.05
    assert masks.cell == (8, 6)  # ⌈32/4⌉, ⌈24/4⌉
    # random shifts: every offset in [0, cell) is used, so mask edges do not all sit on one lattice
    assert set(masks.shift_y.tolist()) == set(range(8)) and set(masks.shift_x.tolist()) == set(range(6))
    torch.testing.assert_close(masks.chunk(10, 20), m[10:20])  # chunking does not change the masks
    torch.testing.assert_close(RiseMasks(300, 4, 0.5, (32, 24), seed=3).chunk(0, 300), m)
    assert not torch.equal(RiseMasks(300, 4, 0.5, (32, 24), seed=4).chunk(0, 300), m)


def test_rise_grid_size_scales_with_the_explainee():
    assert (
        default_grid_size(
            load_explainee(build_hf_model("vit", image_size=224, patch_size=16, num_hidden_layers=1))
        )
        == 7
    )
    assert (
        default_grid_size(
            load_explainee(build_hf_model("vit", image_size=64, patch_size=8, num_hidden_layers=1))
        )
        == 4
    )
    assert default_grid_size(_plain()) == 2


def test_rise_equals_its_formula(images):
    adapter = load_explainee(build_hf_model("vit"))
    targets = torch.tensor([0, 1, 2])
    method = get_method("rise", adapter, num_masks=40, p=0.5, seed=7, batch_size=7, normalize=False)
    maps = method(images, targets)
    masks = RiseMasks(40, method.grid_size, 0.5, (32, 32), seed=7).chunk(0, 40)
    expected = torch.zeros(3, 32, 32)
    with torch.no_grad():
        for i in range(40):  # the formula, one mask at a time
            probs = adapter.predict(images * masks[i]).softmax(-1)
            expected += probs[torch.arange(3), targets][:, None, None] * masks[i]
    torch.testing.assert_close(maps, expected / (40 * 0.5), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method(images, targets), maps)  # same masks on every call


class _LeftHalf(nn.Module):
    """Class 0's logit grows with the brightness of the left half only."""

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([8 * left, torch.zeros_like(left)], dim=1)


def test_rise_and_ig_find_the_evidence():
    adapter = load_explainee(_LeftHalf(), image_size=32, mean=[0.0] * 3, std=[1.0] * 3)
    images = torch.full((2, 3, 32, 32), 0.8)
    for name, options in (("rise", {"num_masks": 400}), ("integrated-gradients", {"steps": 8})):
        maps = get_method(name, adapter, **options)(images, 0)
        left, right = maps[..., :14].mean(), maps[..., 18:].mean()
        assert left > right + 0.3, name
