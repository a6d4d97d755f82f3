"""Mask files (docs/file-formats.md): one HDF5 file of attribution maps per method × dataset run.

Layout (all datasets share the first axis, one row per image, in the order the images were explained)::

    maps       float32 [N, H, W]   (float16 if written with dtype="float16"; attribute maps_dtype says which)
    ids        utf-8 strings [N]    image identifiers from the dataset
    labels     int64 [N]            ground-truth class, -1 when unknown
    predicted  int64 [N]            the explainee's argmax on the clean image
    explained  int64 [N]            the class the map explains
    <extra>    any [N, ...]         per-method extras (e.g. LTE: selected_step, selected_score)

Attributes: ``format``, ``format_version``, ``method``, ``method_config`` (JSON), ``explainee`` (JSON from
``adapter.describe()``), ``image_size`` [H, W], ``dataset`` (the ``KIND:PATH`` spec), ``targets``
(``predicted`` or ``target``: the class convention the maps explain), ``maps_dtype``, ``created`` (ISO
time of the first write), ``library_version``, ``count`` (rows committed) and ``complete``. What the maps
were made with (:mod:`explainers.provenance`, absent in files of older versions): ``explainee_fingerprint``
(sha256 of the explainee's weights), ``dataset_info`` (JSON: spec, kind, resolved location, split, labelling
task, class names) and ``head`` (JSON: the linear head explained when it is not the explainee's own
classifier — LETA with ``--head`` — with its and the encoder's fingerprints; ``null`` otherwise).

Every numeric dataset carries HDF5's Fletcher-32 checksum filter, so a chunk damaged by a crash fails to read
rather than reading as zeros.

Writing is crash-safe in the sense that matters:

* rows go to ``FILE.partial``; ``count`` is updated (and the file flushed) only after a batch's rows are
  all written, so a rerun continues after the last committed row;
* every write is flushed and checked: a failed write (a full disk, a quota) raises
  :class:`~explainers.errors.OutputError` at once rather than surfacing as "Exception ignored" when HDF5
  objects are garbage-collected;
* only :meth:`MaskFileWriter.finalize` marks the file ``complete``, after reading every row back and
  comparing it with what was written, and then renames ``FILE.partial`` to ``FILE``. A file named ``FILE``
  is therefore always complete and intact;
* a resumed run copies the committed rows of ``FILE.partial`` into a fresh file, reading each of them: an
  HDF5 file cut by a crash at any byte is recovered up to its last readable committed batch, or, if
  nothing of it can be read, started over with a warning — never a crash;
* one run at a time: the writer holds a lock file next to ``FILE`` (:mod:`explainers.io.lock`).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from explainers._version import __version__
from explainers.errors import ExplainersError, OutputError, redeliver_interrupt_later
from explainers.io.atomic import ensure_parent
from explainers.io.lock import OutputLock

log = logging.getLogger(__name__)

FORMAT = "explainers-maskfile"
FORMAT_VERSION = 1
CORE_DATASETS = ("maps", "ids", "labels", "predicted", "explained")
_INT_DATASETS = ("labels", "predicted", "explained")
# The attributes that say what a file holds; a resumed run must match them all.
_IDENTITY = ("method", "method_config", "explainee", "image_size", "dataset", "targets", "maps_dtype")
# h5py reports failed reads and writes as OSError or RuntimeError (flush/close on a full disk).
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)
_T = TypeVar("_T")


class MaskFileError(ExplainersError):
    """A mask file that cannot be written, resumed or read."""


def partial_path(path: str | Path) -> Path:
    """Where an unfinished mask file lives: ``FILE.partial`` next to ``FILE``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_reason(exc: BaseException) -> str:
    """The operating system's words inside HDF5's long messages (``No space left on device``)."""
    text = str(exc)
    found = re.search(r"error message = '([^']+)'", text)
    if found:
        return found.group(1)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _silent_hook(unraisable: Any) -> None:
    """Drop h5py's "Exception ignored" reports, except a swallowed Ctrl-C, which is delivered again."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        redeliver_interrupt_later()


@contextlib.contextmanager
def _quiet_unraisable() -> Iterator[None]:
    """Closing an HDF5 file after a failed write makes h5py's destructors print "Exception ignored"
    tracebacks; the failure has already been reported as one clear error, so silence them."""
    previous = sys.unraisablehook
    sys.unraisablehook = _silent_hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


class _WriteThrough(io.RawIOBase):
    """The file under an HDF5 file being written (h5py's ``fileobj`` driver).

    Why not let HDF5 open the path itself: HDF5 handles a failed write (a full disk) badly. The error
    often surfaces only as "Exception ignored" from an h5py destructor, the file cannot be closed any
    more, and the process may crash later (a segfault at exit). Here the first failed write is recorded
    in :attr:`error` and every later write is dropped while HDF5 is told they succeeded, so HDF5 never
    enters its error paths and can still close; the writer checks :attr:`error` after every operation
    and fails the run with one clear message. What is on disk is then unusable beyond the last
    committed batch, which a resumed run reads defensively."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__()
        self._fh = open(path, mode, buffering=0)  # noqa: SIM115  (closed in close())
        #: The first failed write, or None.
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._fh.readinto(buffer)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # unbuffered writes may be short just before the disk fills
                    written = self._fh.write(view[done:])
                    if not written:
                        raise OSError(28, "No space left on device")
                    done += written
            except OSError as exc:
                self.error = exc
        return len(view)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._fh.truncate(size)
            except OSError as exc:
                self.error = exc
        return self._fh.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered; close() syncs

    def close(self) -> None:
        if not self.closed:
            try:
                if self.error is None:
                    os.fsync(self._fh.fileno())
            finally:
                with contextlib.suppress(OSError):
                    self._fh.close()
                super().close()


class _Digests:
    """Running hashes of each dataset's rows, to check a file reads back as it was written."""

    def __init__(self) -> None:
        self._hashes: dict[str, Any] = {}

    def update(self, name: str, values: np.ndarray, dtype: np.dtype) -> None:
        h = self._hashes.setdefault(name, hashlib.blake2b(digest_size=16))
        if name == "ids":
            for value in values:
                h.update(_attr_str(value).encode("utf-8") + b"\0")
        elif np.dtype(dtype).kind in "biufc":
            h.update(np.ascontiguousarray(values, dtype=dtype).tobytes())

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self._hashes.items()}


