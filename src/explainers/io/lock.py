"""Output locks: one run at a time per output file or folder.

A lock is a small JSON file ``.NAME.lock`` next to the output ``NAME`` holding the owner's pid, host name
and process start time. It is created atomically (written under a temporary name, then hard-linked into
place, which fails if the lock exists), removed when the run ends, and recognised as stale — and taken
over — when it was left by a crashed run on this host (its pid is gone, or now belongs to a process that
started later). A lock held by a run on another host cannot be checked and is refused with its owner
named; delete it by hand once that run is certainly over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from explainers.errors import OutputError, describe_os_error


def lock_path(output: str | Path) -> Path:
    """The lock file guarding ``output``: ``.NAME.lock`` in the same folder (for ``.`` or ``/``, whose
    name is empty, ``.explainers.lock`` inside it)."""
    output = Path(os.path.abspath(output))
    if not output.name:
        return output / ".explainers.lock"
    return output.with_name(f".{output.name}.lock")


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot) from /proc, or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may itself contain spaces).
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owner_text(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('since', '?')}"


class OutputLock:
    """Hold the lock of ``output`` while the ``with`` block (or until :meth:`release`) runs.

    Raises :class:`OutputError` if another live run holds it."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._held = False

    def acquire(self) -> OutputLock:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _start_time(os.getpid()),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise OutputError(f"cannot write {self.output}: {describe_os_error(exc)}") from exc
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self._held = True
                    return self
                except FileExistsError:
                    owner = self._read_owner()
                    if owner is not None and not self._is_stale(owner):
                        raise OutputError(
                            f"{self.output} is being written by another run ({_owner_text(owner)}); wait "
                            f"for it to finish or choose another output. If that run is no longer "
                            f"running, delete {self.path}"
                        ) from None
                    # Stale (or unreadable: the writer died before the link, which cannot happen with
                    # link-based creation, so it is foreign debris): take it over.
                    self.path.unlink(missing_ok=True)
                except OSError as exc:
                    raise OutputError(f"cannot write {self.output}: {describe_os_error(exc)}") from exc
            raise OutputError(f"cannot take the lock {self.path}: other runs keep taking it")
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _read_owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    @staticmethod
    def _is_stale(owner: dict[str, Any]) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine
        try:
            pid = int(owner["pid"])
        except (KeyError, TypeError, ValueError):
            return True
        if not _pid_alive(pid):
            return True
        start = owner.get("start")
        # The pid was reused by a process started after the lock's owner: the owner is gone.
        return start is not None and _start_time(pid) not in (None, start)

    def release(self) -> None:
        if self._held:
            owner = self._read_owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["OutputLock", "lock_path"]
