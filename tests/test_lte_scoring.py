"""LTE scores masks with the shared §6.1 metric: check it against an independent implementation."""

from __future__ import annotations

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.learned.lte.scoring import perturbation_auc
from explainers.metrics import BatchContext, MetricInputs, get_metric

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def reference_auc(adapter, images, maps, classes, order):
    """SPEC §6.1 written out plainly, one image and one point at a time."""
    out = []
    b, _, h, w = images.shape
    for i in range(b):
        v = maps[i].flatten()
        key = v if order == "pos" else -v
        ranked = sorted(range(h * w), key=lambda j, key=key: (-float(key[j]), j))  # ties: lower index first
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


@pytest.mark.parametrize("order", ["pos", "neg"])
def test_lte_scores_equal_the_shared_metric_and_the_protocol(order):
    adapter = load_explainee(build_hf_model(image_size=16, patch_size=4))
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 16, 16, generator=g)
    maps = torch.rand(4, 16, 16, generator=g)
    maps[1] = (maps[1] * 4).round() / 4  # many ties
    maps[2] = 0.5  # all tied
    with torch.no_grad():
        classes = adapter.predict(images).argmax(-1)
    mine = perturbation_auc(adapter, images, maps, classes, order, max_batch=7)
    expected = reference_auc(adapter, images, maps, classes, order)
    torch.testing.assert_close(mine, expected, rtol=0, atol=1e-9)
    metric = get_metric(order)
    with torch.no_grad():
        clean = adapter.predict(images)
    ctx = BatchContext(
        adapter,
        MetricInputs(
            images=images, maps=maps, classes=classes, clean_logits=clean, ids=[str(i) for i in range(4)]
        ),
    )
    shared = torch.as_tensor(metric.compute(ctx).values)
    assert torch.equal(mine, shared)
