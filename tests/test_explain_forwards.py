"""One explainee forward per batch: ``explain_dataset`` and ``explainers explain`` send each image through
the explainee once for every method that runs it anyway (attention, gradient and relevance methods, the
learned explainers) — the predicted class, the mask file's ``predicted`` column and the maps all come
from that one forward.

A forward is counted where it enters the explainee from outside: the adapter's ``logits``,
``forward_attentions``, ``embed`` (the start of the hand-written forwards over the model's parts) and
``features``; calls nested inside another counted call are not counted again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit import make_voc, random_dataset
from explainers import load_explainee
from explainers.cli import main
from explainers.explain import explain_dataset
from explainers.io import MaskFile
from explainers.methods import METHODS, Cost, Need, get_method

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRY_POINTS = ("logits", "forward_attentions", "embed", "features")

#: Every library method that does not by design run many forwards (IG, RISE, LTE); the registry decides,
#: so a new method is covered without editing this test.
ONE_PASS = [
    name
    for name, cls in METHODS.items()
    if cls.__module__.startswith("explainers.") and cls.cost is not Cost.MANY_PASSES
]
LEARNED = [name for name in ONE_PASS if Need.CHECKPOINT in METHODS[name].needs]
BASELINES = [name for name in ONE_PASS if name not in LEARNED]


class ForwardCounter:
    """Counts the outermost explainee entries (their batch sizes, in order) on every adapter of a class."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, adapter_class: type) -> None:
        self.batches: list[int] = []
        self._depth = 0
        for name in ENTRY_POINTS:
            monkeypatch.setattr(adapter_class, name, self._wrap(getattr(adapter_class, name)))

    def _wrap(self, original):
        def counted(adapter, pixel_values, *args, **kwargs):
            if self._depth == 0:
                self.batches.append(int(pixel_values.shape[0]))
            self._depth += 1
            try:
                return original(adapter, pixel_values, *args, **kwargs)
            finally:
                self._depth -= 1

        return counted


def test_the_counter_counts_every_kind_of_forward(adapter, monkeypatch):
    """The counter itself: each entry point counts once, nested calls do not count again."""
    counter = ForwardCounter(monkeypatch, type(adapter))
    x = adapter.normalize(torch.rand(3, 3, 16, 16))
    with torch.no_grad():
        adapter.logits(x)
        adapter.forward_attentions(x)
        adapter.features(x[:2])
        adapter.cls_embedding(x[:1])  # features inside: one forward
        adapter.embed(x)
    assert counter.batches == [3, 3, 2, 1, 3]


@pytest.mark.parametrize("name", BASELINES)
def test_explain_dataset_runs_one_forward_per_batch(name, adapter, tmp_path, monkeypatch):
    ds = random_dataset(5, size=16)
    counter = ForwardCounter(monkeypatch, type(adapter))
    method = get_method(name, adapter)
    explain_dataset(method, ds, tmp_path / "m.h5", batch_size=2, progress=False, workers=0)
    assert counter.batches == [2, 2, 1]
    # The file's predicted column is the argmax of that forward, and the maps explain it.
    with MaskFile(tmp_path / "m.h5") as mf, torch.no_grad():
        images = torch.stack([ds[i].image for i in range(5)])
        expected = adapter.predict(adapter.resize(images)).argmax(1).numpy()
        np.testing.assert_array_equal(mf.predicted, expected)
        np.testing.assert_array_equal(mf.explained, expected)


@pytest.mark.parametrize("name", LEARNED)
def test_learned_explainers_run_one_explainee_forward_per_batch(name, tmp_path, monkeypatch):
    """pLTE and LETA on the shipped explainee with their shipped explainers: one forward of the explainee
    per batch (the explainers' own networks are copies and are not counted)."""
    embedded = load_explainee("embedded")
    ds = random_dataset(3, size=64)
    counter = ForwardCounter(monkeypatch, type(embedded))
    explain_dataset(get_method(name, embedded), ds, tmp_path / "m.h5", batch_size=2, progress=False, workers=0)
    assert counter.batches == [2, 1]


@pytest.mark.parametrize("name", BASELINES)
def test_cli_explain_runs_one_forward_per_batch(name, vit_dir, tmp_path_factory, tmp_path, monkeypatch, capsys):
    from explainers.models.hf import HFViTAdapter

    voc = make_voc(tmp_path_factory.mktemp("voc"), n=5)
    counter = ForwardCounter(monkeypatch, HFViTAdapter)
    args = ["explain", "--method", name, "--explainee", str(vit_dir), "--data", f"voc:{voc}"]
    args += ["--out", str(tmp_path / "m.h5"), "--batch-size", "2", "--workers", "0", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    assert counter.batches == [2, 2, 1]
    assert Path(tmp_path / "m.h5").is_file()


def test_short_form_skips_the_clean_forward_when_nothing_needs_it(adapter, monkeypatch):
    counter = ForwardCounter(monkeypatch, type(adapter))
    images = torch.rand(3, 3, 16, 16)
    random = get_method("random", adapter)
    random(images, targets=[0, 1, 2])  # the classes are given and the noise needs no forward
    assert counter.batches == []
    random(images)  # the predicted class needs the forward
    assert counter.batches == [3]
    explanation = random.explain(images, targets=1)  # explain() always reports the clean logits
    assert counter.batches == [3, 3] and explanation.classes.tolist() == [1, 1, 1]
    get_method("gae", adapter)(images, targets=2)  # gae's own forward is the one
    assert counter.batches == [3, 3, 3]


def test_class_blind_plte_needs_no_forward_in_the_short_form(monkeypatch):
    embedded = load_explainee("embedded")
    counter = ForwardCounter(monkeypatch, type(embedded))
    plte = get_method("plte", embedded)
    images = torch.rand(2, 3, 64, 64)
    maps = plte(images)
    assert counter.batches == []
    explanation = plte.explain(images)
    assert counter.batches == [2]
    torch.testing.assert_close(explanation.maps, maps)
    with torch.no_grad():
        torch.testing.assert_close(explanation.classes, embedded.predict(images).argmax(1))


def test_explanation_is_a_checked_read_only_record(adapter):
    from dataclasses import FrozenInstanceError

    from explainers import ExplainersError
    from explainers.methods import Explanation

    maps, logits = torch.rand(2, 16, 16), torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    e = Explanation(maps=maps, classes=torch.tensor([1, 1]), logits=logits, extras={"step": torch.tensor([3, 4])})
    assert e.predicted.tolist() == [1, 0] and e.extras["step"].tolist() == [3, 4]
    assert isinstance(e.extras["step"], np.ndarray)
    with pytest.raises(FrozenInstanceError):
        e.maps = maps  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.extras["other"] = np.zeros(2)  # type: ignore[index]
    with pytest.raises(ExplainersError, match="one row per image"):
        Explanation(maps=maps, classes=torch.tensor([1, 1]), logits=logits, extras={"step": np.zeros(3)})
    with pytest.raises(ExplainersError, match="classes of shape"):
        Explanation(maps=maps, classes=torch.tensor([1]), logits=logits)
