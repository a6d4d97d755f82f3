"""Atomic file writes: a uniquely named temporary file beside the target, flushed to disk, checked and
only then renamed onto it, so a crash, a full disk or a concurrent writer never leaves a half-written file
under the real name. A write that fails raises :class:`~explainers.errors.OutputError` (one line for the
CLI) and removes the temporary file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from explainers.errors import OutputError, describe_os_error


def _is_write_error(exc: BaseException) -> bool:
    # safetensors reports I/O failures (a full disk) as its own SafetensorError, not OSError.
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"


def fsync_path(path: str | Path) -> None:
    """Push a file's data to the disk (so the rename that follows publishes complete contents)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_parent(path: str | Path) -> Path:
    """Create ``path``'s folder; a path that cannot hold files (a file in the way, no permission, a
    read-only system folder) is an :class:`OutputError`."""
    parent = Path(path).parent
    return ensure_folder(parent, f"the folder {parent} for {path}")


def ensure_folder(folder: str | Path, what: str) -> Path:
    """Create ``folder`` and its parents; one :class:`OutputError` line, naming it as ``what`` (e.g. "the
    PNG folder out/png"), when it cannot hold files (a file in the way, no permission, a read-only system
    folder)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what}: {describe_os_error(exc)}") from exc
    if not folder.is_dir():
        raise OutputError(f"cannot write into {what}: it is not a folder")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is flushed to disk, checked
    (``verify(tmp)`` may raise) and replaces ``path``; on any error it is removed. The result is
    world-readable (0644): ``mkstemp`` and safetensors create files owner-only, and what the library
    writes (weights, reports, configs) is meant to be shared."""
    path = Path(path)
    ensure_parent(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {describe_os_error(exc)}") from exc
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError(f"cannot write {path}: the writer produced no file")
            fsync_path(tmp)
            if verify is not None:
                verify(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OutputError:
            raise
        except Exception as exc:
            if _is_write_error(exc):
                raise OutputError(f"cannot write {path}: {describe_os_error(exc)}") from exc
            raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (read back and compared before the rename)."""

    def same(tmp: Path) -> None:
        if tmp.stat().st_size != len(data) or tmp.read_bytes() != data:
            raise OutputError(f"cannot write {path}: the written file does not read back as written")

    with atomic_path(path, verify=same) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_files_together(
    folder: str | Path, files: Mapping[str, bytes], *, last: str, stale: Sequence[str] = ()
) -> dict[str, Path]:
    """Write several files into ``folder`` as one unit: all of them or none.

    Every file is first written in full to a temporary name, flushed and read back; only when all are
    on disk is anything renamed, so a full disk or a write error leaves the folder as it was. ``last``
    marks a complete set: the old one is removed before the first rename and the new one renamed last,
    so a crash half-way through the renames leaves a set without its marker (visibly incomplete) rather
    than a mix of old and new files that looks complete. ``stale``: names of an older set to remove
    when this set lacks them (so a new report never sits beside an old plot)."""
    folder = Path(folder)
    if last not in files:
        raise ValueError(f"{last!r} must be one of the files written")
    ensure_folder(folder, f"the output folder {folder}")
    temps: dict[str, Path] = {}
    try:
        for name, data in files.items():
            try:
                fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
                temps[name] = Path(tmp_name)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise OutputError(
                    f"cannot write {folder / name}: {describe_os_error(exc)}; the folder was left as it was"
                ) from exc
            if temps[name].read_bytes() != data:
                raise OutputError(f"cannot write {folder / name}: the file does not read back as written")
        try:
            (folder / last).unlink(missing_ok=True)
            for name in stale:
                if name not in files:
                    (folder / name).unlink(missing_ok=True)
            for name in [n for n in files if n != last] + [last]:
                os.chmod(temps[name], 0o644)
                os.replace(temps[name], folder / name)
        except OSError as exc:
            raise OutputError(f"cannot write into {folder}: {describe_os_error(exc)}") from exc
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the renames durable where the OS allows it
        fsync_path(folder)
    return {name: folder / name for name in files}


__all__ = [
    "atomic_path",
    "ensure_parent",
    "fsync_path",
    "write_bytes_atomic",
    "write_files_together",
    "write_text_atomic",
]
