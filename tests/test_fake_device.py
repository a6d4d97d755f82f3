"""Device correctness without a GPU: every model tensor on a non-CPU device, any CPU/device mix fails.

The harness (``tests/fakedevice.py``) makes ``meta`` stand in for an accelerator while computing real
values on the CPU, so the tests also check that the results equal a plain CPU run. ``FakeTensorMode`` is
probed below for what it does and does not catch (why the harness exists). What none of this covers:
CUDA-only branches (autocast on CUDA, ``torch.cuda`` memory queries, NCCL collectives), GPU kernels and
their numerics, and speed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.methods import available_methods, get_method
from explainers.methods.base import METHODS
from fakedevice import EMULATED, DeviceMixError, emulated_device, on_device, values

pytestmark = pytest.mark.usefixtures("one_thread")

#: Options that keep the slow methods quick (same options on the CPU and the device).
FAST_OPTIONS = {
    "rise": {"num_masks": 32},
    "integrated-gradients": {"steps": 4},
    "lte": {"steps": 3, "stop_below": -1.0},
}


#: The library's methods (test modules register their own, e.g. evalkit's ``test-center``).
LIBRARY_METHODS = [name for name in available_methods() if METHODS[name].__module__.startswith("explainers.")]

# ------------------------------------------------------------------------------------------ the harness


def test_harness_refuses_mixes_that_cuda_refuses():
    with emulated_device() as device:
        a = torch.ones(3, device=device)
        with pytest.raises(DeviceMixError):
            _ = a + torch.ones(3)
        with pytest.raises(DeviceMixError):  # what FakeTensorMode lets through (below)
            torch.stack([a.sum(), torch.tensor(3.0)])
        with pytest.raises(DeviceMixError):
            torch.ones(2, 3) @ torch.ones(3, 2, device=device)


def test_harness_computes_real_values_and_copies_back():
    x = torch.arange(6.0).reshape(2, 3)
    with emulated_device() as device:
        y = x.to(device)
        assert y.device == EMULATED and on_device(y)
        z = (y * 2).sum(1)
        back = z.cpu()
        assert not on_device(back) and back.device.type == "cpu"
        torch.testing.assert_close(back, torch.tensor([6.0, 24.0]))
        assert float(z[1]) == 24.0  # .item() works: early stops and metrics can read values
        t = torch.tensor([1, 2], device=device)  # from data, straight onto the device
        assert on_device(t) and values(t).tolist() == [1, 2]
        n = z.new_tensor(float(len([1, 2, 3])))
        assert on_device(n) and float(n) == 3.0
        w = torch.ones(4, 1, 2, device=device)
        w.squeeze_(1)  # in-place shape change keeps the caller's object in step
        assert w.shape == (4, 2) and values(w).shape == (4, 2)


def test_harness_runs_autograd_vmap_and_optimisers():
    from torch.func import functional_call, vmap

    lin = torch.nn.Linear(3, 2)
    ref_out = lin(torch.ones(4, 3))
    with emulated_device() as device:
        lin.to(device)
        x = torch.ones(4, 3, device=device)
        params = {
            k: v.detach().unsqueeze(0).repeat(4, *([1] * v.dim())).requires_grad_() for k, v in lin.named_parameters()
        }
        out = vmap(lambda p, xi: functional_call(lin, p, (xi,)))(params, x)
        torch.testing.assert_close(values(out), ref_out.detach())
        grads = torch.autograd.grad(out.sum(), list(params.values()))
        assert all(on_device(g) for g in grads)
        opt = torch.optim.AdamW(lin.parameters())
        lin(x).sum().backward()
        opt.step()
        assert on_device(lin.weight) and on_device(opt.state[lin.weight]["exp_avg"])


def test_fake_tensor_mode_misses_a_zero_dim_stack():
    """Why the harness: FakeTensorMode refuses most mixes but lets ``stack`` of 0-dim tensors through —
    the pLTE logging bug of the issue (``torch.stack([cuda terms…, torch.tensor(len(local))])``)."""
    from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        a = torch.ones(3, device="cuda")
        with pytest.raises(FakeTensorDeviceMismatchError):
            _ = a + torch.ones(3, device="cpu")
        stacked = torch.stack([a.sum(), torch.tensor(3.0)])  # fails on a real GPU
        assert stacked.device.type == "cuda"
        with pytest.raises(RuntimeError):  # fake tensors hold no values: metrics and early stops cannot run
            float(a.sum())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only build is what is probed")
def test_fake_tensor_mode_cannot_move_a_real_module_to_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(RuntimeError, match="cuda"):
        torch.nn.Linear(2, 2).to("cuda")


# ------------------------------------------------------------------------------------------ explain + evaluate


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(train_size=4, val_size=2, test_size=2)
    return generate_synthetic(tmp_path_factory.mktemp("scenes") / "data", cfg, progress=False)


def _explain_and_evaluate(method: str, scenes, work, device=None) -> tuple[np.ndarray, dict]:
    from explainers.data import open_dataset
    from explainers.explain import explain_dataset
    from explainers.metrics import evaluate_maskfiles

    adapter = load_explainee("embedded")
    if device is not None:
        adapter.to(device)
    dataset = open_dataset(f"synthetic:{scenes}", split="test")
    m = get_method(method, adapter, **FAST_OPTIONS.get(method, {}))
    path = work / f"{method}.h5"
    explain_dataset(m, dataset, path, batch_size=4, progress=False)
    metrics = "pos,neg,deletion,pixel-accuracy,miou,map"
    result = evaluate_maskfiles(adapter, dataset, [path], metrics, progress=False, batch_size=4)
    import h5py

    with h5py.File(path, "r") as f:
        maps = np.asarray(f["maps"][...])
    scored = result.files[0]
    return maps, {"per_image": scored.per_image, "summaries": scored.summaries, "curves": scored.curves}


@pytest.mark.parametrize("method", LIBRARY_METHODS)
def test_explain_and_evaluate_every_method_on_the_device(method, scenes, tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "dev").mkdir()
    maps_cpu, metrics_cpu = _explain_and_evaluate(method, scenes, tmp_path / "cpu")
    with emulated_device() as device:
        maps_dev, metrics_dev = _explain_and_evaluate(method, scenes, tmp_path / "dev", device)
    np.testing.assert_allclose(maps_dev, maps_cpu, atol=1e-4)
    # Not bit-equal: on a non-CPU device PyTorch picks other kernels for some ops (SDPA takes the math path),
    # and maps equal to 1e-5 can swap near-tied pixels in a perturbation order.
    assert _numbers(metrics_dev) == pytest.approx(_numbers(metrics_cpu), rel=1e-2, abs=1e-2)


def _numbers(result) -> list[float]:
    """Every number in an evaluation result, flattened (order is stable)."""
    import dataclasses

    if dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    out: list[float] = []

    def walk(x):
        if isinstance(x, dict):
            for k in sorted(x):
                if k not in ("seconds", "timing", "path", "images_per_s"):
                    walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, np.ndarray):
            out.extend(float(v) for v in x.ravel())
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out.append(float(x))

    walk(result)
    return out


def test_an_injected_cpu_tensor_fails_the_test(monkeypatch, images):
    """The harness can fail: a method that builds one tensor on the CPU is caught."""
    from explainers.methods import rollout

    adapter = load_explainee(build_hf_model())
    m = get_method("rollout", adapter)
    original = rollout.AttentionRollout.attribute

    def leaky(self, imgs, targets):
        result = original(self, imgs, targets)
        return dataclasses.replace(result, maps=result.maps + torch.zeros(1))  # a CPU tensor in a device op

    monkeypatch.setattr(rollout.AttentionRollout, "attribute", leaky)
    m(images)  # fine on the CPU
    with emulated_device() as device:
        adapter.to(device)
        with pytest.raises(DeviceMixError):
            m(images.to(device))


# ------------------------------------------------------------------------------------------ learned explainers


def _lte(adapter):
    from explainers.learned import LTEConfig, LTEExplainer

    torch.manual_seed(0)
    return LTEExplainer(adapter, LTEConfig(lambda_mask=2.0))


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_plte_forward_refinement_and_a_training_step_on_the_device(kind, images):
    from explainers.learned.lte.loss import lte_loss

    def run(device=None):
        ex = _lte(load_explainee(build_hf_model(kind)))
        if device is not None:
            ex.to(device)
        x = images if device is None else images.to(device)
        forward = ex(x)
        refined = ex.refine(x, steps=3, stop_below=-1.0, batch_size=2, return_details=True)
        opt = torch.optim.AdamW(ex.trainable_parameters(), lr=1e-3)
        ex.net.train()
        patch, mask = ex.masks(x)
        classes = ex.adapter.predict(x).argmax(1)
        terms = lte_loss(ex.adapter, x, patch, mask, classes, ex.config)
        terms.total.mean().backward()
        opt.step()
        logged = torch.stack([terms.total.detach().sum(), terms.mask.detach().sum()])  # device-side log sums
        return forward, refined, logged, next(iter(ex.trainable_parameters())).detach()

    ref = run()
    with emulated_device() as device:
        out = run(device)
        assert all(on_device(t) for t in (out[0], out[1].maps, out[2], out[3]))
    torch.testing.assert_close(values(out[0]), ref[0])
    torch.testing.assert_close(values(out[1].maps), ref[1].maps, atol=1e-5, rtol=0)
    assert torch.equal(out[1].selected_step, ref[1].selected_step)
    torch.testing.assert_close(values(out[2]), ref[2], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(values(out[3]), ref[3], atol=1e-6, rtol=1e-5)


def _timm_encoder():
    from conftest import build_timm_vit

    return load_explainee(build_timm_vit())


@pytest.mark.parametrize("encoder_kind", ["hf", "timm"])
@pytest.mark.parametrize("layout", ["shared", "two-branch"])
def test_leta_explain_and_a_training_step_on_the_device(encoder_kind, layout, images):
    from explainers.learned.leta import LETAConfig, LETAExplainer
    from explainers.learned.leta.objective import compute_targets, leta_loss, sample_centres

    def run(device=None):
        encoder = load_explainee(build_hf_model()) if encoder_kind == "hf" else _timm_encoder()
        ex = LETAExplainer.build(encoder, LETAConfig(layout=layout, head_depth=1, radius=1), seed=0)
        probe = torch.nn.Linear(encoder.embed_dim, 3)
        torch.nn.init.normal_(probe.weight, std=1.0)
        ex.resolve_head(probe)  # cached: .to() must move it too
        if device is not None:
            ex.to(device)
        x = images if device is None else images.to(device)
        maps = ex(x, head=probe)
        ex.network.train()
        opt = torch.optim.AdamW(ex.network.parameters(), lr=1e-3)
        centres = sample_centres(x.shape[0], 2, encoder.num_patches, torch.Generator().manual_seed(0))
        centres = centres.to(x.device)
        t_pos, t_neg = compute_targets(encoder, encoder.normalize(x), centres, ex.windows())
        psi_pos, psi_neg = ex.network(x)
        loss, _, _ = leta_loss(psi_pos, psi_neg, centres, t_pos, t_neg)
        loss.backward()
        opt.step()
        return maps, loss.detach(), next(ex.network.parameters()).detach()

    ref = run()
    with emulated_device() as device:
        out = run(device)
        assert all(on_device(t) for t in out)
    torch.testing.assert_close(values(out[0]), ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(values(out[1]), ref[1])
    torch.testing.assert_close(values(out[2]), ref[2], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ the training commands


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(image_size=32, train_size=8, val_size=4, test_size=4)
    return generate_synthetic(tmp_path_factory.mktemp("small") / "data", cfg, progress=False)


@pytest.fixture
def accelerator_on_device(monkeypatch):
    """``accelerate`` places everything on the emulated device (what it does with a GPU)."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "device", property(lambda self: EMULATED))


