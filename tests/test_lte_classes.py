"""LTE class semantics as in the reference: refinement towards the class the pLTE checkpoint was trained for
(its class mode), step selection on the ground truth where labels exist, both recorded in the mask file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_hf_model
from evalkit import ListDataset, random_dataset
from explainers import ExplainersError, load_explainee
from explainers.data.base import Sample
from explainers.explain import explain_dataset
from explainers.io import MaskFile
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte import refine as refine_module
from explainers.learned.lte.refine import refine_images
from explainers.methods import get_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter():
    return load_explainee(build_hf_model())  # 32×32, 5 classes


def _checkpoint(adapter, path, class_mode):
    torch.manual_seed(0)
    ex = LTEExplainer(adapter, LTEConfig(lambda_mask=2.0, class_mode=class_mode))
    with torch.no_grad():
        ex.net.head.fc2.weight.normal_(std=0.5)
    ex.save_pretrained(path)
    return ex


class Recorder:
    """A scorer that records the classes it is asked to score and returns ``scores`` (default: falling
    with every call, so that the last step is selected and every step runs)."""

    def __init__(self, scores=None):
        self.classes: list[list[int]] = []
        self.scores = scores

    def __call__(self, images, masks, classes, clean):
        self.classes.append(classes.tolist())
        if self.scores is not None:
            return torch.full((len(images),), float(self.scores), dtype=torch.float64)
        return torch.full((len(images),), 100.0 - len(self.classes), dtype=torch.float64)


@pytest.mark.parametrize("parallel", [True, False])
def test_refinement_class_and_selection_class_are_separate(adapter, tmp_path, parallel):
    ex = _checkpoint(adapter, tmp_path / "ckpt", "target")
    images = torch.rand(2, 3, 32, 32)
    kw = dict(steps=3, lr=5e-2, parallel=parallel)
    rec = Recorder()
    a = refine_images(ex, images, targets=[0, 1], select_targets=[3, 4], scorer=rec, **kw)
    # Every scoring is for the selection class; the masks follow the refinement class.
    flat = [c for call in rec.classes for c in call]
    assert set(flat) <= {3, 4} and len(flat) == 6
    b = refine_images(ex, images, targets=[0, 1], select_targets=[2, 2], scorer=Recorder(), **kw)
    torch.testing.assert_close(a.maps, b.maps)  # same refinement class → same masks
    c = refine_images(ex, images, targets=[2, 3], select_targets=[3, 4], scorer=Recorder(), **kw)
    assert not torch.allclose(a.maps, c.maps)  # another refinement class → other masks
    # Without select_targets, the steps are selected on the refinement class (the old behaviour).
    rec = Recorder()
    refine_images(ex, images, targets=[0, 1], scorer=rec, **kw)
    assert all(call in ([0, 1], [0], [1]) for call in rec.classes)


def test_lte_refines_towards_the_checkpoint_class_and_selects_on_ground_truth(adapter, tmp_path, monkeypatch):
    _checkpoint(adapter, tmp_path / "target", "target")
    _checkpoint(adapter, tmp_path / "predicted", "predicted")
    ds = random_dataset(4, size=32)
    rec = Recorder(scores=50.0)  # never stops early
    monkeypatch.setattr(refine_module, "default_scorer", lambda *a, **k: rec)
    with torch.no_grad():
        images = torch.stack([ds[i].image for i in range(4)])
        predicted = adapter.predict(adapter.resize(images)).argmax(1).numpy()
    labels = np.array([s.label for s in ds.samples])
    assert (predicted != labels).any()  # so that the classes can be told apart

    # A pLTE trained for the ground truth: maps refined towards and selected on the label.
    lte = get_method("lte", adapter, explainer=str(tmp_path / "target"), steps=2)
    assert lte.class_convention == "target"
    explain_dataset(lte, ds, tmp_path / "t.h5", progress=False)  # --class left to the method
    with MaskFile(tmp_path / "t.h5") as mf:
        assert mf.targets == "target"
        np.testing.assert_array_equal(mf.explained, labels)
        np.testing.assert_array_equal(mf.extra("selected_class"), labels)
        assert mf.method_config["refine_class"] == "target" and mf.method_config["select_class"] == "target"
        assert mf.method_config["class_mode"] == "target"
    assert rec.classes and all(c == labels.tolist() for c in rec.classes)
    with pytest.raises(ExplainersError, match=r"explains the target class.*refine_class=predicted"):
        explain_dataset(lte, ds, tmp_path / "x.h5", targets="predicted", progress=False)

    # A pLTE trained for the prediction: refined towards the argmax, steps selected on the label where
    # there is one (the prediction for the unlabelled image).
    last = ds.samples[3]
    unlabelled = ListDataset([*ds.samples[:3], Sample(last.image, -1, last.mask, "u")], "partly labelled")
    rec.classes.clear()
    lte = get_method("lte", adapter, explainer=str(tmp_path / "predicted"), steps=2)
    explain_dataset(lte, unlabelled, tmp_path / "p.h5", progress=False)
    expected_selection = np.where(np.arange(4) < 3, labels, predicted)
    with MaskFile(tmp_path / "p.h5") as mf:
        assert mf.targets == "predicted" and mf.method_config["refine_class"] == "predicted"
        np.testing.assert_array_equal(mf.explained, predicted)
        np.testing.assert_array_equal(mf.extra("selected_class"), expected_selection)
    assert all(c == expected_selection.tolist() for c in rec.classes)

    # The documented option: select on the prediction.
    rec.classes.clear()
    lte = get_method("lte", adapter, explainer=str(tmp_path / "predicted"), steps=2, select_class="predicted")
    explain_dataset(lte, ds, tmp_path / "s.h5", progress=False)
    with MaskFile(tmp_path / "s.h5") as mf:
        np.testing.assert_array_equal(mf.extra("selected_class"), predicted)
        assert mf.method_config["select_class"] == "predicted"
    # Overriding the checkpoint's class is possible, and recorded.
    lte = get_method("lte", adapter, explainer=str(tmp_path / "target"), steps=2, refine_class="predicted")
    explain_dataset(lte, ds, tmp_path / "o.h5", targets="predicted", progress=False)
    with MaskFile(tmp_path / "o.h5") as mf:
        assert mf.method_config["class_mode"] == "target" and mf.method_config["refine_class"] == "predicted"
        np.testing.assert_array_equal(mf.explained, predicted)
    with pytest.raises(ExplainersError, match="select_class must be target or predicted"):
        get_method("lte", adapter, explainer=str(tmp_path / "target"), select_class="gt")
