"""Watching the operators the tracker dispatches: counts, host synchronisation, device-to-host copies.

`OpMonitor` is a TorchDispatchMode: every aten operator called inside it is seen once, whatever the
device, so the count is what a GPU would launch (views included: they cost a dispatch but no kernel).
`forbid_host_sync` fails on any operator that makes the host wait for a CUDA device, and on any Python
read of a tensor value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that make the host wait for the device on CUDA: a Python scalar read, or an output shape
# that depends on tensor values.
SYNCING_OPS = {
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::masked_select", "aten::bincount", "aten::unique_consecutive", "aten::_unique",
    "aten::_unique2", "aten::unique_dim", "aten::histc",
}
HOST_METHODS = ("item", "tolist", "cpu", "numpy", "__array__", "__bool__", "__float__", "__int__",
                "__index__")


class OpMonitor(TorchDispatchMode):
    """Counts operators by name; records those that synchronise on CUDA, and device-to-host copies."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: list[str] = []
        self.device_to_host = 0

    @property
    def count(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops[name] += 1
        if name in SYNCING_OPS:
            self.syncs.append(name)
        elif name == "aten::segment_reduce" and not kwargs.get("unsafe", False):
            self.syncs.append("segment_reduce(unsafe=False) checks its lengths with .item()")
        elif name in ("aten::index", "aten::index_put", "aten::index_put_"):
            indices = args[1] if len(args) > 1 else []
            if any(t is not None and t.dtype == torch.bool for t in indices):
                self.syncs.append(f"{name} with a boolean mask")
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None:
            self.syncs.append(name)
        out = func(*args, **kwargs)
        if name == "aten::_to_copy" and args[0].device.type != "cpu" and out.device.type == "cpu":
            self.device_to_host += 1
        if name == "aten::copy_" and args[0].device.type == "cpu" and args[1].device.type != "cpu":
            self.device_to_host += 1
        return out


@contextmanager
def patched_host_methods(on_call) -> Iterator[None]:
    saved = {name: vars(torch.Tensor).get(name) for name in HOST_METHODS}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}

    def make(name):
        def method(self, *args, **kwargs):
            on_call(name)
            return originals[name](self, *args, **kwargs)
        return method

    for name in HOST_METHODS:
        setattr(torch.Tensor, name, make(name))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


@contextmanager
def forbid_host_sync() -> Iterator[None]:
    def refuse(name):
        raise AssertionError(f"host synchronisation inside a batch: Tensor.{name}")

    monitor = OpMonitor()
    with patched_host_methods(refuse), monitor:
        yield
    assert not monitor.syncs, monitor.syncs
