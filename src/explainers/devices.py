"""Devices: what ``--device`` names mean, and how much memory a device has free.

``resolve_device(None)`` (or ``"auto"``) is this process's GPU when CUDA is available — ``cuda:LOCAL_RANK``
under ``torchrun``/``accelerate launch`` — else the CPU. A device that this machine does not have, or a
name that is no device at all, is a one-line :class:`DeviceError` instead of a CUDA traceback later.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from explainers.errors import ExplainersError

#: Names ``--device`` accepts, for error messages.
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(ExplainersError):
    """A device name that is not a device, or a device this machine does not have."""


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` to run on; see the module docstring. Refuses unusable devices (one line)."""
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    if isinstance(device, str):
        try:
            parsed = torch.device(device.strip())
        except (RuntimeError, ValueError):
            raise DeviceError(f"unknown device {device!r}; use {DEVICE_HELP}") from None
    else:
        parsed = torch.device(device)
    if parsed.type == "cpu":
        return torch.device("cpu")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            cuda = torch.version.cuda
            built = "without CUDA" if cuda is None else f"with CUDA {cuda}, but no GPU is visible"
            raise DeviceError(
                f"device {device!s} requested, but this machine cannot use CUDA (torch {torch.__version__} is built "
                f"{built}); use --device cpu"
            )
        count = torch.cuda.device_count()
        index = _local_rank() % count if parsed.index is None else parsed.index
        if not 0 <= index < count:
            raise DeviceError(
                f"device {device!s} requested, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {device!s} requested, but MPS is not available here; use --device cpu")
        return parsed
    if parsed.type == "meta":
        raise DeviceError("device 'meta' holds no data and cannot run models; use " + DEVICE_HELP)
    backend = getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return parsed
    raise DeviceError(f"device {device!s} is not available on this machine; use {DEVICE_HELP}")


# ------------------------------------------------------------------------------------------------- memory

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


class ByteSize(str):
    """Type of settings that hold a memory size: bytes (an int) or a number with a unit (``"4GiB"``).

    A marker for the config checks, which then pass the value through for :func:`parse_bytes` to judge."""


def parse_bytes(value: str | int | float) -> int:
    """``"4GiB"`` → 4294967296, ``"500MB"`` → 500000000, ``1e9``/``"1e9"`` → 1000000000 bytes."""
    if isinstance(value, bool):
        raise ExplainersError(f"memory size must be a number of bytes or e.g. '4GiB', got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if match is None or match.group(2).lower() not in _UNITS:
            raise ExplainersError(
                f"memory size {value!r} is not understood; give bytes or a number with a unit "
                "(e.g. 4GiB, 500MB, 2e9)"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ExplainersError(f"memory size must be positive, got {value!r}")
    return size


def format_bytes(size: float) -> str:
    """1536 → '1.5 KiB' (binary units, for messages)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def _available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def free_memory(device: torch.device | str) -> int | None:
    """Bytes this process could still allocate on ``device``: free GPU memory (``torch.cuda.mem_get_info``;
    memory cached by PyTorch's allocator counts as free), or available RAM on the CPU. None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        return _available_ram()
    return None
