"""``imagenet-seg:gtsegs_ijcv.mat``: the ImageNet-segmentation set (about 4,276 images with object masks).

The file is MATLAB v7.3, i.e. HDF5, read with h5py. ``/value/img`` is an N×1 array of object
references: image i is ``f[f['/value/img'][i, 0]]``, stored (3, W, H) → transposed to H×W×3 uint8.
``/value/gt`` is N×1 references to cells: mask i is ``f[f[f['/value/gt'][i, 0]][0, 0]]``, stored (W, H)
→ transposed to H×W, values {0, 1}. No class labels (label −1); ids are the zero-padded index (``00042``).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from explainers.data.base import Sample, UnlabelledDataset
from explainers.errors import DatasetError


def _check_mat(path: Path) -> None:
    """Refuse files h5py cannot read, telling a MATLAB v5 file (the pre-7.3 default) from a broken one."""
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 5.0 MAT-file") and not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path} is a MATLAB v5 .mat file, not v7.3 (HDF5); use the original gtsegs_ijcv.mat "
            "(v7.3) or re-save it in MATLAB with save(..., '-v7.3')"
        )
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path} is not a MATLAB v7.3 (HDF5) file (truncated or another format); download "
            "gtsegs_ijcv.mat again"
        )


class ImageNetSegDataset(UnlabelledDataset):
    """Images and ground-truth masks from ``gtsegs_ijcv.mat``; the HDF5 file is opened lazily per process."""

    def __init__(self, path: Path | str, split: str | None = None) -> None:
        if split is not None:
            raise DatasetError(f"imagenet-seg has no splits (got --split {split}); leave --split out")
        self.path = Path(path)
        if self.path.is_dir():
            candidate = self.path / "gtsegs_ijcv.mat"
            if not candidate.exists():
                raise DatasetError(f"{self.path} is a directory without gtsegs_ijcv.mat; pass the .mat file")
            self.path = candidate
        _check_mat(self.path)
        self.name = f"imagenet-seg:{self.path.resolve()}"
        self._file: h5py.File | None = None
        self._file_pid = os.getpid()
        f = self._h5()
        try:
            imgs, gts = f["/value/img"], f["/value/gt"]
        except KeyError:
            raise DatasetError(
                f"{self.path} has no /value/img and /value/gt: not the ImageNet-segmentation gtsegs_ijcv.mat"
            ) from None
        if imgs.shape[0] != gts.shape[0] or imgs.ndim != 2:
            raise DatasetError(
                f"{self.path}: /value/img {imgs.shape} and /value/gt {gts.shape} do not match "
                "(expected N×1 each)"
            )
        self._len = int(imgs.shape[0])

    def _h5(self) -> h5py.File:
        # A handle opened by another process (a DataLoader worker forked from the one that opened it) shares
        # HDF5 state with it: each process opens its own.
        if self._file is None or self._file_pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
                self._file_pid = os.getpid()
            except OSError as exc:
                raise DatasetError(
                    f"cannot open {self.path}: the file is truncated or damaged ({exc}); download it again"
                ) from None
        return self._file

    def __getstate__(self) -> dict:
        # h5py handles cannot cross process boundaries; reopen in the child.
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return self._len

    @property
    def ids(self) -> list[str]:
        return [f"{i:05d}" for i in range(self._len)]

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -self._len <= index < self._len:
            raise IndexError(index)
        index %= self._len
        f = self._h5()
        try:
            img = np.asarray(f[f["/value/img"][index, 0]])
            mask = np.asarray(f[f[f["/value/gt"][index, 0]][0, 0]])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DatasetError(
                f"{self.path}: cannot read image {index} ({exc}); the file is truncated or damaged"
            ) from None
        if img.ndim != 3 or img.shape[0] != 3:
            raise DatasetError(f"{self.path}: image {index} has shape {img.shape}, expected (3, W, H)")
        image = np.ascontiguousarray(img.transpose(2, 1, 0))  # (3, W, H) → (H, W, 3)
        gt = np.ascontiguousarray(mask.T)  # (W, H) → (H, W)
        if gt.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.path}: mask {index} is {gt.shape[0]}×{gt.shape[1]} but its image is "
                f"{image.shape[0]}×{image.shape[1]}"
            )
        tensor = torch.from_numpy(image.astype(np.uint8)).permute(2, 0, 1).float().div_(255.0)
        return Sample(image=tensor, label=-1, mask=torch.from_numpy(gt > 0), id=f"{index:05d}")
