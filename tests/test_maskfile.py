"""Mask files: round trip, float16, extras, resume after an interruption, refusal of foreign or
incomplete files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from explainers.io import MaskFile, MaskFileError, MaskFileWriter, partial_path

META = dict(
    method="m",
    method_config={"a": 1},
    explainee={"identifier": "x", "image_size": [4, 5]},
    image_size=(4, 5),
    dataset="list:1",
)


def rows(start, n, seed=0):
    rng = np.random.default_rng(seed + start)
    ids = [f"id{i}" for i in range(start, start + n)]
    return dict(
        ids=ids,
        maps=rng.random((n, 4, 5)).astype(np.float32),
        labels=np.arange(start, start + n),
        predicted=np.arange(n) % 2,
        explained=np.arange(n) % 3,
        extras={"selected_step": np.arange(start, start + n), "selected_score": rng.random(n)},
    )


def write_all(path, batches, **kw):
    w = MaskFileWriter(path, **{**META, **kw})
    for b in batches:
        w.append(**b)
    return w


def contents(path):
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def test_round_trip_and_lazy_reads(tmp_path):
    path = tmp_path / "m.h5"
    b1, b2 = rows(0, 3), rows(3, 2)
    w = write_all(path, [b1, b2])
    assert not path.exists() and partial_path(path).exists()
    w.finalize(expected_ids=[f"id{i}" for i in range(5)])
    assert path.exists() and not partial_path(path).exists()
    with MaskFile(path) as mf:
        assert len(mf) == 5 and mf.ids == [f"id{i}" for i in range(5)]
        assert mf.method == "m" and mf.method_config == {"a": 1} and mf.image_size == (4, 5)
        assert mf.explainee["identifier"] == "x" and mf.dataset == "list:1" and mf.maps_dtype == "float32"
        np.testing.assert_array_equal(mf.maps(), np.concatenate([b1["maps"], b2["maps"]]))
        np.testing.assert_array_equal(
            mf.maps([4, 0, 4]), np.stack([b2["maps"][1], b1["maps"][0], b2["maps"][1]])
        )
        chunks = list(mf.iter_maps(chunk=2))
        assert [s for s, _ in chunks] == [0, 2, 4] and chunks[-1][1].shape == (1, 4, 5)
        assert mf.extras == ["selected_score", "selected_step"]
        np.testing.assert_array_equal(mf.extra("selected_step"), np.arange(5))
        np.testing.assert_array_equal(mf.labels, np.arange(5))
        assert mf.library_version and mf.created
        with pytest.raises(MaskFileError, match="no extra"):
            mf.extra("nope")
    with h5py.File(path) as f:
        assert f["maps"].chunks is not None and f["maps"].maxshape[0] is None
        assert bool(f.attrs["complete"])


def test_float16(tmp_path):
    path = tmp_path / "h.h5"
    b = rows(0, 2)
    write_all(path, [b], dtype="float16").finalize()
    with MaskFile(path) as mf:
        assert mf.maps_dtype == "float16"
        assert mf.maps().dtype == np.float32
        np.testing.assert_allclose(mf.maps(), b["maps"], atol=1e-3)
    with h5py.File(path) as f:
        assert f["maps"].dtype == np.float16 and f.attrs["maps_dtype"] == "float16"


def test_resume_gives_the_same_file(tmp_path):
    batches = [rows(0, 3), rows(3, 3), rows(6, 1)]
    write_all(tmp_path / "full.h5", batches).finalize()

    path = tmp_path / "resumed.h5"
    w = write_all(path, batches[:1])
    w.close()  # interrupted
    with pytest.raises(MaskFileError, match=r"incomplete.*rerun the explain command"):
        MaskFile(path)
    with pytest.raises(MaskFileError, match="incomplete"):
        MaskFile(partial_path(path))
    w = MaskFileWriter(path, **META)
    assert w.done_ids == {"id0", "id1", "id2"} and w.count == 3
    # A crash in the middle of a batch: rows resized but the commit counter not moved.
    w.close()
    with h5py.File(partial_path(path), "r+") as f:
        for name in f:
            f[name].resize(5, axis=0)
    w = MaskFileWriter(path, **META)
    assert w.count == 3
    for b in batches[1:]:
        w.append(**b)
    w.finalize()
    full, resumed = contents(tmp_path / "full.h5"), contents(path)
    assert full.keys() == resumed.keys()
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k])


def test_resume_refuses_another_run(tmp_path):
    path = tmp_path / "m.h5"
    write_all(path, [rows(0, 2)]).close()
    with pytest.raises(MaskFileError, match=r"different run.*method_config"):
        MaskFileWriter(path, **{**META, "method_config": {"a": 2}})
    with pytest.raises(MaskFileError, match="explainee"):
        MaskFileWriter(path, **{**META, "explainee": {"identifier": "y"}})
    MaskFileWriter(path, **{**META, "explainee": {"identifier": "y"}}, overwrite=True).close()  # starts over
    write_all(path, [rows(0, 2)], resume=False).close()
    # resume=False starts over.
    w = MaskFileWriter(path, **{**META, "method_config": {"a": 2}}, resume=False)
    assert w.count == 0
    w.append(**rows(0, 1))
    w.finalize()
    with pytest.raises(MaskFileError, match=r"already exists.*overwrite"):
        MaskFileWriter(path, **META)
    w = MaskFileWriter(path, **META, overwrite=True)
    w.close()
    assert path.exists(), "the complete file stays until the new one is finalised"


def test_bad_appends(tmp_path):
    w = MaskFileWriter(tmp_path / "m.h5", **META)
    w.append(**rows(0, 2))
    with pytest.raises(MaskFileError, match="written twice"):
        w.append(**rows(1, 2))
    with pytest.raises(MaskFileError, match="shape"):
        w.append(**{**rows(5, 2), "maps": np.zeros((2, 3, 3))})
    b = rows(5, 2)
    b["extras"] = {"selected_step": b["extras"]["selected_step"]}
    with pytest.raises(MaskFileError, match="selected_score"):
        w.append(**b)
    with pytest.raises(MaskFileError, match="missing"):
        w.finalize(expected_ids=["id0", "id1", "id2"])
    w.close()


def test_reader_refuses_other_files(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(MaskFileError, match="not a readable HDF5"):
        MaskFile(tmp_path / "x.h5")
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["maps"] = np.zeros((1, 2, 2))
    with pytest.raises(MaskFileError, match="not an explainers mask file"):
        MaskFile(tmp_path / "y.h5")
    with pytest.raises(MaskFileError, match="not found"):
        MaskFile(tmp_path / "z.h5")
