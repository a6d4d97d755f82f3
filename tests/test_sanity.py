"""The randomisation sanity check: ranks and Spearman by hand, re-initialised copies, and a method that
fails it next to one that passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import build_hf_model
from explainers import load_explainee
from explainers.benchmark.sanity import average_ranks, randomization_test, spearman
from explainers.errors import ModelError
from explainers.methods.base import Method


def test_average_ranks_and_spearman_by_hand():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    # Row 1: 1 → 1, 2 → 2, the two 3s share ranks 3 and 4 → 3.5. Row 2: all tied → 2.5.
    assert average_ranks(x).tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    # Monotone: 1; reversed: −1; ranks (1.5, 1.5, 3.5, 3.5) vs (1.5, 3.5, 1.5, 3.5): orthogonal → 0.
    np.testing.assert_allclose(spearman(a, b).numpy(), [1.0, -1.0, 0.0])
    assert spearman(torch.ones(1, 4), torch.arange(4.0)[None]).item() == 0.0  # a constant map has no order


def test_spearman_equals_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 50), generator=gen).float()
    b = a + torch.randint(0, 3, (6, 50), generator=gen).float()
    ours = spearman(a, b).numpy()
    ref = [spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(6)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    model = build_hf_model()
    return load_explainee(model, mean=[0.5] * 3, std=[0.5] * 3)


def test_randomized_copy_resets_only_the_last_blocks(adapter):
    twin = adapter.randomized_copy(1)
    assert twin.identifier == f"{adapter.identifier} with its last 1 block(s) randomised"
    before, after = adapter.model.state_dict(), twin.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers.2." in k for k in changed)  # the last of 3 blocks
    assert {k for k in before if ".layers.2." in k and "weight" in k and "norm" not in k} <= changed
    images = torch.rand(2, 3, *adapter.image_size)
    assert not torch.allclose(adapter.predict(images), twin.predict(images))
    with pytest.raises(ModelError, match="last_blocks"):
        adapter.randomized_copy(4)


def test_a_model_independent_map_fails_and_gradients_pass(adapter):
    images = torch.rand(4, 3, *adapter.image_size)
    targets = torch.zeros(4, dtype=torch.long)
    rollout = randomization_test("rollout", adapter, images, targets, blocks=[3])
    assert rollout[3].mean() < 0.9  # rollout reads every block's attention: it changes

    # A "method" that ignores the model: the image's brightness. Its maps survive randomisation exactly.
    class Brightness(Method):
        def attribute(self, images, targets):
            return images.mean(dim=1)

    result = randomization_test(Brightness, adapter, images, targets)
    assert set(result) == {1, 3}
    np.testing.assert_allclose(result[3], 1.0)


def test_randomized_copy_of_a_timm_vit_reaches_the_fused_qkv():
    from explainers._compat import patch_torchvision

    patch_torchvision()
    vt = pytest.importorskip("timm.models.vision_transformer")
    model = vt.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5).eval()
    adapter = load_explainee(model, mean=[0.5] * 3, std=[0.5] * 3)
    twin = adapter.randomized_copy(1)
    before, after = adapter.model.state_dict(), twin.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"blocks.1.attn.qkv.weight", "blocks.1.attn.proj.weight", "blocks.1.mlp.fc1.weight"} <= changed
    assert not any(k.startswith("blocks.0.") for k in changed)


def test_a_learned_explainer_is_checked_against_the_randomised_copies_without_a_warning_each(
    adapter, tmp_path, caplog
):
    # pLTE is tied to the weights it was trained for; the check uses it with the randomised copies on
    # purpose, so the loader's "used anyway" warning would only repeat for every copy.
    import logging

    from explainers.learned import LTEConfig, LTEExplainer

    torch.manual_seed(0)
    LTEExplainer(adapter, LTEConfig()).save_pretrained(tmp_path / "plte")
    images = torch.rand(2, 3, *adapter.image_size)
    targets = torch.zeros(2, dtype=torch.long)
    with caplog.at_level(logging.WARNING):
        result = randomization_test("plte", adapter, images, targets, options={"explainer": str(tmp_path / "plte")})
    assert set(result) == {1, adapter.num_blocks}
    np.testing.assert_allclose(result[adapter.num_blocks], 1.0, atol=1e-6)  # its own network: unchanged maps
    assert not [r for r in caplog.records if "used anyway" in r.getMessage()]
    # Outside the check the mismatch is still told.
    from explainers.methods import get_method

    with caplog.at_level(logging.WARNING):
        get_method("plte", adapter.randomized_copy(1), explainer=str(tmp_path / "plte"), allow_other_weights=True)
    assert [r for r in caplog.records if "used anyway" in r.getMessage()]