class MaskFileWriter:
    """Write (or resume writing) a mask file.

    ``resume=True`` continues an existing ``FILE.partial`` written for the same method, method config,
    explainee, image size, dataset, class mode and dtype (anything else is refused with the differences
    listed); ``resume=False`` discards it and starts over. An existing complete ``FILE`` is refused unless
    ``overwrite=True``, which also starts over; the old ``FILE`` is replaced only when the new file is
    finalised. While open, the writer holds ``FILE``'s lock: a second writer of the same file (another
    process, or this one) is refused with :class:`OutputError`. Failed writes raise :class:`OutputError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        method: str,
        method_config: Mapping[str, Any],
        explainee: Mapping[str, Any],
        image_size: Sequence[int],
        dataset: str,
        targets: str = "predicted",
        dtype: str = "float32",
        resume: bool = True,
        overwrite: bool = False,
        chunk_images: int = 16,
        compression: str | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise MaskFileError(f"mask file dtype must be float32 or float16, got {dtype!r}")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.dtype = dtype
        self.chunk_images = max(1, int(chunk_images))
        self.compression = compression
        self._version = __version__
        self._file: h5py.File | None = None
        self._sink: _WriteThrough | None = None
        self._ids: list[str] = []
        self._done: set[str] = set()
        self._digests = _Digests()
        #: Warnings about this run's start (a damaged partial file recovered or started over).
        self.notes: list[str] = []
        identity = {
            "method": method,
            "method_config": _canonical(dict(method_config)),
            "explainee": _canonical(dict(explainee)),
            "image_size": _canonical(list(self.image_size)),
            "dataset": dataset,
            "targets": targets,
            "maps_dtype": dtype,
        }
        # What the maps are made with (explainee weights, dataset, head): a resumed run must match it too.
        identity.update(
            {k: v if isinstance(v, str) else _canonical(v) for k, v in (provenance or {}).items()}
        )
        if self.path.is_dir():
            raise MaskFileError(
                f"mask file path {self.path} is a directory; pass a file name such as maps.h5"
            )
        if self.path.exists() and not overwrite:
            raise MaskFileError(
                f"{self.path} already exists and is complete; pass overwrite=True (--overwrite) to replace "
                "it, or choose another output file"
            )
        ensure_parent(self.path)
        self._lock = OutputLock(self.path).acquire()
        try:
            if self.partial.exists() and resume and not overwrite:
                self._resume(identity)
            else:
                self._start(identity)
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------------ guarded HDF5 calls
    def _guard(self, what: str, call: Callable[[], _T]) -> _T:
        """Run an HDF5 write; a failure becomes one :class:`OutputError` and closes the file."""
        previous = sys.unraisablehook
        sys.unraisablehook = _silent_hook  # write errors inside h5py destructors: see _WriteThrough
        try:
            try:
                result = call()
            except _H5_ERRORS as exc:
                reason = _h5_reason(exc)
            else:
                sink = self._sink
                if sink is None or sink.error is None:
                    return result
                reason = _h5_reason(sink.error)
        finally:
            sys.unraisablehook = previous
        # Outside the handler, so the failed call's frames (holding h5py objects) are already released.
        self._abandon()
        raise OutputError(
            f"cannot write {self.path} ({what}): {reason}. Nothing was written under {self.path}; "
            "free space or choose another output, then rerun the same command to resume"
        )

    def _abandon(self) -> None:
        """Close the file without finalising (quietly: it may be in a failed state) and unlock."""
        f, self._file = self._file, None
        sink, self._sink = self._sink, None
        if f is not None:
            with _quiet_unraisable(), contextlib.suppress(*_H5_ERRORS):
                f.close()
            del f
        if sink is not None:
            sink.close()
        self._lock.release()

    def _open_for_writing(self, where: Path, mode: str) -> h5py.File:
        """Open ``where`` through a :class:`_WriteThrough` (``mode``: ``w`` or ``r+``) as the current file."""
        sink = _WriteThrough(where, "w+b" if mode == "w" else "r+b")
        try:
            f = h5py.File(sink, mode)
        except BaseException:
            sink.close()
            raise
        self._file, self._sink = f, sink
        return f

    def _close_file(self) -> None:
        """Close the current file cleanly (flushed and synced); failures become :class:`OutputError`."""

        def close() -> None:
            assert self._file is not None and self._sink is not None
            self._file.close()
            self._sink.close()

        self._guard("closing the file", close)
        self._file, self._sink = None, None

    # ------------------------------------------------------------------ opening
    def _start(self, identity: dict[str, str]) -> None:
        def create() -> h5py.File:
            self.partial.unlink(missing_ok=True)
            f = self._open_for_writing(self.partial, "w")
            self._init_attrs(f, identity, datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self._create_core(f)
            f.flush()
            return f

        self._guard("creating the file", create)
        self._ids, self._done, self._digests = [], set(), _Digests()

    def _init_attrs(self, f: h5py.File, identity: Mapping[str, str], created: str) -> None:
        attrs = f.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        for key in identity:
            attrs[key] = identity[key]
        attrs["created"] = created
        attrs["library_version"] = self._version
        attrs["count"] = 0
        attrs["complete"] = False

    def _restart(self, identity: dict[str, str], why: str) -> None:
        note = (
            f"{self.partial} could not be read ({why}), probably cut short by a crash; starting it over"
        )
        log.warning("%s", note)
        self.notes.append(note)
        self._start(identity)

    def _resume(self, identity: dict[str, str]) -> None:
        """Copy the committed, readable rows of ``FILE.partial`` into a fresh file and continue it."""
        try:
            src = h5py.File(self.partial, "r")
        except _H5_ERRORS as exc:
            return self._restart(identity, _h5_reason(exc))
        try:
            try:
                attrs = {k: src.attrs[k] for k in src.attrs}
            except _H5_ERRORS as exc:
                src.close()
                return self._restart(identity, _h5_reason(exc))
            if _attr_str(attrs.get("format", "")) != FORMAT:
                raise MaskFileError(
                    f"{self.partial} is not an explainers mask file; delete it or choose another output"
                )
            diffs = [k for k in identity if _attr_str(attrs.get(k, "")) != identity[k]]
            if diffs:
                details = "; ".join(
                    f"{k}: file has {_attr_str(attrs.get(k, ''))[:80]!r}, this run {identity[k][:80]!r}"
                    for k in diffs
                )
                raise MaskFileError(
                    f"cannot resume {self.partial}: it was written for a different run ({details}). "
                    "Rerun with the same settings, or pass --overwrite (overwrite=True) to start over"
                )
            created = _attr_str(attrs.get("created", ""))
            committed = int(attrs.get("count", 0))
            rebuild = self.partial.with_name(self.partial.name + ".rebuild")
            self._start_at(rebuild, identity, created)
            recovered = self._copy_committed(src, committed)
        finally:
            with _quiet_unraisable(), contextlib.suppress(*_H5_ERRORS):
                src.close()
        self._close_file()
        os.replace(rebuild, self.partial)
        self._guard("reopening the file", lambda: self._open_for_writing(self.partial, "r+"))
        if recovered < committed:
            note = (
                f"{self.partial} was damaged by the interruption: recovered {recovered} of its {committed} "
                "committed images; the rest will be explained again"
            )
            log.warning("%s", note)
            self.notes.append(note)

    def _start_at(self, where: Path, identity: dict[str, str], created: str) -> None:
        def create() -> h5py.File:
            where.unlink(missing_ok=True)
            f = self._open_for_writing(where, "w")
            self._init_attrs(f, identity, created or datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self._create_core(f)
            return f

        self._guard("recovering the partial file", create)

    def _copy_committed(self, src: h5py.File, committed: int) -> int:
        """Copy rows ``[0, committed)`` block by block until a block cannot be read; returns the rows
        copied. Every row is read, so damage anywhere in the committed part is noticed here."""
        try:
            names = list(src)
            extras = [n for n in names if n not in CORE_DATASETS]
            if any(n not in names for n in CORE_DATASETS):
                return 0
        except _H5_ERRORS:
            return 0
        block = self.chunk_images
        done = 0
        while done < committed:
            stop = min(committed, done + block)
            try:
                columns = {n: src[n][done:stop] for n in (*CORE_DATASETS, *extras)}
                if any(len(v) != stop - done for v in columns.values()):
                    break
                ids = [_attr_str(v) for v in columns.pop("ids")]
            except (*_H5_ERRORS, UnicodeDecodeError):
                break
            if columns["maps"].shape[1:] != self.image_size:
                break
            extra_cols = {n: columns.pop(n) for n in extras}
            self._write_rows(ids, columns, extra_cols)
            done = stop
        return done

    def _create_core(self, f: h5py.File) -> None:
        h, w = self.image_size
        f.create_dataset(
            "maps",
            shape=(0, h, w),
            maxshape=(None, h, w),
            dtype=self.dtype,
            chunks=(self.chunk_images, h, w),
            compression=self.compression,
            fletcher32=True,  # a chunk damaged by a crash fails to read instead of reading as zeros
        )
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(256,))
        for name in _INT_DATASETS:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,), fletcher32=True)

    # ------------------------------------------------------------------ state
    @property
    def count(self) -> int:
        """Rows committed so far."""
        return len(self._ids)

    @property
    def done_ids(self) -> set[str]:
        """Ids already written (a rerun skips them)."""
        return set(self._done)

    # ------------------------------------------------------------------ writing
    def append(
        self,
        ids: Sequence[str],
        maps: np.ndarray | Any,
        labels: Sequence[int] | np.ndarray | Any,
        predicted: Sequence[int] | np.ndarray | Any,
        explained: Sequence[int] | np.ndarray | Any,
        extras: Mapping[str, np.ndarray | Any] | None = None,
    ) -> None:
        """Append one batch of rows and commit it (``count`` moves only once every dataset is written
        and flushed)."""
        self._require_open()
        ids = [str(i) for i in ids]
        n = len(ids)
        maps_np = _to_numpy(maps).astype(np.float32, copy=False)
        if maps_np.shape != (n, *self.image_size):
            raise MaskFileError(
                f"maps for {n} images must have shape {(n, *self.image_size)}, got {maps_np.shape}"
            )
        dup = [i for i in ids if i in self._done]
        if dup or len(set(ids)) != n:
            raise MaskFileError(
                f"image id(s) written twice to {self.partial}: {', '.join(dup[:5]) or 'within one batch'}"
            )
        columns: dict[str, np.ndarray] = {"maps": maps_np.astype(self.dtype)}
        for name, values in (("labels", labels), ("predicted", predicted), ("explained", explained)):
            arr = _to_numpy(values).astype(np.int64).reshape(-1)
            if arr.shape[0] != n:
                raise MaskFileError(f"{name}: expected {n} values, got {arr.shape[0]}")
            columns[name] = arr
        extra_cols: dict[str, np.ndarray] = {}
        for name, values in (extras or {}).items():
            if name in CORE_DATASETS:
                raise MaskFileError(f"extra {name!r} clashes with a core mask-file dataset; rename it")
            arr = _to_numpy(values)
            if arr.ndim == 0 or arr.shape[0] != n:
                raise MaskFileError(
                    f"extra {name!r} must have one row per image ({n}), got shape {arr.shape}"
                )
            extra_cols[name] = arr
        self._write_rows(ids, columns, extra_cols)

    def _write_rows(
        self, ids: list[str], columns: dict[str, np.ndarray], extras: dict[str, np.ndarray]
    ) -> None:
        f = self._require_open()
        n = len(ids)
        existing_extras = {k for k in f if k not in CORE_DATASETS}
        missing = existing_extras - set(extras)
        if missing:
            raise MaskFileError(
                f"extras {sorted(missing)} were written for earlier images but not for this batch"
            )
        start = self.count
        for name, arr in extras.items():
            if name in f:
                if f[name].shape[1:] != arr.shape[1:]:
                    raise MaskFileError(
                        f"extra {name!r}: rows of shape {arr.shape[1:]}, earlier rows {f[name].shape[1:]}"
                    )
            elif start > 0:
                raise MaskFileError(f"extra {name!r} appears only from image {start} on; earlier rows lack it")
        all_columns = {**columns, "ids": np.asarray(ids, dtype=object), **extras}

        def write() -> None:
            for name, arr in all_columns.items():
                if name not in f:
                    f.create_dataset(
                        name,
                        shape=(0, *arr.shape[1:]),
                        maxshape=(None, *arr.shape[1:]),
                        dtype=arr.dtype,
                        chunks=(max(1, min(1024, 2**20 // max(1, arr[:1].nbytes))), *arr.shape[1:]),
                        fletcher32=arr.dtype.kind in "biufc",
                    )
                ds = f[name]
                ds.resize(start + n, axis=0)
                ds[start : start + n] = arr
            f.flush()  # the rows reach the file before the commit point says they exist
            f.attrs["count"] = start + n  # the commit point
            f.flush()

        self._guard("writing images", write)
        for name, arr in all_columns.items():
            self._digests.update(name, arr, f[name].dtype)
        self._ids.extend(ids)
        self._done.update(ids)

    def set_attrs(self, **attrs: Any) -> None:
        """Extra file attributes (JSON-encoded unless str/int/float/bool)."""
        f = self._require_open()

        def write() -> None:
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else _canonical(value)
            f.flush()

        self._guard("writing attributes", write)

    def finalize(self, expected_ids: Sequence[str] | None = None) -> Path:
        """Check, mark complete and move the file to its final name. ``expected_ids``: refuse unless
        exactly these ids (in this order) were written.

        The file is closed and every row read back and compared with what was written before
        ``complete`` is set; only then is it renamed, so a file under the final name is intact."""
        f = self._require_open()
        if expected_ids is not None and list(expected_ids) != self._ids:
            missing = [i for i in expected_ids if i not in self._done]
            raise MaskFileError(
                f"cannot finalise {self.partial}: {len(missing)} image(s) missing (e.g. {missing[:3]}) "
                "or out of order"
            )
        del f
        self._close_file()
        problem = self._verify()
        if problem is not None:
            self._abandon()
            raise OutputError(
                f"cannot write {self.path}: the written file does not read back as written ({problem}); "
                "nothing was written under that name. Check the disk, then rerun with --no-resume"
            )

        def mark_complete() -> None:
            g = self._open_for_writing(self.partial, "r+")
            g.attrs["complete"] = True
            g.attrs["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            g.flush()

        self._guard("marking the file complete", mark_complete)
        self._close_file()

        def check_mark() -> None:
            with h5py.File(self.partial, "r") as g:
                if not bool(g.attrs["complete"]) or int(g.attrs["count"]) != self.count:
                    raise OSError("the completion mark does not read back")

        self._guard("checking the completion mark", check_mark)
        os.replace(self.partial, self.path)
        with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._lock.release()
        return self.path

    def _verify(self) -> str | None:
        """Read the closed partial file back: the commit counter, every dataset's length and contents
        against the digests of what was appended. Returns what is wrong, or None."""
        try:
            with h5py.File(self.partial, "r") as g:
                if int(g.attrs["count"]) != self.count:
                    return f"count {int(g.attrs['count'])}, written {self.count}"
                digests = _Digests()
                for name in g:
                    ds = g[name]
                    if ds.shape[0] != self.count:
                        return f"{name} has {ds.shape[0]} rows, written {self.count}"
                    for start in range(0, self.count, max(1, self.chunk_images)):
                        digests.update(name, ds[start : start + self.chunk_images], ds.dtype)
                if self.count and digests.hexdigests() != self._digests.hexdigests():
                    bad = sorted(
                        k for k, v in digests.hexdigests().items() if self._digests.hexdigests().get(k) != v
                    )
                    return f"{', '.join(bad)} differ"
        except (*_H5_ERRORS, UnicodeDecodeError) as exc:
            return _h5_reason(exc)
        return None

    def close(self) -> None:
        """Close without finalising (the partial file stays, ready to resume) and release the lock."""
        if self._file is not None:
            self._close_file()
        self._lock.release()

    def _require_open(self) -> h5py.File:
        if self._file is None:
            raise MaskFileError(f"mask file writer for {self.path} is closed")
        return self._file

    def __enter__(self) -> MaskFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


class MaskFile:
    """Read a complete mask file. Maps are read lazily (:meth:`maps`, :meth:`iter_maps`); metadata eagerly."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.path = path
        if path.name.endswith(".partial") or (not path.exists() and partial_path(path).exists()):
            target = path.with_name(path.name[: -len(".partial")]) if path.name.endswith(".partial") else path
            raise MaskFileError(
                f"mask file {target} is incomplete (only {target.name}.partial exists): rerun the explain "
                "command with the same arguments to resume it"
            )
        if not path.exists():
            raise MaskFileError(f"mask file not found: {path}")
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise MaskFileError(f"cannot read mask file {path}: not a readable HDF5 file ({exc})") from None
        try:
            attrs = self._file.attrs
            if _attr_str(attrs.get("format", "")) != FORMAT:
                raise MaskFileError(f"{path} is not an explainers mask file (no format={FORMAT!r} attribute)")
            if not bool(attrs.get("complete", False)):
                raise MaskFileError(
                    f"mask file {path} is marked incomplete: rerun the explain command with the same "
                    "arguments"
                )
            missing = [d for d in CORE_DATASETS if d not in self._file]
            if missing:
                raise MaskFileError(f"mask file {path} lacks dataset(s) {', '.join(missing)}; it is damaged")
            self.method: str = _attr_str(attrs["method"])
            self.method_config: dict = json.loads(_attr_str(attrs["method_config"]))
            self.explainee: dict = json.loads(_attr_str(attrs["explainee"]))
            self.image_size: tuple[int, int] = tuple(json.loads(_attr_str(attrs["image_size"])))  # type: ignore[assignment]
            self.dataset: str = _attr_str(attrs["dataset"])
            self.targets: str = _attr_str(attrs["targets"])
            self.maps_dtype: str = _attr_str(attrs["maps_dtype"])
            self.created: str = _attr_str(attrs["created"])
            self.library_version: str = _attr_str(attrs["library_version"])
            # Provenance (None where a file of an older version did not record it).
            fp = attrs.get("explainee_fingerprint")
            self.explainee_fingerprint: str | None = None if fp is None else _attr_str(fp)
            info = attrs.get("dataset_info")
            self.dataset_info: dict | None = None if info is None else json.loads(_attr_str(info))
            self.has_head_record: bool = "head" in attrs
            self.head: dict | None = json.loads(_attr_str(attrs["head"])) if self.has_head_record else None
            self.ids: list[str] = [_attr_str(s) for s in self._file["ids"][:]]
            self.labels: np.ndarray = self._file["labels"][:]
            self.predicted: np.ndarray = self._file["predicted"][:]
            self.explained: np.ndarray = self._file["explained"][:]
            self.extras: list[str] = sorted(k for k in self._file if k not in CORE_DATASETS)
            n = len(self.ids)
            if any(len(self._file[k].shape) == 0 or self._file[k].shape[0] != n for k in self._file):
                raise MaskFileError(f"mask file {path} has datasets of different lengths; it is damaged")
            maps = self._file["maps"]
            if maps.shape[1:] != tuple(self.image_size) or maps.dtype.kind != "f":
                raise MaskFileError(
                    f"mask file {path}: maps are {maps.dtype} of shape {maps.shape}, but the file says "
                    f"{n} float maps of {self.image_size[0]}×{self.image_size[1]}; it is damaged"
                )
            if "count" in attrs and int(attrs["count"]) != n:
                raise MaskFileError(
                    f"mask file {path} says it holds {int(attrs['count'])} images but has {n}; it is damaged"
                )
        except MaskFileError:
            self._file.close()
            raise
        except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
            self._file.close()
            raise MaskFileError(
                f"mask file {path} has missing or malformed metadata ({_h5_reason(exc)}); it is damaged"
            ) from exc

    def __len__(self) -> int:
        return len(self.ids)

    def maps(self, index: int | slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 maps: all (``None``), one (int), a slice, or any list of row indices (any order)."""
        try:
            return self._read_maps(index)
        except (OSError, RuntimeError) as exc:
            raise MaskFileError(f"cannot read the maps of {self.path}: {_h5_reason(exc)}; the file is damaged") from exc

    def _read_maps(self, index: int | slice | Sequence[int] | np.ndarray | None) -> np.ndarray:
        ds = self._file["maps"]
        if index is None:
            out = ds[:]
        elif isinstance(index, (int, np.integer, slice)):
            out = ds[index]
        else:
            rows = np.asarray(index, dtype=np.int64)
            if rows.size == 0:
                return np.zeros((0, *self.image_size), dtype=np.float32)
            if np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
                # The common case (a batch in file order): one contiguous read, no fancy indexing.
                return np.asarray(ds[int(rows[0]) : int(rows[0]) + rows.size], dtype=np.float32)
            # h5py wants increasing unique indices: read those, then put them back in the asked order.
            uniq, inverse = np.unique(rows, return_inverse=True)
            out = ds[uniq][inverse]
        return np.asarray(out, dtype=np.float32)

    def iter_maps(self, chunk: int = 64) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, maps[start:start+chunk])`` over the whole file."""
        for start in range(0, len(self), chunk):
            yield start, self.maps(slice(start, start + chunk))

    def extra(self, name: str) -> np.ndarray:
        if name not in self.extras:
            raise MaskFileError(
                f"mask file {self.path} has no extra {name!r}; it has: {', '.join(self.extras) or 'none'}"
            )
        return self._file[name][:]

    def describe(self) -> dict[str, Any]:
        """Metadata as a JSON-able dict (no maps)."""
        return {
            "path": str(self.path),
            "method": self.method,
            "method_config": self.method_config,
            "explainee": self.explainee,
            "image_size": list(self.image_size),
            "dataset": self.dataset,
            "targets": self.targets,
            "maps_dtype": self.maps_dtype,
            "created": self.created,
            "library_version": self.library_version,
            "explainee_fingerprint": self.explainee_fingerprint,
            "dataset_info": self.dataset_info,
            "head": self.head,
            "num_images": len(self),
            "extras": self.extras,
        }

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MaskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
