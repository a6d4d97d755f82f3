"""An accelerator stand-in for CPU-only tests: real values on a device that is not the CPU.

``with emulated_device() as device: ...`` makes ``device`` (``meta``) behave like a GPU for the code under
test: ``.to(device)``, ``torch.zeros(..., device=device)`` and every op on such tensors compute on the CPU
and return tensors that *report* ``device`` (a ``__torch_dispatch__`` wrapper subclass holding the real CPU
tensor). Every op is checked before it runs: an op that receives both emulated-device tensors and plain CPU
tensors raises :class:`DeviceMixError` — stricter than CUDA, which lets 0-dim CPU tensors into elementwise
ops and CPU index tensors into indexing; both cost a host-device sync there, so the library avoids them too.

Why not ``FakeTensorMode`` alone (``torch._subclasses.fake_tensor``)? It creates ``cuda`` tensors on a CPU
build, but (a) its tensors have no values, so nothing that reads a value (``.item()``, a metric, an early
stop, boolean-mask indexing) can run; (b) ``.to("cuda")`` of an existing tensor fails on a CPU-only build
("not linked with support for cuda devices"), so a real model cannot be moved; (c) autograd's engine needs
a CUDA device guard and fails on ``backward``; (d) it lets mixes through that CUDA refuses (``torch.stack``
of a 0-dim CPU tensor with 0-dim CUDA ones). The ``meta`` device has a no-op device guard, so autograd,
``torch.func`` and optimisers all run on the wrapper; the values are the CPU's, so results can be compared
with a plain CPU run.

What it cannot see: CUDA-only code paths (``if device.type == "cuda"``: autocast, ``torch.cuda`` memory
queries, NCCL collectives), kernels that exist only on CUDA, numerical differences of GPU kernels, and
host-device synchronisation costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

#: The stand-in accelerator. ``meta`` is a real non-CPU device type with a no-op device guard.
EMULATED = torch.device("meta")


class DeviceMixError(RuntimeError):
    """An op received tensors on the emulated accelerator and on the CPU (would fail on a GPU)."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``inner``) that reports the emulated device."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> OnDevice:
        outer = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.size(),
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=EMULATED,
            requires_grad=inner.requires_grad,
        )
        outer.inner = inner
        return outer

    @property
    def is_meta(self) -> bool:  # type: ignore[override]
        # It has values: ``load_state_dict`` and friends must copy into it, not skip it as a meta tensor.
        return False

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


#: Ops that copy between devices on a GPU too (``param.copy_(cpu_tensor)`` in ``load_state_dict``).
_CROSS_DEVICE_OPS = {
    torch.ops.aten.copy_.default,
    torch.ops.aten._copy_from.default,
    torch.ops.aten._copy_from_and_resize.default,
    torch.ops.aten._to_copy.default,
}


def _is_emulated(device) -> bool:
    return device is not None and torch.device(device).type == EMULATED.type


def _sync_metadata(outer: OnDevice) -> None:
    """After an in-place op changed ``inner``'s shape (``squeeze_``, ``t_``...), give ``outer`` the same."""
    inner = outer.inner
    if outer.shape != inner.shape or outer.stride() != inner.stride():
        with torch._C._DisableTorchDispatch():  # the meta kernel: metadata only, no storage check
            outer.as_strided_(inner.size(), inner.stride(), inner.storage_offset())


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    on_device = [t for t in tensors if isinstance(t, OnDevice)]
    plain = [t for t in tensors if not isinstance(t, OnDevice)]
    leaked = [t for t in plain if t.device.type == EMULATED.type]
    if leaked:
        raise DeviceMixError(f"{func}: a {EMULATED.type} tensor without values was created outside the harness")
    if on_device and plain and func not in _CROSS_DEVICE_OPS:
        shapes = ", ".join(str(tuple(t.shape)) for t in plain)
        raise DeviceMixError(
            f"{func} got tensors on {EMULATED.type} (the accelerator) and on the CPU (shapes {shapes})"
        )
    target = kwargs.get("device")
    to_device = _is_emulated(target)
    if to_device:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    args_in, kwargs_in = tree_map(lambda x: x.inner if isinstance(x, OnDevice) else x, (args, kwargs))
    out = func(*args_in, **kwargs_in)
    # The result lives on the emulated device when an input did, or when it was asked for, unless the op
    # was a copy to another device (``.cpu()``).
    leaves_device = target is not None and not to_device
    if not (on_device or to_device) or leaves_device:
        return out
    schema = func._schema
    if schema.is_mutable:  # in-place or out=: return the caller's own objects, with updated shapes
        written = {}
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                obj = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
                if isinstance(obj, OnDevice):
                    _sync_metadata(obj)
                    written[frozenset(arg.alias_info.before_set)] = obj
        returns = [
            written.get(frozenset(r.alias_info.before_set)) if r.alias_info is not None else None
            for r in schema.returns
        ]
        if returns and all(r is not None for r in returns):
            return returns[0] if len(returns) == 1 else tuple(returns)
    return tree_map(lambda x: OnDevice(x) if isinstance(x, torch.Tensor) else x, out)


class _EmulatedDeviceMode(TorchDispatchMode):
    """Intercepts factories (``device=...``) and copies of plain tensors to the emulated device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _TensorFromDataMode(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` and ``x.new_tensor(data)`` copy to the device below the
    dispatcher's Python layer (the result would be an empty ``meta`` tensor): build it on the CPU and wrap
    it instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_emulated(kwargs.get("device")):
            return OnDevice(func(*args, **{**kwargs, "device": torch.device("cpu")}))
        if func is torch.Tensor.new_tensor:  # same path: ``x.new_tensor(data)`` lands on x's device
            self, data = args[0], args[1]
            if _is_emulated(kwargs.get("device", self.device)):
                data = data.inner if isinstance(data, OnDevice) else data
                dtype = kwargs.get("dtype") or self.dtype
                return OnDevice(torch.tensor(data, dtype=dtype, requires_grad=kwargs.get("requires_grad", False)))
        return func(*args, **kwargs)


@contextlib.contextmanager
def emulated_device() -> Iterator[torch.device]:
    """Run the block with :data:`EMULATED` standing in for an accelerator (see the module docstring)."""
    with _TensorFromDataMode(), _EmulatedDeviceMode():
        yield EMULATED


def on_device(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lives on the emulated device (and so holds values)."""
    return isinstance(tensor, OnDevice)


def values(tensor: torch.Tensor) -> torch.Tensor:
    """The CPU values of an emulated-device tensor (a plain tensor is returned as it is)."""
    return tensor.inner if isinstance(tensor, OnDevice) else tensor