def test_plte_pretraining_runs_on_the_device(small_scenes, tmp_path, accelerator_on_device):
    from explainers.learned import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte

    cfg = LTEConfig(epochs=1, batch_size=4, train_per_class=1, val_per_class=1, eval_batch_size=8)
    with emulated_device():
        adapter = load_explainee(build_hf_model(num_labels=4))
        result = pretrain_lte(adapter, f"synthetic:{small_scenes}", tmp_path / "plte", cfg, progress=False)
    assert result.best_epoch == 1


def test_leta_pretraining_runs_on_the_device(small_scenes, tmp_path, accelerator_on_device):
    from explainers.learned.leta import LETAExplainer
    from explainers.learned.leta.config import build_run_config
    from explainers.learned.leta.pretrain import pretrain

    run = build_run_config(
        None, max_steps=2, batch_size=4, centres=2, head_depth=1, radius=1, split="train"
    )
    with emulated_device():
        encoder = load_explainee(build_hf_model(num_labels=4))
        out = pretrain(encoder, f"synthetic:{small_scenes}", tmp_path / "leta", run, progress=False)
    encoder = load_explainee(build_hf_model(num_labels=4))
    trained = LETAExplainer.from_pretrained(out, encoder=encoder).network.state_dict()
    initial = LETAExplainer.build(encoder, run.model, seed=run.training.seed).network.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # the two steps changed the weights
