"""Data loading through DataLoader workers: same batches and byte-identical mask files as in-process
loading, resume and shards decode only their images, errors stay one line, labels without decoding."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import explainers.data.loader as loader_module
from evalkit import ListDataset, make_coco, make_imagenet_seg, make_voc
from explainers import DatasetError, ExplainersError, open_dataset
from explainers.cli import main
from explainers.data.base import Sample, collate
from explainers.data.loader import BatchLoader, default_workers, resolve_workers
from explainers.distributed import Shard
from explainers.explain import explain_dataset
from explainers.io import partial_path
from explainers.methods import get_method

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def make_folder(root, n=7, classes=("cat", "dog"), seed=0):
    """JPEGs and PNGs of several sizes (so collate resizes) in one subfolder per class."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 18 + 2 * (i % 3), 20 + 3 * (i % 2)
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}{suffix}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder") / "images")


@pytest.fixture
def fixed_clock(monkeypatch):
    """Mask files record when they were written (to the second): fix that time so files can be compared
    byte for byte."""
    from datetime import datetime, timezone

    import explainers.io.maskfile as maskfile

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 1, tzinfo=timezone.utc)

    monkeypatch.setattr(maskfile, "datetime", Frozen)


def no_decoding(monkeypatch):
    """Make every image decode fail loudly, in this process and in forked workers."""

    def refuse(path):
        raise AssertionError(f"decoded {path}")

    for module in ("base", "folder", "imagenet", "synthetic", "voc", "coco", "masks"):
        monkeypatch.setattr(f"explainers.data.{module}.load_image", refuse, raising=False)


def contents(path):
    """Every dataset and attribute of an HDF5 file (a resumed file is equal in content, not in layout)."""
    with h5py.File(path) as f:
        out = {f"attr:{k}": np.asarray(v) for k, v in f.attrs.items()}
        out.update({k: f[k][:] for k in f})
    return out


def batches_of(loader):
    return [(b.images, b.labels, b.ids, b.masks, b.ignore) for b in loader]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, torch.Tensor):
                assert torch.equal(u, v)
            else:
                assert u == v


# ------------------------------------------------------------------------------------------ the loader
def test_workers_give_the_in_process_batches_in_order(folder):
    ds = open_dataset(f"folder:{folder}")
    batches = [[6, 0, 3], [1], [5, 2], [4]]  # any order, uneven sizes: kept exactly
    reference = batches_of(BatchLoader(ds, batches, (16, 16), workers=0))
    assert [r[2] for r in reference] == [[ds.ids[i] for i in b] for b in batches]
    # Raw [0, 1] images resized by collate, nothing else (normalising is the explainee's, on its device).
    assert torch.equal(reference[0][0], collate([ds[6], ds[0], ds[3]], (16, 16)).images)
    assert float(reference[0][0].min()) >= 0 and float(reference[0][0].max()) <= 1
    assert_same_batches(batches_of(BatchLoader(ds, batches, (16, 16), workers=2)), reference)
    voc = open_dataset(f"voc:{make_voc(folder.parent / 'voc', n=5)}", void="ignore")
    batches = [[0, 1], [2, 3], [4]]
    reference = batches_of(BatchLoader(voc, batches, (16, 16), workers=0))
    assert reference[0][3] is not None and reference[0][4] is not None  # masks and void travel too
    assert_same_batches(batches_of(BatchLoader(voc, batches, (16, 16), workers=2)), reference)


class WhereLoaded(ListDataset):
    """Records in each sample's id the process and torch thread count that loaded it."""

    def __getitem__(self, index):
        s = self.samples[index]
        return Sample(s.image, s.label, s.mask, f"{os.getpid()}:{torch.get_num_threads()}")


def test_workers_are_other_processes_with_one_torch_thread():
    ds = WhereLoaded([Sample(torch.rand(3, 8, 8), i, None, str(i)) for i in range(6)])
    torch.set_num_threads(2)  # workers start with this process's setting; they must drop to one
    loaded = [i for b in BatchLoader(ds, [[0, 1], [2, 3], [4, 5]], (8, 8), workers=2) for i in b.ids]
    pids = {int(i.split(":")[0]) for i in loaded}
    assert os.getpid() not in pids and len(pids) == 2
    assert {i.split(":")[1] for i in loaded} == {"1"}
    in_process = [i for b in BatchLoader(ds, [[0, 1], [2]], (8, 8), workers=0) for i in b.ids]
    assert {int(i.split(":")[0]) for i in in_process} == {os.getpid()}


