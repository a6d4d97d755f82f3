"""LTE options beyond the reference: the pixel decoder head, class conditioning, and the POS+deletion
refinement selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_hf_model
from explainers import load_explainee
from explainers.errors import ExplainersError
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.pretrain import pretrain_lte
from explainers.learned.lte.refine import pos_deletion_scorer, refine_images
from explainers.metrics.deletion import Deletion
from explainers.metrics.perturbation import perturbation_auc

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


@pytest.fixture(scope="module")
def adapter():
    return load_explainee(build_hf_model())


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_untrained_decoder_draws_the_sigmoid_of_the_upsampled_patch_logits(adapter):
    ex = LTEExplainer(adapter, LTEConfig(head="decoder"))
    x = _images()
    net = ex.net
    with torch.no_grad():
        scores, mask = ex.masks(x)
        tokens = net.backbone(adapter.normalize(x))[:, net.num_prefix_tokens :]
        logits = net.head(tokens).reshape(-1, *net.grid)
        expected = torch.sigmoid(F.interpolate(logits[:, None], size=(32, 32), mode="bilinear")[:, 0])
    assert mask.shape == (3, 32, 32) and scores.shape == (3, 32, 32)  # scores at pixel level
    torch.testing.assert_close(mask, expected)
    assert torch.equal(scores, mask)


def test_decoder_mask_follows_pixels_inside_a_patch(adapter):
    # Once the decoder's output layer is non-zero, changing one pixel changes the mask at that pixel
    # more than a patch-grid mask could (which is a smooth function of 16 patch scores).
    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(head="decoder"))
    with torch.no_grad():
        torch.nn.init.normal_(ex.net.decoder.out.weight, std=1.0)
    x = _images(1)
    y = x.clone()
    y[0, :, 13, 13] = 1.0 - y[0, :, 13, 13]
    with torch.no_grad():
        m1, m2 = ex(x), ex(y)
    diff = (m1 - m2).abs()[0]
    # Only the 3×3 neighbourhood of the changed pixel sees it through the image branch, and the tokens
    # of its patch (8×8 pixels, rows/cols 8..15) change too; far away nothing moves except via tokens.
    assert diff[12:15, 12:15].max() > 0
    assert diff[13, 13] > diff[0:4, 28:32].max()


def test_class_conditioned_masks_depend_on_the_class_and_need_it(adapter):
    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(class_conditioned=True))
    x = _images(2)
    with torch.no_grad():
        # the same read-out for every class: the same mask
        ex.net.head.fc2.weight.copy_(ex.net.head.fc2.weight[:1].expand_as(ex.net.head.fc2.weight))
        torch.testing.assert_close(ex(x, 0), ex(x, 1))
        ex.net.head.fc2.weight.normal_(std=1.0)
        assert not torch.allclose(ex(x, 0), ex(x, 1))
        # None explains the predicted class
        predicted = adapter.predict(x).argmax(1)
        torch.testing.assert_close(ex(x), ex(x, predicted))
    with pytest.raises(ExplainersError, match="class-conditioned"):
        ex.net(adapter.normalize(x))
    unconditioned = LTEExplainer(adapter, LTEConfig())
    with torch.no_grad():
        torch.testing.assert_close(unconditioned(x, 0), unconditioned(x, 1))


def test_options_survive_save_and_load_and_cannot_be_overridden(tmp_path, adapter):
    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(head="decoder", class_conditioned=True))
    with torch.no_grad():
        ex.net.head.fc2.weight.normal_(std=1.0)
        ex.net.decoder.out.weight.normal_(std=1.0)
    ex.save_pretrained(tmp_path / "e")
    back = LTEExplainer.from_pretrained(tmp_path / "e", explainee=adapter)
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(back(x, 1), ex(x, 1))
    with pytest.raises(ExplainersError, match="cannot override head"):
        LTEExplainer.from_pretrained(tmp_path / "e", explainee=adapter, head="patch")


def test_pos_deletion_score_is_the_mean_of_pos_and_deletion(adapter):
    x = _images(4)
    maps = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        clean = adapter.predict(x).float()
    got = pos_deletion_scorer(adapter, 64)(x, maps, classes, clean)
    pos = perturbation_auc(adapter, x, maps, classes, order="pos")
    # deletion: the probability of the class along the POS order, trapezoid over 0, 0.1, …, 0.9
    from explainers.metrics.base import BatchContext, MetricInputs

    ctx = BatchContext(adapter, MetricInputs(x, maps, classes, clean, ["a", "b", "c", "d"]))
    deletion = torch.as_tensor(Deletion().compute(ctx).values)
    torch.testing.assert_close(got, (pos.cpu() + deletion) / 2)


def test_pos_deletion_selection_keeps_the_lowest_combined_score(adapter):
    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(lambda_mask=1.0))
    x, classes = _images(6), torch.zeros(6, dtype=torch.long)
    result = refine_images(ex, x, classes, steps=4, lr=1e-2, select="pos+deletion", stop_below=-1.0, batch_size=6)
    with torch.no_grad():
        clean = adapter.predict(x).float()
        scorer = pos_deletion_scorer(adapter, 64)
        # Step 0's mask as refinement computes it (eager attention): another attention kernel moves the
        # mask by ~1e-7, enough to reorder near-tied pixels in the perturbation order.
        with ex.net.eager_attention():
            first = scorer(x, ex(x), classes, clean)
        torch.testing.assert_close(result.selected_score, scorer(x, result.maps, classes, clean))
    # lower is better: the selected mask never scores worse than the pLTE mask (step 0)
    assert bool((result.selected_score <= first + 1e-9).all())
    assert bool((result.selected_score[result.selected_step == 0] == first[result.selected_step == 0]).all())


@pytest.mark.trainer
@pytest.mark.parametrize("options", [{"head": "decoder"}, {"class_conditioned": True}])
def test_pretraining_trains_the_new_parts(tmp_path, adapter, options):
    from test_lte_pretrain import TINY, TinyImages

    config = LTEConfig(**TINY, **options)
    torch.manual_seed(config.seed)
    initial = {k: v.clone() for k, v in LTEExplainer(adapter, config).net.state_dict().items()}
    result = pretrain_lte(adapter, TinyImages(), tmp_path / "p", config, progress=False)
    losses = [r["loss"] for r in result.log if r["epoch"] > 0]
    assert losses[-1] < losses[0] - 0.01, losses
    trained = LTEExplainer.from_pretrained(tmp_path / "p", explainee=adapter).net.state_dict()
    new_part = "decoder." if "head" in options else "head.fc2"
    changed = [k for k in trained if k.startswith(new_part) and not torch.equal(trained[k], initial[k])]
    assert changed, f"{new_part} did not train"


def test_plte_method_explains_the_requested_class_with_a_conditioned_explainer(tmp_path, adapter):
    from explainers.methods.base import get_method

    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(class_conditioned=True))
    with torch.no_grad():
        ex.net.head.fc2.weight.normal_(std=1.0)
    ex.save_pretrained(tmp_path / "e")
    method = get_method("plte", adapter, explainer=str(tmp_path / "e"), normalize=False)
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(method(x, torch.tensor([2, 0])), ex(x, torch.tensor([2, 0])))
        torch.testing.assert_close(method(x), ex(x))  # None: the predicted class
        assert not torch.allclose(method(x, 0), method(x, 1))


def test_mask_weight_warms_up_linearly_then_stays():
    from explainers.learned.lte.loss import mask_weight

    config = LTEConfig(lambda_mask=10.0, lambda_mask_warmup=0.5)
    assert [mask_weight(config, s, 100) for s in (0, 25, 50, 80)] == [0.0, 5.0, 10.0, 10.0]
    assert mask_weight(LTEConfig(lambda_mask=10.0), 0, 100) == 10.0  # the reference: full weight at once
    with pytest.raises(ExplainersError, match="lambda_mask_warmup"):
        LTEConfig(lambda_mask_warmup=1.5)


def test_loss_uses_the_given_mask_weight(adapter):
    from explainers.learned.lte.loss import lte_loss

    ex = LTEExplainer(adapter, LTEConfig(lambda_mask=10.0))
    x = _images(2)
    with torch.no_grad():
        scores, mask = ex.masks(x)
        full = lte_loss(adapter, x, scores, mask, torch.tensor([0, 1]), ex.config)
        none = lte_loss(adapter, x, scores, mask, torch.tensor([0, 1]), ex.config, 0.0)
    torch.testing.assert_close(none.total, full.prediction)
    torch.testing.assert_close(full.total, full.prediction + 10.0 * full.mask)


@pytest.mark.parametrize("head", ["patch", "decoder"])
def test_head_init_bias_starts_the_mask_near_sigmoid_of_it(adapter, head):
    ex = LTEExplainer(adapter, LTEConfig(head=head, head_init_bias=3.0))
    with torch.no_grad():
        mask = ex(_images(2))
    # the head's weights are small (std 0.02): the logits are 3 ± a little
    assert torch.allclose(mask, torch.full_like(mask, 1 / (1 + torch.exp(torch.tensor(-3.0)).item())), atol=0.02)


def test_a_run_saved_before_the_new_keys_resumes_with_their_defaults(tmp_path, adapter):
    from explainers.training.checkpoint import find_training_state
    from test_lte_pretrain import TINY, Interrupt, TinyImages, _stop_at

    config = LTEConfig(**TINY)
    with pytest.raises(Interrupt):
        pretrain_lte(adapter, TinyImages(), tmp_path / "run", config, progress=False, on_step=_stop_at(4))
    state = find_training_state(tmp_path / "run") / "state.pt"
    payload = torch.load(state, weights_only=True)
    saved = payload["learner"]["config"]
    for key in ("head", "head_init_bias", "lambda_mask_warmup", "class_conditioned"):
        del saved[key]  # as written before these keys existed
    torch.save(payload, state)
    with pytest.raises(ExplainersError, match="lambda_mask_warmup"):
        pretrain_lte(adapter, TinyImages(), tmp_path / "run", config.replace(lambda_mask_warmup=0.5), progress=False)
    result = pretrain_lte(adapter, TinyImages(), tmp_path / "run", config, progress=False)
    assert result.resumed and result.epochs_done == TINY["epochs"]
