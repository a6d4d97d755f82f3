"""Output locks: a live owner refuses a second writer; a crashed owner's lock is stale and taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from explainers.errors import OutputError
from explainers.io.lock import OutputLock, _start_time, lock_path


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_live_owner_refuses_and_release_frees(tmp_path):
    out = tmp_path / "maps.h5"
    with OutputLock(out):
        owner = json.loads(lock_path(out).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(OutputError, match=rf"being written by another run \(pid {os.getpid()}"):
            OutputLock(out).acquire()
    assert not lock_path(out).exists()
    OutputLock(out).acquire().release()


@pytest.mark.parametrize("owner", ["dead pid", "reused pid", "garbage"])
def test_a_stale_lock_is_taken_over(tmp_path, owner):
    out = tmp_path / "maps.h5"
    if owner == "dead pid":
        text = json.dumps({"pid": dead_pid(), "host": socket.gethostname()})
    elif owner == "reused pid":  # our parent is alive, but started at another time than the lock says
        if _start_time(os.getppid()) is None:
            pytest.skip("no /proc")
        text = json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "start": "1"})
    else:
        text = "{half a lock"
    lock_path(out).write_text(text)
    with OutputLock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused(tmp_path):
    out = tmp_path / "maps.h5"
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(OutputError, match=r"pid 1 on elsewhere.*delete .*\.maps\.h5\.lock"):
        OutputLock(out).acquire()
    assert lock_path(out).exists()