def test_batches_arrive_on_the_device():
    def sample(i):
        mask = torch.rand(8, 8) > 0.5
        return Sample(torch.rand(3, 8, 8), 1, mask, str(i), ignore=~mask, counter_mask=~mask)

    ds = ListDataset([sample(i) for i in range(4)])
    # The meta device stands in for a GPU: every tensor of the batch must have been moved.
    for batch in BatchLoader(ds, [[0, 1], [2, 3]], (4, 4), workers=0, device="meta"):
        parts = (batch.images, batch.labels, batch.masks, batch.ignore, batch.counter)
        assert {t.device.type for t in parts} == {"meta"}
    loader = BatchLoader(ds, [[0, 1]], (4, 4), workers=0, device="cuda")
    assert loader.pin and not BatchLoader(ds, [[0]], (4, 4), device="cpu").pin  # pinned only for CUDA


def test_worker_counts():
    assert 1 <= default_workers() <= loader_module.MAX_DEFAULT_WORKERS
    assert resolve_workers(3, batches=10) == 3 and resolve_workers(3, batches=2) == 2
    assert resolve_workers(3, batches=1) == 0 and resolve_workers(0, batches=10) == 0
    assert resolve_workers(None) == default_workers()
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ExplainersError, match="--workers must be 0"):
            resolve_workers(bad)


def test_default_workers_share_the_cpus_among_local_processes(monkeypatch):
    monkeypatch.setattr(loader_module, "available_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers() == 2
    monkeypatch.setattr(loader_module, "available_cpus", lambda: 2)
    assert default_workers() == 1


# ------------------------------------------------------------------------------------------ errors
def test_torch_reraises_worker_errors_with_the_traceback_as_message(tmp_path):
    """Why the loader carries errors back as values: the wrapper torch sends an exception raised in a worker
    through keeps its type but makes the worker's whole traceback its message, not the one line the CLI
    prints. (The wrapper is called here directly: a real worker that raises also delays its own shutdown.)"""
    from torch._utils import ExceptionWrapper

    (tmp_path / "x.png").write_bytes(b"not an image")
    ds = open_dataset(f"folder:{tmp_path}")
    try:
        ds[0]
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value) and len(str(caught.value).splitlines()) > 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_one_clear_error(folder, tmp_path, workers):
    broken = tmp_path / "broken"
    make_folder(broken, n=6)
    (broken / "cat" / "004.png").write_bytes(b"\x89PNG truncated")
    ds = open_dataset(f"folder:{broken}")
    with pytest.raises(DatasetError) as caught:
        list(BatchLoader(ds, [[0, 1], [2, 3], [4, 5]], (16, 16), workers=workers))
    message = str(caught.value)
    assert message.startswith("cannot decode image") and "004.png" in message and "\n" not in message


def test_cli_corrupt_image_with_workers_is_one_line(vit_dir, tmp_path, capsys):
    broken = make_folder(tmp_path / "broken", n=6)
    (broken / "dog" / "003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(SystemExit) as exc:
        main(
            ["explain", "--method", "raw-attention", "--explainee", str(vit_dir), "--data", f"folder:{broken}",
             "--out", str(tmp_path / "m.h5"), "--batch-size", "2", "--workers", "2", "--no-progress"]
        )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "Loading weights" not in line]
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("explainers: error: cannot decode image") and "003.jpg" in err[0]


class DiesInWorker(ListDataset):
    def __getitem__(self, index):
        if index == 3 and multiprocessing.parent_process() is not None:
            os._exit(1)  # as if killed for memory
        return super().__getitem__(index)


def test_a_dead_worker_is_one_clear_error():
    ds = DiesInWorker([Sample(torch.rand(3, 8, 8), 0, None, str(i)) for i in range(6)])
    with pytest.raises(ExplainersError, match=r"worker process failed .*rerun with --workers 0"):
        list(BatchLoader(ds, [[0, 1], [2, 3], [4, 5]], (8, 8), workers=2))


def test_cli_refuses_negative_workers_before_writing(vit_dir, folder, tmp_path, capsys):
    out = tmp_path / "m.h5"
    with pytest.raises(SystemExit) as exc:
        main(
            ["explain", "--method", "raw-attention", "--explainee", str(vit_dir), "--data", f"folder:{folder}",
             "--out", str(out), "--workers", "-1", "--no-progress"]
        )  # fmt: skip
    assert exc.value.code == 2 and "--workers must be 0" in capsys.readouterr().err
    assert not out.exists() and not partial_path(out).exists()


# ------------------------------------------------------------------------------------------ explain / evaluate
def test_mask_files_are_byte_identical_with_and_without_workers(adapter, folder, tmp_path, fixed_clock):
    ds = open_dataset(f"folder:{folder}")
    method = get_method("raw-attention", adapter)
    files = {}
    for workers in (0, 2):
        files[workers] = tmp_path / f"w{workers}.h5"
        explain_dataset(method, ds, files[workers], batch_size=2, progress=False, workers=workers)
    assert files[0].read_bytes() == files[2].read_bytes()
    with h5py.File(files[2]) as f:
        assert [i.decode() for i in f["ids"][:]] == ds.ids  # dataset order


