"""pLTE pre-training (docs/learned-explainers.md): schedule, subsets, outputs, model selection, resumption, CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import build_hf_model
from explainers import load_explainee
from explainers.data import ImageDataset, Sample
from explainers.errors import ExplainersError
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte.pretrain import lr_factor, pretrain_lte, schedule_lengths, select_subsets

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def initial_weights(adapter, config: LTEConfig) -> dict[str, torch.Tensor]:
    """The weights pre-training starts from (it seeds with ``config.seed`` before building)."""
    torch.manual_seed(config.seed)
    return {k: v.clone() for k, v in LTEExplainer(adapter, config).net.state_dict().items()}


def assert_trained(weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> None:
    """Training moved the trainable weights (head and blocks) away from where they started."""
    assert weights.keys() == initial.keys()
    changed = [k for k in weights if not torch.equal(weights[k], initial[k])]
    assert any(k.startswith("head.") for k in changed), "the head did not train"
    assert any(k.startswith("backbone.") for k in changed), "the encoder blocks did not train"


class TinyImages(ImageDataset):
    """Random 32×32 images, labels i mod k."""

    def __init__(self, n: int = 30, k: int = 5) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, 32, 32, generator=g)
        self._labels = [i % k for i in range(n)]
        self.class_names = [f"c{i}" for i in range(k)]
        self.name = "tiny"

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        return Sample(self.x[i], self._labels[i], None, f"img{i:03d}")

    @property
    def labels(self) -> list[int]:
        return list(self._labels)


TINY = dict(
    train_per_class=4, val_per_class=1, epochs=3, batch_size=8, lambda_mask=1.0, lr=5e-3, eval_batch_size=50
)


@pytest.fixture(scope="module")
def adapter():
    return load_explainee(build_hf_model())


def test_reference_schedule_reproduces_the_published_bug():
    # 1,000 training images, batch 32, 52 epochs, warm-up computed from the 50k folder, as the reference did
    cfg = LTEConfig(epochs=52, batch_size=32, schedule="reference", reference_folder_size=50_000)
    real_steps = 52 * 32  # ceil(1000 / 32) = 32 steps per epoch
    warmup, total = schedule_lengths(cfg, steps_per_epoch=32)
    assert (warmup, total) == (16_244, 81_224)
    lrs = [cfg.lr * lr_factor(s, warmup, total, cfg.schedule) for s in range(real_steps)]
    assert lrs[0] == 0.0 and all(b > a for a, b in itertools.pairwise(lrs))  # a ramp, never decays
    assert lrs[-1] == pytest.approx(2.05e-4, rel=0.01)


def test_linear_schedule_warms_up_then_decays_to_zero():
    cfg = LTEConfig(epochs=10, batch_size=32)
    warmup, total = schedule_lengths(cfg, steps_per_epoch=10)
    assert (warmup, total) == (20, 100)
    assert lr_factor(0, warmup, total, "linear") == 0.0
    assert lr_factor(10, warmup, total, "linear") == 0.5
    assert lr_factor(20, warmup, total, "linear") == 1.0
    assert lr_factor(60, warmup, total, "linear") == 0.5
    assert lr_factor(100, warmup, total, "linear") == 0.0
    assert lr_factor(5, warmup, total, "constant") == 1.0


def test_subsets_are_class_uniform_and_disjoint():
    labels = [i % 4 for i in range(40)]
    train, val = select_subsets(labels, 3, 2, seed=42)
    assert not set(train) & set(val)
    assert sorted(labels[i] for i in train) == sorted(list(range(4)) * 3)
    assert sorted(labels[i] for i in val) == sorted(list(range(4)) * 2)
    assert (train, val) == select_subsets(labels, 3, 2, seed=42)
    assert (train, val) != select_subsets(labels, 3, 2, seed=1)
    with pytest.raises(ExplainersError, match="fewer"):
        select_subsets(labels, 8, 3, seed=0)


@pytest.mark.trainer
def test_pretraining_writes_the_best_checkpoint_log_and_plot(tmp_path, adapter):
    out = tmp_path / "plte"
    result = pretrain_lte(adapter, TinyImages(), out, LTEConfig(**TINY), progress=False)
    # it learns: the training loss falls epoch after epoch, and the weights moved
    losses = [r["loss"] for r in result.log if r["epoch"] > 0]
    assert losses[1] < losses[0] - 0.01 and losses[2] < losses[1] - 0.01, losses
    assert_trained(load_file(out / "model.safetensors"), initial_weights(adapter, LTEConfig(**TINY)))
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "log.jsonl",
        "training.png",
        "train_state",
        "subsets.json",
    }
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3] and records == result.log
    trained = [r for r in records if r["epoch"] > 0]
    best = min(trained, key=lambda r: (r["val_pos_auc"], r["epoch"]))
    assert result.best_epoch == best["epoch"] and result.best_val_auc == best["val_pos_auc"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["epoch"] == best["epoch"] and meta["training"]["train_images"] == 20
    subsets = json.loads((out / "subsets.json").read_text())
    assert len(subsets["train"]) == 20 and len(subsets["val"]) == 5
    explainer = LTEExplainer.from_pretrained(out, explainee=adapter)
    assert explainer(torch.rand(2, 3, 32, 32)).shape == (2, 32, 32)
    # rerunning a finished run changes nothing
    again = pretrain_lte(adapter, TinyImages(), out, LTEConfig(**TINY), progress=False)
    assert again.resumed and again.best_epoch == result.best_epoch and again.epochs_done == 3


class Interrupt(Exception):
    pass


def _stop_at(step):
    def hook(global_step):
        if global_step == step:
            raise Interrupt

    return hook


def _strip(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.mark.trainer
@pytest.mark.parametrize("stop_step", [5, 6])  # mid-epoch (after the step-4 checkpoint) and at an epoch end
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, adapter, stop_step):
    cfg = LTEConfig(**TINY, checkpoint_every=2)
    full = pretrain_lte(adapter, TinyImages(), tmp_path / "full", cfg, progress=False)
    with pytest.raises(Interrupt):
        pretrain_lte(
            adapter, TinyImages(), tmp_path / "cut", cfg, progress=False, on_step=_stop_at(stop_step)
        )
    resumed = pretrain_lte(adapter, TinyImages(), tmp_path / "cut", cfg, progress=False)
    assert resumed.resumed
    assert _strip(resumed.log) == _strip(full.log)
    for name in ("model.safetensors", "train_state/model.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert_trained(a, initial_weights(adapter, cfg))


class _EpochWeights:
    """Records the explainer's weights at the end of every epoch (when the training state is saved)."""

    def __init__(self, monkeypatch) -> None:
        import explainers.training.loop as module  # where the loop looks the function up

        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}
        real = module.save_training_state

        def spy(out, net, payload):
            state = payload["learner"]
            if state["step_in_epoch"] == 0:
                self.by_epoch[state["epoch"]] = {k: v.detach().clone() for k, v in net.state_dict().items()}
            real(out, net, payload)

        monkeypatch.setattr(module, "save_training_state", spy)


