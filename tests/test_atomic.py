"""Atomic writes: the target is replaced only by a complete file, readable by everyone, and nothing is
left behind when writing fails."""

from __future__ import annotations

import stat

import pytest

from explainers.io.atomic import atomic_path, write_text_atomic


def test_write_replaces_the_file_world_readable(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
