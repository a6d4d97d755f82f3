"""LTE refinement (docs/learned-explainers.md): selection loop, early stop, and parallel = one-by-one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.refine import _adamw_, refine_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


@pytest.fixture
def explainer():
    torch.manual_seed(0)
    ex = LTEExplainer(load_explainee(build_hf_model()), LTEConfig(lambda_mask=2.0))
    with torch.no_grad():  # a less trivial starting point than the ≈0.5 mask
        ex.net.head.fc2.weight.normal_(std=0.5)
    return ex


class ScriptedScorer:
    """Returns scores[image][step] and counts calls per image."""

    def __init__(self, table):
        self.table = table
        self.step = {i: 0 for i in range(len(table))}
        self.calls = 0

    def __call__(self, images, masks, classes, clean):
        self.calls += 1
        ids = (images[:, 0, 0, 0] * 10).round().long().tolist()  # image i carries i / 10 in pixel (0, 0)
        out = []
        for i in ids:
            out.append(self.table[i][self.step[i]])
            self.step[i] += 1
        return torch.tensor(out, dtype=torch.float64)


def _indexed_images(n):
    images = torch.rand(n, 3, 32, 32) * 0.5
    images[:, 0, 0, 0] = torch.arange(n).float() / 10  # raw images stay in [0, 1]
    return images


@pytest.mark.parametrize("parallel", [True, False])
def test_selection_picks_the_minimum_and_stops_early(explainer, parallel):
    table = [
        [40.0, 30.0, 35.0, 20.0, 25.0, 22.0],  # never below 6: runs all 6 steps, best at step 3
        [40.0, 10.0, 5.0, 1.0, 0.0, 0.0],  # below 6 at step 2: stops there
        [3.0, 50.0, 50.0, 50.0, 50.0, 50.0],  # the pLTE mask already passes: step 0, no refinement
        [30.0, 30.0, 30.0, 30.0, 30.0, 30.0],  # ties keep the earliest
    ]
    scorer = ScriptedScorer(table)
    images = _indexed_images(4)
    res = refine_images(
        explainer, images, targets=0, steps=6, lr=1e-3, scorer=scorer, batch_size=4, parallel=parallel
    )
    assert res.selected_step.tolist() == [3, 2, 0, 0]
    assert res.selected_score.tolist() == [20.0, 5.0, 3.0, 30.0]
    assert res.scored_steps.tolist() == [6, 3, 1, 6]
    assert scorer.step == {0: 6, 1: 3, 2: 1, 3: 6}


def test_neg_selection_keeps_the_maximum_and_stops_above(explainer):
    table = [[50.0, 60.0, 55.0, 58.0], [80.0, 89.5, 10.0, 10.0]]
    res = refine_images(
        explainer, _indexed_images(2), targets=0, steps=4, lr=1e-3, select="neg", scorer=ScriptedScorer(table)
    )
    assert res.selected_step.tolist() == [1, 1]
    assert res.scored_steps.tolist() == [4, 2]


def test_selected_mask_is_the_mask_of_the_selected_step(explainer):
    images = _indexed_images(1)
    table = [[50.0, 40.0, 45.0]]
    res = refine_images(explainer, images, targets=0, steps=3, lr=5e-2, scorer=ScriptedScorer(table))
    one_step = refine_images(
        explainer, images, targets=0, steps=2, lr=5e-2, stop_below=-1, scorer=ScriptedScorer([[50.0, 40.0]])
    )
    pl = explainer(images)
    assert res.selected_step.tolist() == [1]
    torch.testing.assert_close(res.maps, one_step.maps)
    assert not torch.allclose(res.maps, pl)


def _mean_mask_scorer(images, masks, classes, clean):
    # Continuous, mask-dependent and not monotone along the refinement (the mask shrinks): the minimum
    # falls on different steps for different images, and some stop early.
    return (masks.mean(dim=(1, 2)) * 100 - 40).abs().double().cpu()


def test_parallel_equals_one_by_one(explainer):
    torch.manual_seed(1)
    images = torch.rand(5, 3, 32, 32)
    kw = dict(steps=6, lr=1e-3, stop_below=1.0, batch_size=3, scorer=_mean_mask_scorer)
    par = refine_images(explainer, images, parallel=True, **kw)
    seq = refine_images(explainer, images, parallel=False, **kw)
    torch.testing.assert_close(par.maps, seq.maps, rtol=1e-4, atol=1e-5)
    assert torch.equal(par.selected_step, seq.selected_step)
    torch.testing.assert_close(par.selected_score, seq.selected_score, rtol=1e-5, atol=1e-4)
    assert torch.equal(par.scored_steps, seq.scored_steps)
    assert len(set(par.selected_step.tolist())) > 1 and len(set(par.scored_steps.tolist())) > 1, (
        "the test should exercise different selected steps and early stops"
    )


@pytest.fixture(scope="module")
def shipped():
    """The shipped explainee (its predictions flip when the object is deleted) and pLTE, on 4 scenes."""
    from pathlib import Path

    import explainers
    from explainers.data.synthetic import SyntheticConfig, render_scenes

    ex = LTEExplainer.from_pretrained(Path(explainers.__file__).parent / "assets" / "plte", explainee="embedded")
    scenes = render_scenes(SyntheticConfig(), "test", 0, 8)
    images = torch.from_numpy(scenes["images"]).permute(0, 3, 1, 2).float() / 255
    return ex, images[[3, 5, 6, 7]]  # scenes whose pLTE mask scores 15-80: room to refine


def test_parallel_equals_one_by_one_with_the_real_score(shipped):
    """The real POS-AUC score on several images that all refine for 5 steps: parallel = one-by-one, the
    returned maps score exactly the recorded selected score, and the selection is not always step 0."""
    from explainers.learned.lte.scoring import perturbation_auc

    explainer, images = shipped
    kw = dict(steps=5, lr=3e-3, stop_below=-1.0, batch_size=4, return_details=True)
    par = explainer.refine(images, parallel=True, **kw)
    seq = explainer.refine(images, parallel=False, **kw)
    torch.testing.assert_close(par.maps, seq.maps, rtol=1e-4, atol=1e-5)
    assert torch.equal(par.selected_step, seq.selected_step)
    assert torch.equal(par.selected_score, seq.selected_score)
    assert (par.scored_steps == 5).all()
    with torch.no_grad():
        predicted = explainer.adapter.predict(images).argmax(-1)
    rescored = perturbation_auc(explainer.adapter, images, par.maps, predicted, "pos")
    torch.testing.assert_close(rescored, par.selected_score, rtol=0, atol=1e-9)
    base = explainer.refine(images, steps=1, return_details=True)
    assert (par.selected_score <= base.selected_score).all()
    assert (par.selected_step > 0).any() and (par.selected_score < base.selected_score).any(), (
        "the test should exercise refinements that improve on the pLTE mask",
        par.selected_step,
        par.selected_score,
        base.selected_score,
    )


def test_batched_adamw_matches_torch():
    torch.manual_seed(0)
    p0 = torch.randn(3, 4, 5)
    grads = [torch.randn(3, 4, 5) for _ in range(4)]
    mine, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for t, g in enumerate(grads, 1):
        _adamw_(mine, g, m, v, t, 1e-2, 0.01)
    for i in range(3):
        ref = torch.nn.Parameter(p0[i].clone())
        opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.01)
        for g in grads:
            ref.grad = g[i].clone()
            opt.step()
        torch.testing.assert_close(mine[i], ref.detach(), rtol=1e-6, atol=1e-7)


def test_lte_and_plte_methods(tmp_path, explainer):
    from explainers.methods import get_method

    explainer.save_pretrained(tmp_path / "ckpt")
    images = torch.rand(3, 3, 32, 32)
    plte = get_method("plte", explainer.adapter, explainer=str(tmp_path / "ckpt"))
    maps = plte(images)
    assert maps.shape == (3, 32, 32) and maps.min() == 0 and maps.max() == 1
    lte = get_method("lte", explainer.adapter, explainer=str(tmp_path / "ckpt"), steps=3, lr=1e-2, batch=2)
    explanation = lte.explain(images, targets=[0, 1, 2])
    assert explanation.maps.shape == (3, 32, 32) and explanation.classes.tolist() == [0, 1, 2]
    torch.testing.assert_close(explanation.maps, lte(images, targets=[0, 1, 2]))  # the short form
    extras = explanation.extras
    assert extras["selected_step"].shape == (3,) and extras["selected_step"].dtype == np.int32
    assert ((extras["selected_step"] >= 0) & (extras["selected_step"] < 3)).all()
    assert lte.config()["steps"] == 3 and lte.config()["select"] == "pos"
    with pytest.raises(Exception, match="select"):
        get_method("lte", explainer.adapter, explainer=str(tmp_path / "ckpt"), select="best")
