"""Mask files (SPEC §7): one HDF5 file of attribution maps per method × dataset run.

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

Writing is crash-safe in the sense that matters: rows go to ``FILE.partial``; ``count`` is updated only
after a batch's rows are all written, so a rerun drops any half-written batch and continues after the last
committed row; only :meth:`MaskFileWriter.finalize` sets ``complete`` and renames ``FILE.partial`` to
``FILE``. A file named ``FILE`` is therefore always complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from explainers.errors import ExplainersError

FORMAT = "explainers-maskfile"
FORMAT_VERSION = 1
CORE_DATASETS = ("maps", "ids", "labels", "predicted", "explained")
_INT_DATASETS = ("labels", "predicted", "explained")
# The attributes that say what a file holds; a resumed run must match them all.
_IDENTITY = ("method", "method_config", "explainee", "image_size", "dataset", "targets", "maps_dtype")


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


class MaskFileWriter:
    """Write (or resume writing) a mask file.

    ``resume=True`` continues an existing ``FILE.partial`` written for the same method, method config,
    explainee, image size, dataset, class mode and dtype (anything else is refused with the differences
    listed); ``resume=False`` discards it and starts over. An existing complete ``FILE`` is refused unless
    ``overwrite=True``, which also starts over; the old ``FILE`` is replaced only when the new file is
    finalised.
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
        from explainers import __version__

        if dtype not in ("float32", "float16"):
            raise MaskFileError(f"mask file dtype must be float32 or float16, got {dtype!r}")
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.dtype = dtype
        self.chunk_images = max(1, int(chunk_images))
        self.compression = compression
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
        if self.path.exists() and not overwrite:
            raise MaskFileError(
                f"{self.path} already exists and is complete; pass overwrite=True (--overwrite) to replace "
                "it, or choose another output file"
            )
        if self.path.is_dir():
            raise MaskFileError(
                f"mask file path {self.path} is a directory; pass a file name such as maps.h5"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: h5py.File | None = None
        if self.partial.exists() and resume and not overwrite:
            self._file = self._open_existing(identity)
        else:
            if self.partial.exists():
                self.partial.unlink()
            self._file = h5py.File(self.partial, "w")
            attrs = self._file.attrs
            attrs["format"] = FORMAT
            attrs["format_version"] = FORMAT_VERSION
            for key in identity:
                attrs[key] = identity[key]
            attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            attrs["library_version"] = __version__
            attrs["count"] = 0
            attrs["complete"] = False
            self._create_core()
            self._file.flush()
        self._ids: list[str] = [_attr_str(s) for s in self._file["ids"][:]]
        self._done = set(self._ids)

    # ------------------------------------------------------------------ opening
    def _open_existing(self, identity: dict[str, str]) -> h5py.File:
        try:
            f = h5py.File(self.partial, "r+")
        except OSError as exc:
            raise MaskFileError(
                f"cannot resume {self.partial}: the file is damaged ({exc}); delete it or rerun with "
                "--no-resume / --overwrite to start over"
            ) from None
        try:
            if _attr_str(f.attrs.get("format", "")) != FORMAT:
                raise MaskFileError(
                    f"{self.partial} is not an explainers mask file; delete it or choose another output"
                )
            diffs = [k for k in identity if _attr_str(f.attrs.get(k, "")) != identity[k]]
            if diffs:
                details = "; ".join(
                    f"{k}: file has {_attr_str(f.attrs.get(k, ''))[:80]!r}, this run {identity[k][:80]!r}"
                    for k in diffs
                )
                raise MaskFileError(
                    f"cannot resume {self.partial}: it was written for a different run ({details}). "
                    "Rerun with the same settings, or pass --overwrite (overwrite=True) to start over"
                )
            # Drop rows of a batch that was being written when the run stopped (not yet committed).
            count = int(f.attrs["count"])
            for name in f:
                if f[name].shape[0] != count:
                    f[name].resize(count, axis=0)
            f.flush()
        except BaseException:
            f.close()
            raise
        return f

    def _create_core(self) -> None:
        f = self._file
        assert f is not None
        h, w = self.image_size
        f.create_dataset(
            "maps",
            shape=(0, h, w),
            maxshape=(None, h, w),
            dtype=self.dtype,
            chunks=(self.chunk_images, h, w),
            compression=self.compression,
        )
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(256,))
        for name in _INT_DATASETS:
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="int64", chunks=(256,))

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
        """Append one batch of rows and commit it (``count`` moves only once every dataset is written)."""
        f = self._require_open()
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
        columns["ids"] = np.asarray(ids, dtype=object)
        for name, values in (("labels", labels), ("predicted", predicted), ("explained", explained)):
            arr = _to_numpy(values).astype(np.int64).reshape(-1)
            if arr.shape[0] != n:
                raise MaskFileError(f"{name}: expected {n} values, got {arr.shape[0]}")
            columns[name] = arr
        for name, values in (extras or {}).items():
            if name in CORE_DATASETS:
                raise MaskFileError(f"extra {name!r} clashes with a core mask-file dataset; rename it")
            arr = _to_numpy(values)
            if arr.ndim == 0 or arr.shape[0] != n:
                raise MaskFileError(
                    f"extra {name!r} must have one row per image ({n}), got shape {arr.shape}"
                )
            columns[name] = arr
        existing_extras = {k for k in f if k not in CORE_DATASETS}
        missing = existing_extras - set(columns)
        if missing:
            raise MaskFileError(
                f"extras {sorted(missing)} were written for earlier images but not for this batch"
            )
        start = self.count
        for name, arr in columns.items():
            if name not in f:
                if start > 0:
                    raise MaskFileError(
                        f"extra {name!r} appears only from image {start} on; earlier rows lack it"
                    )
                f.create_dataset(
                    name,
                    shape=(0, *arr.shape[1:]),
                    maxshape=(None, *arr.shape[1:]),
                    dtype=arr.dtype,
                    chunks=(max(1, min(1024, 2**20 // max(1, arr[:1].nbytes))), *arr.shape[1:]),
                )
            ds = f[name]
            if ds.shape[1:] != arr.shape[1:]:
                raise MaskFileError(
                    f"extra {name!r}: rows of shape {arr.shape[1:]}, earlier rows {ds.shape[1:]}"
                )
            ds.resize(start + n, axis=0)
            ds[start : start + n] = arr
        f.attrs["count"] = start + n  # the commit point
        f.flush()
        self._ids.extend(ids)
        self._done.update(ids)

    def set_attrs(self, **attrs: Any) -> None:
        """Extra file attributes (JSON-encoded unless str/int/float/bool)."""
        f = self._require_open()
        for key, value in attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else _canonical(value)

    def finalize(self, expected_ids: Sequence[str] | None = None) -> Path:
        """Mark the file complete and move it to its final name. ``expected_ids``: refuse unless exactly
        these ids (in this order) were written."""
        f = self._require_open()
        if expected_ids is not None and list(expected_ids) != self._ids:
            missing = [i for i in expected_ids if i not in self._done]
            raise MaskFileError(
                f"cannot finalise {self.partial}: {len(missing)} image(s) missing (e.g. {missing[:3]}) "
                "or out of order"
            )
        f.attrs["complete"] = True
        f.attrs["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.close()
        self._file = None
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without finalising (the partial file stays, ready to resume)."""
        if self._file is not None:
            self._file.close()
            self._file = None

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
            if any(self._file[k].shape[0] != n for k in self._file):
                raise MaskFileError(f"mask file {path} has datasets of different lengths; it is damaged")
        except MaskFileError:
            self._file.close()
            raise
        except (KeyError, ValueError) as exc:
            self._file.close()
            raise MaskFileError(
                f"mask file {path} has missing or malformed metadata ({exc}); it is damaged"
            ) from None

    def __len__(self) -> int:
        return len(self.ids)

    def maps(self, index: int | slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 maps: all (``None``), one (int), a slice, or any list of row indices (any order)."""
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