def test_resume_never_decodes_the_committed_images(adapter, folder, tmp_path, fixed_clock):
    """After an interruption the committed images are broken on disk: the resumed run must not read them,
    and must still end with the uninterrupted file."""
    from evalkit import CenterMethod

    data = tmp_path / "data"
    make_folder(data, n=7)
    ds = open_dataset(f"folder:{data}")
    explain_dataset(CenterMethod(adapter), ds, tmp_path / "full.h5", batch_size=2, progress=False, workers=0)
    out = tmp_path / "cut.h5"
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(CenterMethod(adapter, fail_after=2), ds, out, batch_size=2, progress=False, workers=2)
    for path, _ in ds.files[:4]:  # the two committed batches
        path.write_bytes(b"gone")
    method = CenterMethod(adapter)
    summary = explain_dataset(method, ds, out, batch_size=2, progress=False, workers=2)
    assert summary.written == 3 and method.calls == 2
    full, resumed = contents(tmp_path / "full.h5"), contents(out)
    assert full.keys() == resumed.keys()
    for key, value in full.items():
        np.testing.assert_array_equal(value, resumed[key], err_msg=key)


def test_a_shard_decodes_only_its_own_images(adapter, tmp_path, monkeypatch):
    """Rank 1 of 2 explains images 2–3 and 6 of 7 (batch 2, rounds of 4): every other image is broken."""
    import explainers.explain as explain_module

    data = make_folder(tmp_path / "data", n=7)
    ds = open_dataset(f"folder:{data}")
    for k, (path, _) in enumerate(ds.files):
        if k not in (2, 3, 6):
            path.write_bytes(b"someone else's")
    sent = []
    monkeypatch.setattr(explain_module, "current_shard", lambda: Shard(rank=1, world_size=2))
    monkeypatch.setattr(explain_module, "broadcast_from_main", lambda obj, shard: ("ok", []))
    monkeypatch.setattr(explain_module, "gather_to_main", lambda obj, shard: sent.append(obj))
    monkeypatch.setattr(explain_module, "barrier", lambda shard: None)
    method = get_method("raw-attention", adapter)
    assert explain_dataset(method, ds, tmp_path / "m.h5", batch_size=2, progress=False, workers=2) is None
    assert [p.ids if p else None for p in sent] == [ds.ids[2:4], ds.ids[6:7]]
    assert not (tmp_path / "m.h5").exists()  # only the main process writes


def test_evaluate_is_the_same_with_workers(adapter, tmp_path):
    from explainers.metrics import evaluate_maskfiles

    voc = open_dataset(f"voc:{make_voc(tmp_path / 'voc', n=5)}")
    maps = tmp_path / "m.h5"
    explain_dataset(get_method("raw-attention", adapter), voc, maps, batch_size=2, progress=False, workers=0)
    metrics = "pos,neg,deletion,miou"
    results = [
        evaluate_maskfiles(adapter, voc, [maps], metrics, batch_size=2, progress=False, workers=w) for w in (0, 2)
    ]
    a, b = (r.files[0] for r in results)
    assert a.ids == b.ids == voc.ids
    for name in a.per_image:
        np.testing.assert_array_equal(a.per_image[name], b.per_image[name])


