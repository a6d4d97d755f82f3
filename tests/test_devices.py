"""Devices: ``--device`` names, one-line errors for devices this machine lacks, moving explainers, and
memory-aware LTE refinement (chunks sized to a memory budget, same results)."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.cli import main
from explainers.devices import DeviceError, format_bytes, free_memory, parse_bytes, resolve_device
from explainers.errors import ExplainersError
from explainers.learned import LTEConfig, LTEExplainer
from explainers.learned.lte import refine as refine_module
from explainers.learned.lte.refine import bytes_per_image, refine_images
from fakedevice import DeviceMixError, emulated_device, values

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# ------------------------------------------------------------------------------------------ resolve_device


def test_default_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_default_is_this_process_gpu_with_cuda(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device(None) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")  # process 1 of torchrun
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_a_gpu_index_the_machine_lacks_is_refused(two_gpus):
    with pytest.raises(DeviceError, match=r"has 2 CUDA GPU\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(no_cuda, name):
    with pytest.raises(DeviceError, match="cannot use CUDA.*use --device cpu"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["nonsense", "gpu", "cuda:x"])
def test_nonsense_names_are_refused(name):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


def test_meta_is_refused():
    with pytest.raises(DeviceError, match="holds no data"):
        resolve_device("meta")


def test_load_explainee_checks_the_device(no_cuda):
    with pytest.raises(DeviceError):
        load_explainee(build_hf_model(), device="cuda")


# ------------------------------------------------------------------------------------------ command line

_COMMANDS = {
    "info": ["info"],
    "explain": ["explain", "--method", "random", "--data", "synthetic:nowhere", "--out", "x.h5"],
    "evaluate": ["evaluate", "--data", "synthetic:nowhere", "--masks", "x.h5", "--out", "r"],
    "heatmap": ["heatmap", "--method", "random", "--images", "IMAGES"],
    "demo": ["demo", "--out", "demo-out"],
}


@pytest.mark.parametrize("command", sorted(_COMMANDS))
@pytest.mark.parametrize("device", ["cuda", "nonsense"])
def test_every_command_refuses_a_bad_device_in_one_line(
    command, device, no_cuda, tmp_path, tmp_path_factory, monkeypatch, capsys
):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    monkeypatch.chdir(tmp_path)
    args = [str(folder) if a == "IMAGES" else a for a in _COMMANDS[command]]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--device", device])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("explainers: error:")
    assert ("cannot use CUDA" if device == "cuda" else "unknown device 'nonsense'") in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_info_runs_on_the_cpu(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", "--device", "cpu"])
    assert exc.value.code == 0
    assert '"identifier": "embedded"' in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ memory sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 1024**3), ("500MB", 500_000_000), ("1.5 KiB", 1536), ("2e9", 2_000_000_000), (1024, 1024)],
)
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "-1GB", "0", True])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ExplainersError):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"


def test_free_memory_on_the_cpu_with_and_without_psutil(monkeypatch):
    with_psutil = free_memory("cpu")
    assert with_psutil is not None and with_psutil > 0
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # import psutil now fails
    from_proc = free_memory("cpu")
    assert from_proc is not None and 0.5 < from_proc / with_psutil < 2  # /proc/meminfo MemAvailable
    assert free_memory("meta") is None


def test_memory_budget_config_key_is_checked():
    assert LTEConfig(memory_budget="4GiB").memory_budget == "4GiB"
    assert LTEConfig.from_dict({"memory_budget": 2_000_000}).memory_budget == 2_000_000
    assert LTEConfig.from_dict({"memory_budget": "8GiB"}).memory_budget == "8GiB"  # --set memory_budget=8GiB
    assert LTEConfig.from_dict({"memory_budget": None}).memory_budget is None
    with pytest.raises(ExplainersError, match="memory_budget"):
        LTEConfig(memory_budget="a lot")


# ------------------------------------------------------------------------------------------ .to()


@pytest.fixture
def explainer():
    torch.manual_seed(0)
    ex = LTEExplainer(load_explainee(build_hf_model()), LTEConfig(lambda_mask=2.0))
    with torch.no_grad():
        ex.net.head.fc2.weight.normal_(std=0.5)
    return ex


def test_lte_explainer_to_moves_the_explainee_too(explainer, images):
    reference = explainer.refine(images, steps=2)
    with emulated_device() as device:
        explainer.to(device)
        assert explainer.device == device and explainer.adapter.device == device
        maps = explainer.refine(images, steps=2)  # any CPU tensor left in an op raises DeviceMixError
    assert maps.device == device
    torch.testing.assert_close(values(maps), reference, atol=1e-5, rtol=0)


def test_moving_only_the_network_fails_under_the_emulated_device(explainer, images):
    """What ``.to()`` did before: the harness sees the explainee left on the CPU."""
    with emulated_device() as device:
        explainer.net.to(device)
        with pytest.raises(DeviceMixError):
            explainer.refine(images, steps=2)


# ------------------------------------------------------------------------------------------ memory-aware refinement


def test_bytes_per_image_counts_parameter_copies_and_activations(explainer):
    est = bytes_per_image(explainer)
    trainable = sum(p.numel() for p in explainer.net.parameters() if p.requires_grad)
    assert est.trainable_parameters == trainable
    assert est.parameter_bytes == 16 * trainable  # parameter + gradient + two AdamW moments, fp32
    # tiny ViT: 3 blocks, 16 patches + CLS, D 32, 4 heads → 2·3·(20·17·32 + 3·4·17²)·4 bytes
    assert est.activation_bytes == 2 * 3 * (20 * 17 * 32 + 3 * 4 * 17**2) * 4
    assert est.total == est.parameter_bytes + est.activation_bytes


def test_activation_estimate_is_near_the_saved_tensors(explainer, images):
    """Measure what autograd keeps for the backward pass of one refinement step (saved-tensor hooks)."""
    from explainers.learned.lte.loss import lte_loss

    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = images[:1]
    params = [p for p in explainer.net.parameters() if p.requires_grad]
    param_ptrs = {p.untyped_storage().data_ptr() for p in explainer.net.parameters()}
    param_ptrs |= {p.untyped_storage().data_ptr() for p in explainer.adapter.model.parameters()}
    with explainer.net.eager_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        patch, mask = explainer.net(explainer.adapter.normalize(x))
        classes = explainer.adapter.predict(x).argmax(1)
        loss = lte_loss(explainer.adapter, x, patch, mask, classes, explainer.config).total.sum()
    torch.autograd.grad(loss, params)
    measured = sum(n for ptr, n in saved.items() if ptr not in param_ptrs)
    estimate = bytes_per_image(explainer).activation_bytes
    assert 0.5 < estimate / measured < 2.0, (estimate, measured)


def test_a_small_budget_refines_in_chunks_with_the_same_results(explainer, monkeypatch, caplog):
    torch.manual_seed(1)
    imgs = torch.rand(5, 3, 32, 32)
    unsplit = refine_images(explainer, imgs, steps=4, stop_below=-1.0, batch_size=5, memory_budget="1TiB")
    chunk_sizes = []
    original = refine_module._refine_parallel

    position = list(inspect.signature(original).parameters).index("index")

    def spy(*args):
        chunk_sizes.append(len(args[position]))
        return original(*args)

    monkeypatch.setattr(refine_module, "_refine_parallel", spy)
    per_image = bytes_per_image(explainer).total
    with caplog.at_level(logging.WARNING, logger="explainers.learned.lte.refine"):
        split = refine_images(explainer, imgs, steps=4, stop_below=-1.0, batch_size=5, memory_budget=2 * per_image + 1)
        again = refine_images(explainer, imgs, steps=4, stop_below=-1.0, batch_size=5, memory_budget=2 * per_image + 1)
    assert chunk_sizes == [2, 2, 1, 2, 2, 1]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "refining 2 at a time" in warnings[0]  # said once, not per call
    for result in (split, again):
        assert torch.equal(result.selected_step, unsplit.selected_step)
        assert torch.equal(result.scored_steps, unsplit.scored_steps)
        torch.testing.assert_close(result.selected_score, unsplit.selected_score, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.maps, unsplit.maps, atol=1e-5, rtol=0)
    assert bool((unsplit.scored_steps == 4).all())  # every image ran every step in every chunk


def test_the_default_budget_is_a_share_of_free_memory(explainer, monkeypatch):
    per_image = bytes_per_image(explainer).total
    monkeypatch.setattr(refine_module, "free_memory", lambda device: int(3 * per_image / 0.8) + 8)
    assert refine_module.resolve_memory_budget(None, torch.device("cpu")) // per_image == 3
    assert refine_module.images_per_chunk(explainer, 16, 100, refine_module.resolve_memory_budget(None, "cpu")) == 3


def test_budget_from_the_config_and_from_the_lte_method(explainer, monkeypatch):
    calls = []
    monkeypatch.setattr(
        refine_module, "images_per_chunk", lambda ex, batch, n, budget: calls.append(budget) or batch
    )
    explainer.config = explainer.config.replace(memory_budget="3MiB")
    refine_images(explainer, torch.rand(1, 3, 32, 32), steps=1)
    refine_images(explainer, torch.rand(1, 3, 32, 32), steps=1, memory_budget=1000)
    assert calls == [3 * 1024**2, 1000]


# ------------------------------------------------------------------------------------------ benchmarks/gpu_smoke.py


def _gpu_smoke():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
    if str(path.parent) not in __import__("sys").path:  # its shared helpers (_timing) live beside it
        __import__("sys").path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    module = importlib.util.module_from_spec(spec)
    __import__("sys").modules["gpu_smoke"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _run_gpu_smoke(tmp_path, *extra):
    import json

    out = tmp_path / "smoke.json"
    code = _gpu_smoke().main(["--device", "cpu", "--tiny", "--json", str(out), *extra])
    return code, json.loads(out.read_text())


def test_gpu_smoke_explains_and_evaluates_tiny_on_the_cpu(tmp_path):
    """The GPU smoke's own code path (every method in fp32 and bf16 autocast, evaluation) on tiny models on
    the CPU: what must work the first time it meets a GPU."""
    smoke = _gpu_smoke()
    code, result = _run_gpu_smoke(tmp_path, "--models", "vit-b", "--no-training")
    assert code == 0 and result["errors"] == []
    explained = {(r["model"], r["method"]) for r in result["rows"] if r["phase"] == "explain"}
    for precision in ("fp32", "bf16"):
        assert {m for model, m in explained if model == f"vit-b/{precision}"} == set(smoke.library_methods())
    assert [r["phase"] for r in result["rows"]].count("evaluate") == 2


@pytest.mark.slow
def test_gpu_smoke_trains_tiny_on_the_cpu(tmp_path):
    """Both models, and the pLTE and LETA training commands as the smoke launches them."""
    code, result = _run_gpu_smoke(tmp_path)
    assert code == 0 and result["errors"] == []
    trained = {(r["phase"], r["model"]) for r in result["rows"] if r["phase"].endswith("train")}
    runs = ("vit-b/fp32", "vit-b/bf16", "deit-s-distilled/fp32")
    assert trained == {(p, run) for p in ("pLTE train", "LETA train") for run in runs}


def test_gpu_smoke_exits_non_zero_on_any_error(tmp_path, monkeypatch):
    import explainers.methods

    original = explainers.methods.get_method

    def failing(name, *args, **kwargs):
        if name == "rollout":
            raise RuntimeError("injected")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(explainers.methods, "get_method", failing)
    code, result = _run_gpu_smoke(tmp_path, "--models", "deit-s-distilled", "--no-training")
    assert code == 1
    errors = result["errors"]
    assert len(errors) == 1 and "rollout" in errors[0] and "injected" in errors[0]