@pytest.mark.trainer
def test_the_saved_checkpoint_is_the_best_validated_epoch(tmp_path, adapter, monkeypatch):
    """Scripted validation scores whose best is neither the first nor the last epoch: the checkpoint
    must hold exactly that epoch's weights (a "keep the first" or "keep the last" bug fails)."""
    import explainers.learned.lte.pretrain as module

    scripted = iter([60.0, 40.0, 10.0, 30.0])  # initial, epochs 1-3: epoch 2 is the best
    real_validate = module._validate

    def scripted_validate(*args, **kwargs):
        _, stats = real_validate(*args, **kwargs)
        return next(scripted), stats

    monkeypatch.setattr(module, "_validate", scripted_validate)
    spy = _EpochWeights(monkeypatch)
    cfg = LTEConfig(**TINY)
    result = pretrain_lte(adapter, TinyImages(), tmp_path / "plte", cfg, progress=False)
    assert result.best_epoch == 2 and result.best_val_auc == 10.0
    assert [r["best"] for r in result.log if r["epoch"] > 0] == [True, True, False]
    saved = load_file(tmp_path / "plte" / "model.safetensors")
    assert {1, 2, 3} <= set(spy.by_epoch), "the spy saw no epochs"
    for epoch, weights in spy.by_epoch.items():
        same = all(torch.equal(saved[k], weights[k]) for k in saved)
        assert same == (epoch == 2), epoch
    assert_trained(saved, initial_weights(adapter, cfg))
    meta = json.loads((tmp_path / "plte" / "config.json").read_text())
    assert meta["training"]["epoch"] == 2


