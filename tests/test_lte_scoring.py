"""LTE scores masks with the shared POS/NEG metric: check it against an independent implementation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainers.learned.lte.scoring import perturbation_auc
from explainers.metrics import BatchContext, MetricInputs, get_metric
from explainers.metrics.perturbation import tie_order
from explainers.models.base import ExplaineeAdapter


class QuadrantBrightness(nn.Module):
    """Class 0 while the mean of channel 0 over the top-left 8×8 quadrant exceeds ``threshold``, else
    class 1: deleting (zeroing) that quadrant flips the prediction; filling it white never does."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.dummy = nn.Parameter(torch.zeros(()))  # a parameter, so the adapter finds a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = x[:, 0, :8, :8].mean(dim=(1, 2))
        return torch.stack([region, torch.full_like(region, self.threshold)], dim=1) + self.dummy


def flipping_adapter() -> ExplaineeAdapter:
    # identity normalisation: the model reads raw [0, 1] pixels
    return ExplaineeAdapter(
        QuadrantBrightness(), image_size=(16, 16), mean=[0.0] * 3, std=[1.0] * 3, num_classes=2
    )

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def reference_auc(adapter, images, maps, classes, order):
    """The POS/NEG definition of docs/metrics.md written out plainly, one image and one point at a time."""
    out = []
    b, _, h, w = images.shape
    position = {u: i for i, u in enumerate(tie_order(h * w).tolist())}
    for i in range(b):
        v = maps[i].flatten()
        key = v if order == "pos" else -v
        # ties: the fixed scrambled tie order of docs/metrics.md
        ranked = sorted(range(h * w), key=lambda j, key=key: (-float(key[j]), position[j]))
        ys = []
        for step in range(10):
            k = (h * w * step) // 10
            keep = torch.ones(h * w)
            keep[ranked[:k]] = 0
            x = images[i] * keep.view(1, h, w)
            with torch.no_grad():
                ys.append(float(adapter.predict(x[None]).argmax(-1)[0] == classes[i]))
        out.append(100 * sum((ys[j] + ys[j + 1]) / 2 * 0.1 for j in range(9)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("order, expected", [("pos", 15.0), ("neg", 85.0)])
def test_deleting_the_evidence_first_gives_the_hand_computed_auc(order, expected):
    """A white image, class 0 while more than half of the top-left quadrant (64 of 256 pixels) remains.
    The map ranks that quadrant first. POS deletes 0, 25, 51, ... pixels at steps 0, 1, 2, ...: the class
    holds for steps 0-1 only, AUC = 100·(0.1·1 + 0.1·0.5) = 15. NEG deletes the other 192 pixels first:
    the class holds through step 8 (204 deleted, 12 of them in the quadrant) and is lost at step 9 (38
    of 64 gone), AUC = 100·(0.8 + 0.05) = 85. Swapping the orders or filling with white instead of
    black gives other values (white never flips: 90)."""
    adapter = flipping_adapter()
    images = torch.ones(1, 3, 16, 16)
    maps = torch.zeros(1, 16, 16)
    maps[0, :8, :8] = 1.0
    classes = torch.tensor([0])
    auc = perturbation_auc(adapter, images, maps, classes, order)
    torch.testing.assert_close(auc, torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(
        reference_auc(adapter, images, maps, classes, order), auc, rtol=0, atol=1e-9
    )


@pytest.mark.parametrize("order", ["pos", "neg"])
def test_lte_scores_equal_the_shared_metric_and_the_protocol(order):
    adapter = flipping_adapter()
    g = torch.Generator().manual_seed(3)
    images = 0.3 + 0.7 * torch.rand(6, 3, 16, 16, generator=g)
    maps = torch.rand(6, 16, 16, generator=g)
    maps[1] = (maps[1] * 4).round() / 4  # many ties
    maps[2] = 0.5  # all tied
    maps[3, :8, :8] += 1.0  # the evidence first
    maps[4, :8, :8] -= 1.0  # the evidence last
    with torch.no_grad():
        classes = adapter.predict(images).argmax(-1)
    assert (classes == 0).all()
    mine = perturbation_auc(adapter, images, maps, classes, order, max_batch=7)
    expected = reference_auc(adapter, images, maps, classes, order)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-9)
    assert len(set(mine.tolist())) >= 3, mine  # the predictions flip at different points
    metric = get_metric(order)
    with torch.no_grad():
        clean = adapter.predict(images)
    ctx = BatchContext(
        adapter,
        MetricInputs(
            images=images, maps=maps, classes=classes, clean_logits=clean, ids=[str(i) for i in range(6)]
        ),
    )
    shared = torch.as_tensor(metric.compute(ctx).values)
    assert torch.equal(mine, shared)