# ------------------------------------------------------------------------------------------ readers
def test_labels_without_decoding(tmp_path, monkeypatch):
    from explainers.data.synthetic import SyntheticConfig, generate_synthetic

    folder = make_folder(tmp_path / "folder", n=5, classes=("a", "b", "c"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat / "x.png")
    inet = tmp_path / "inet"
    inet.mkdir()
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(inet / name)
    (inet / "labels.txt").write_text("".join(f"{n} {v}\n" for n, v in zip(names, (7, 0, 999), strict=True)))
    generate_synthetic(tmp_path / "synth", SyntheticConfig(train_size=0, val_size=0, test_size=6), progress=False)
    make_imagenet_seg(tmp_path / "seg.mat", [(6, 5), (4, 4)])
    make_coco(tmp_path / "coco")
    (tmp_path / "own" / "images").mkdir(parents=True)
    (tmp_path / "own" / "masks").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "own" / "images" / f"{name}.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "own" / "masks" / f"{name}.png")
    (tmp_path / "own" / "labels.txt").write_text("a 2\nb 0\nc 5\n")
    specs = {
        f"folder:{folder}": [0, 0, 1, 1, 2],  # class by class, as the folder reader lists them
        f"folder:{flat}": [-1],
        f"imagenet-val:{inet}": [7, 0, 999],
        f"synthetic:{tmp_path / 'synth'}": None,  # compared with the decoded samples below
        f"voc:{make_voc(tmp_path / 'voc', n=3)}": [-1, -1, -1],
        f"coco:{tmp_path / 'coco'}": [-1, -1],  # the image without instances is left out
        f"imagenet-seg:{tmp_path / 'seg.mat'}": [-1, -1],
        f"masks:{tmp_path / 'own'}": [2, 0, 5],
    }
    decoded = {spec: [s.label for s in open_dataset(spec)] for spec in specs}
    no_decoding(monkeypatch)
    for spec, expected in specs.items():
        ds = open_dataset(spec)
        labels = ds.labels
        assert ds.labels_without_decoding, spec
        assert labels.dtype == np.int64 and labels.tolist() == decoded[spec], spec
        assert expected is None or labels.tolist() == expected, spec
        assert [ds.label_of(i) for i in range(len(ds))] == decoded[spec] and ds.label_of(-1) == decoded[spec][-1]
        with pytest.raises(IndexError):
            ds.label_of(len(ds))


def test_base_labels_decode_when_a_reader_has_no_shortcut(tmp_path):
    ds = ListDataset([Sample(torch.rand(3, 4, 4), label, None, str(label)) for label in (3, -1, 0)])
    assert ds.labels.tolist() == [3, -1, 0] and ds.label_of(1) == -1
    assert not ds.labels_without_decoding  # so evaluate does not read all labels up front
    make_imagenet_seg(tmp_path / "seg.mat", [(4, 4)])
    assert open_dataset(f"imagenet-seg:{tmp_path / 'seg.mat'}").labels_without_decoding
    assert open_dataset(f"folder:{make_folder(tmp_path / 'f', n=2)}").labels_without_decoding


def test_every_reader_survives_pickling(tmp_path):
    """Where workers are spawned (macOS, Windows) the dataset is pickled into each of them."""
    make_imagenet_seg(tmp_path / "seg.mat", [(6, 5), (4, 4)])
    specs = [
        f"folder:{make_folder(tmp_path / 'folder', n=3)}",
        f"voc:{make_voc(tmp_path / 'voc', n=2)}",
        f"imagenet-seg:{tmp_path / 'seg.mat'}",
    ]
    for spec in specs:
        ds = open_dataset(spec)
        ds[0]  # an open HDF5 handle must not travel
        copy = pickle.loads(pickle.dumps(ds))
        a, b = ds[1], copy[1]
        assert a.id == b.id and torch.equal(a.image, b.image) and a.label == b.label, spec


def test_hdf5_reader_in_forked_workers(tmp_path):
    from explainers.data.imagenet_seg import ImageNetSegDataset

    class WhoOpened(ImageNetSegDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            sample.id = f"{self._file_pid}:{os.getpid()}"
            return sample

    make_imagenet_seg(tmp_path / "seg.mat", [(6, 5), (4, 4), (5, 7), (6, 6)])
    ds = WhoOpened(tmp_path / "seg.mat")
    ds[0]  # opened here before the workers fork: each must open its own handle
    batches = [[0, 1], [2, 3], [1, 2]]
    reference = batches_of(BatchLoader(ds, batches, (8, 8), workers=0))
    forked = batches_of(BatchLoader(ds, batches, (8, 8), workers=2))
    opened_by, read_by = zip(*(i.split(":") for b in forked for i in b[2]), strict=True)
    assert opened_by == read_by and str(os.getpid()) not in read_by
    assert_same_batches([b[:2] + b[3:] for b in forked], [b[:2] + b[3:] for b in reference])


def test_spawned_workers_work_too(folder, monkeypatch):
    """The start method of platforms without fork (slow to start: one worker)."""
    ds = open_dataset(f"folder:{folder}")
    batches = [[0, 1, 2], [3, 4], [5, 6]]
    reference = batches_of(BatchLoader(ds, batches, (16, 16), workers=0))
    monkeypatch.setattr(loader_module, "worker_context", lambda: multiprocessing.get_context("spawn"))
    assert_same_batches(batches_of(BatchLoader(ds, batches, (16, 16), workers=1)), reference)


def test_a_worker_is_silent_only_when_the_main_process_went_away_mid_hand_over(capsys):
    from explainers.data.loader import _quiet_when_main_process_is_gone

    for error in (ConnectionResetError("peer gone"), BrokenPipeError("pipe gone"), EOFError()):
        _quiet_when_main_process_is_gone(type(error), error, None)
    assert capsys.readouterr().err == ""
    _quiet_when_main_process_is_gone(ValueError, ValueError("a real bug"), None)
    assert "ValueError: a real bug" in capsys.readouterr().err