@pytest.mark.trainer
def test_a_nan_score_is_never_the_best_and_a_nan_loss_stops(tmp_path, adapter, monkeypatch):
    import explainers.learned.lte.pretrain as module
    from explainers.training.loop import NonFiniteLossError

    scripted = iter([60.0, float("nan"), 50.0, float("nan"), 60.0])
    real_validate = module._validate
    monkeypatch.setattr(module, "_validate", lambda *a, **k: (next(scripted), real_validate(*a, **k)[1]))
    spy = _EpochWeights(monkeypatch)
    result = pretrain_lte(adapter, TinyImages(), tmp_path / "a", LTEConfig(**TINY), progress=False)
    assert result.best_epoch == 2
    saved = load_file(tmp_path / "a" / "model.safetensors")
    assert all(torch.equal(saved[k], spy.by_epoch[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], spy.by_epoch[1][k]) for k in saved)  # epochs differ: it trains
    # a loss that turns NaN stops the run with one clear error, keeping the last good state
    with pytest.raises(NonFiniteLossError, match="step 1"):
        _nan_run(adapter, tmp_path / "b", monkeypatch)
    assert not (tmp_path / "b" / "model.safetensors").exists()


def _nan_run(adapter, out, monkeypatch):
    import explainers.learned.lte.pretrain as module

    real_loss = module.lte_loss

    def poisoned(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(module, "lte_loss", poisoned)
    return pretrain_lte(adapter, TinyImages(), out, LTEConfig(**TINY), progress=False)


def test_resume_refuses_a_changed_configuration(tmp_path, adapter):
    cfg = LTEConfig(**TINY)
    with pytest.raises(Interrupt):
        pretrain_lte(adapter, TinyImages(), tmp_path / "run", cfg, progress=False, on_step=_stop_at(4))
    with pytest.raises(ExplainersError, match="lambda_mask"):
        pretrain_lte(adapter, TinyImages(), tmp_path / "run", cfg.replace(lambda_mask=3.0), progress=False)
    # settings that do not change the weights may differ
    with pytest.raises(Interrupt):
        pretrain_lte(
            adapter,
            TinyImages(),
            tmp_path / "run",
            cfg.replace(eval_batch_size=10),
            progress=False,
            on_step=_stop_at(6),
        )


@pytest.mark.trainer
def test_predicted_class_mode_trains_on_unlabelled_targets(tmp_path, adapter):
    cfg = LTEConfig(**{**TINY, "epochs": 1}, class_mode="predicted", validate_initial=False)
    result = pretrain_lte(adapter, TinyImages(), tmp_path / "p", cfg, progress=False)
    assert result.best_epoch == 1 and [r["epoch"] for r in result.log] == [1]
    assert_trained(load_file(tmp_path / "p" / "model.safetensors"), initial_weights(adapter, cfg))


@pytest.mark.trainer
def test_labels_beyond_the_explainee_classes_only_matter_for_target_mode(tmp_path, adapter):
    # Labels of another task (more classes than the explainee has) still stratify the subsets when the
    # explained class is the prediction; with target classes they are refused with what to do.
    many = TinyImages(k=adapter.num_classes + 3)
    cfg = LTEConfig(**{**TINY, "epochs": 1, "train_per_class": 2}, validate_initial=False)
    with pytest.raises(ExplainersError, match="--class predicted"):
        pretrain_lte(adapter, many, tmp_path / "t", cfg, progress=False)
    result = pretrain_lte(adapter, many, tmp_path / "p", cfg.replace(class_mode="predicted"), progress=False)
    assert result.best_epoch == 1
    assert_trained(load_file(tmp_path / "p" / "model.safetensors"), initial_weights(adapter, cfg))


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    out = tmp_path_factory.mktemp("synth") / "scenes"
    generate_synthetic(
        out, SyntheticConfig(image_size=32, train_size=24, val_size=4, test_size=6), progress=False
    )
    return out


def _cli(args, capsys):
    from explainers.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.mark.trainer
def test_cli_pretrain_then_explain(tmp_path, synthetic_dir, capsys):
    model = build_hf_model(num_labels=4)
    model.save_pretrained(tmp_path / "explainee")
    config = tmp_path / "lte.json"
    config.write_text(json.dumps({"train_per_class": 3, "val_per_class": 1, "epochs": 1, "batch_size": 4}))
    args = [
        "pretrain",
        "lte",
        "--explainee",
        str(tmp_path / "explainee"),
        "--data",
        f"synthetic:{synthetic_dir}",
        "--out",
        str(tmp_path / "plte"),
        "--config",
        str(config),
        "--class",
        "predicted",
        "--set",
        "lambda_mask=2.5",
        "--no-progress",
    ]
    code, out, err = _cli(args, capsys)
    assert code in (0, None), err
    assert "best epoch 1" in out
    meta = json.loads((tmp_path / "plte" / "config.json").read_text())
    assert meta["config"]["lambda_mask"] == 2.5 and meta["config"]["class_mode"] == "predicted"
    assert meta["training"]["split"] == "train" and "pretrain lte" in meta["training"]["command"]
    assert_trained(
        load_file(tmp_path / "plte" / "model.safetensors"),
        initial_weights(load_explainee(tmp_path / "explainee"), LTEConfig.from_dict(meta["config"])),
    )

    import h5py

    code, out, err = _cli(
        [
            "explain",
            "--method",
            "lte",
            "--explainee",
            str(tmp_path / "explainee"),
            "--data",
            f"synthetic:{synthetic_dir}",
            "--out",
            str(tmp_path / "lte.h5"),
            "--option",
            f"explainer={tmp_path / 'plte'}",
            "--option",
            "steps=2",
            "--no-progress",
        ],
        capsys,
    )
    assert code in (0, None), err
    with h5py.File(tmp_path / "lte.h5") as f:
        assert f["maps"].shape == (6, 32, 32)
        assert f["selected_step"].shape == (6,) and f["selected_score"].shape == (6,)


def test_cli_unknown_config_key_is_one_line(tmp_path, synthetic_dir, capsys):
    code, _, err = _cli(
        [
            "pretrain",
            "lte",
            "--explainee",
            "x",
            "--data",
            f"synthetic:{synthetic_dir}",
            "--out",
            str(tmp_path / "o"),
            "--set",
            "lamda_mask=3",
        ],
        capsys,
    )
    assert code == 2 and "lamda_mask" in err and "valid keys" in err and err.strip().count("\n") == 0


@pytest.mark.trainer
def test_gradient_accumulation_equals_the_whole_batch_and_bf16_trains(tmp_path, adapter):
    """grad_accum=2 splits each batch into two micro-batches with one optimiser step: the same training
    as the whole batch at once (up to float rounding). bf16 autocast trains too, float32 weights kept."""
    cfg = LTEConfig(**{**TINY, "epochs": 1, "validate_initial": False})
    whole = pretrain_lte(adapter, TinyImages(), tmp_path / "whole", cfg, progress=False)
    split = pretrain_lte(adapter, TinyImages(), tmp_path / "split", cfg.replace(grad_accum=2), progress=False)
    a, b = whole.last.net.state_dict(), split.last.net.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert_trained(b, initial_weights(adapter, cfg))
    bf16 = pretrain_lte(adapter, TinyImages(), tmp_path / "bf16", cfg.replace(precision="bf16"), progress=False)
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    assert_trained(weights, initial_weights(adapter, cfg))
    assert bf16.log[0]["loss"] == pytest.approx(whole.log[0]["loss"], rel=0.05)
    with pytest.raises(ExplainersError, match="grad_accum"):
        pretrain_lte(adapter, TinyImages(), tmp_path / "bad", cfg.replace(grad_accum=3), progress=False)
