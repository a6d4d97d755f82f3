"""LTE objective (docs/learned-explainers.md) and configuration: hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import build_hf_model
from explainers import load_explainee
from explainers.learned.lte.config import LTEConfig, LTEConfigError
from explainers.learned.lte.loss import lte_loss, mask_term, masked_input, prediction_term

MEAN, STD = [0.2, 0.4, 0.6], [0.5, 0.25, 0.1]


class _Recorder(nn.Module):
    """A 'classifier' that records its input and returns fixed logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fixed = logits
        self.seen: list[torch.Tensor] = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.fixed[: x.shape[0]] + 0 * self.w


def _adapter(logits: torch.Tensor, size: int = 8):
    return load_explainee(_Recorder(logits), image_size=size, mean=MEAN, std=STD, num_classes=logits.shape[1])


def test_masked_input_masks_in_01_space_then_normalises():
    adapter = _adapter(torch.zeros(2, 3))
    images = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[:, :4] = 1.0
    out = masked_input(adapter, images, mask)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    # removed pixels are black in [0,1] space, i.e. −mean/std after normalisation (not 0, which is what
    # normalising first and masking second would give)
    torch.testing.assert_close(out[:, :, 4:], (-mean / std).expand(2, 3, 4, 8))
    torch.testing.assert_close(out[:, :, :4], ((images - mean) / std)[:, :, :4])
    wrong_order = adapter.normalize(images) * mask[:, None]
    assert not torch.allclose(out, wrong_order)


def test_masked_input_resizes_first():
    adapter = _adapter(torch.zeros(1, 3), size=8)
    images = torch.rand(1, 3, 16, 16)
    out = masked_input(adapter, images, torch.ones(1, 8, 8))
    torch.testing.assert_close(out, adapter.normalize(adapter.resize(images)))


def test_the_explainee_sees_the_masked_image():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    adapter = _adapter(logits)
    images, mask = torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8)
    prediction_term(adapter, images, mask, torch.tensor([0]), "ce")
    torch.testing.assert_close(adapter.model.seen[-1], masked_input(adapter, images, mask))


def test_mask_terms_on_hand_built_scores():
    s = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    # softplus: the reference's "bce" = BCEWithLogits(s, 0) on sigmoid outputs = mean softplus(s)
    expected = (math.log(2) + math.log(1 + math.e) + 2 * math.log(1 + math.exp(0.5))) / 4
    torch.testing.assert_close(mask_term(s, "softplus"), torch.tensor([expected]))
    bce = F.binary_cross_entropy_with_logits(s, torch.zeros_like(s))
    torch.testing.assert_close(mask_term(s, "softplus")[0], bce)
    torch.testing.assert_close(mask_term(torch.tensor([[-0.5, 0.5, 1.0, 0.0]]), "l1"), torch.tensor([0.5]))
    uniform = torch.full((1, 4), 0.25)
    torch.testing.assert_close(mask_term(uniform, "entropy"), torch.tensor([math.log(4)]))
    torch.testing.assert_close(mask_term(torch.tensor([[1.0, 0, 0, 0]]), "entropy"), torch.tensor([0.0]))


def test_prediction_terms_on_hand_built_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    adapter = _adapter(logits)
    images, mask, c = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), torch.tensor([0, 2])
    ce = prediction_term(adapter, images, mask, c, "ce")
    lse0, lse1 = math.log(math.e**2 + 1 + math.e**-1), math.log(2 + math.e)
    torch.testing.assert_close(ce, torch.tensor([lse0 - 2.0, lse1 - 0.0]))
    torch.testing.assert_close(prediction_term(adapter, images, mask, c, "logit"), torch.tensor([-2.0, 0.0]))


def test_negative_masking_term_is_half_the_difference():
    class ByMean(nn.Module):  # logits depend on the input, so the complement-masked image scores differently
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([m, -m, torch.zeros_like(m)], dim=1)

    adapter = load_explainee(ByMean(), image_size=8, mean=MEAN, std=STD, num_classes=3)
    images, c = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    mask = torch.zeros(2, 8, 8)
    mask[:, :, :3] = 1
    pos = F.cross_entropy(adapter.logits(masked_input(adapter, images, mask)), c, reduction="none")
    neg = F.cross_entropy(adapter.logits(masked_input(adapter, images, 1 - mask)), c, reduction="none")
    torch.testing.assert_close(prediction_term(adapter, images, mask, c, "ce-neg"), (pos - neg) / 2)
    assert not torch.allclose(pos, neg)


def test_total_uses_the_lambdas():
    logits = torch.tensor([[1.0, 0.0]])
    adapter = _adapter(logits)
    cfg = LTEConfig(lambda_mask=30.0, lambda_pred=1.0)
    patch = torch.full((1, 2, 2), 0.5)
    terms = lte_loss(adapter, torch.rand(1, 3, 8, 8), patch, torch.ones(1, 8, 8), torch.tensor([0]), cfg)
    ce = math.log(1 + math.exp(-1.0))
    torch.testing.assert_close(terms.total, torch.tensor([ce + 30.0 * math.log(1 + math.exp(0.5))]))


def test_gradient_reaches_the_mask_through_the_explainee():
    adapter = load_explainee(build_hf_model())
    mask = torch.full((2, 32, 32), 0.5, requires_grad=True)
    prediction_term(adapter, torch.rand(2, 3, 32, 32), mask, torch.tensor([0, 1]), "ce").sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


# ------------------------------------------------------------------ config
def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(LTEConfigError) as info:
        LTEConfig.from_dict({"lambda_mask": 10, "lamda_mask": 3})
    msg = str(info.value)
    assert "lamda_mask" in msg and "valid keys" in msg and "lambda_mask" in msg and "refine_steps" in msg
    path = tmp_path / "c.json"
    path.write_text('{"epochz": 3}')
    with pytest.raises(LTEConfigError, match="epochz"):
        LTEConfig.from_file(path)


def test_config_defaults_are_the_published_ones():
    cfg = LTEConfig()
    assert (cfg.activation, cfg.prediction_loss, cfg.mask_loss) == ("sigmoid", "ce", "softplus")
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed, cfg.warmup_fraction) == (
        2e-3,
        0.01,
        32,
        42,
        0.2,
    )
    assert (cfg.refine_steps, cfg.refine_stop_below, cfg.refine_select) == (25, 6.0, "pos")


def test_config_values_are_checked_and_coerced():
    assert LTEConfig.from_dict({"epochs": "3", "lr": "1e-3", "validate_initial": "false"}).epochs == 3
    with pytest.raises(LTEConfigError, match="softmax"):
        LTEConfig(mask_loss="entropy")
    with pytest.raises(LTEConfigError, match="schedule"):
        LTEConfig(schedule="cosine")
    with pytest.raises(LTEConfigError, match="epochs"):
        LTEConfig.from_dict({"epochs": "many"})
