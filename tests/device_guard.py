"""A stand-in accelerator on a machine without one: catches a tensor left on the host.

On a GPU, a tensor built without `device=` (a factory call, a collated batch, a fresh module) is on
the CPU, and an op mixing it with the model's CUDA tensors fails. Here everything is on the CPU,
so the mistake runs silently. `DeviceGuard` makes it visible: accelerate's device becomes `cpu:0`
(a real device on this machine, spelled differently), every tensor is tagged `device` or `host` as
it is made (moved to `cpu:0` / to a device-tagged tensor's `.device`: device; built without a device,
or moved to plain `cpu`: host; results inherit their inputs' tag), and an op that mixes a
device tensor with a host tensor of more than one element, or calls `.numpy()` on a device tensor,
is recorded, with where it happened, as CUDA would have failed there.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ACCELERATOR = torch.device("cpu", 0)
_TAG = "_compresskit_place"
_DEVICE_GET = torch.Tensor.device.__get__
_DATA_SET = torch.Tensor.data.__set__
# factories whose result lands where `device=` says (on the host without it)
_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
              torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.linspace, torch.from_numpy,
              torch.empty_strided, torch.scalar_tensor, torch.normal}
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy}
_BOOKKEEPING = {torch.Tensor.__deepcopy__, torch._has_compatible_shallow_copy_type}


def _place(value: torch.Tensor) -> str | None:
    return getattr(value, _TAG, None)


def _tag(tensor, place: str | None) -> None:
    if place and isinstance(tensor, torch.Tensor):
        setattr(tensor, _TAG, place)


def _is_device(target) -> bool | None:
    """True for the accelerator, False for the host, None when `target` names no device."""
    if isinstance(target, torch.Tensor):
        return _place(target) == "device"
    if isinstance(target, (str, torch.device)):
        return torch.device(target) == ACCELERATOR
    return None


class DeviceGuard(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.violations: dict[str, None] = {}  # in order, each once

    def _record(self, what: str) -> None:
        stack = [f for f in traceback.extract_stack()[:-3] if "/compresskit/" in f.filename]
        where = " <- ".join(f"{f.filename.split('/compresskit/')[-1]}:{f.lineno}" for f in stack[::-1][:3])
        self.violations[f"{what} at {where or '?'}"] = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GET:  # method-wrappers: equal, not identical
            return ACCELERATOR if _place(args[0]) == "device" else func(*args)
        if func == _DATA_SET:  # `param.data = moved` (Module.to): the parameter is where its data is
            func(*args)
            if _place(args[1]):
                setattr(args[0], _TAG, _place(args[1]))
            return None
        converts = "dtype" in kwargs or any(isinstance(a, torch.dtype) for a in args[1:])
        if func is torch.Tensor.to and not converts and _place(args[0]) != "host" \
                and self._result_place(func, args, kwargs, []) == "device":
            # already there: `.to` returns the tensor itself, as it does on CUDA
            _tag(args[0], "device")
            return args[0]
        if func in _BOOKKEEPING:  # not arithmetic: a copy keeps its original's place
            out = func(*args, **kwargs)
            _tag(out, _place(args[0]))
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        places = {_place(t) for t in inputs if t.dim() > 0 and t.numel() > 1}
        if func is torch.Tensor.numpy and _place(args[0]) == "device":
            self._record(".numpy() of a tensor on the accelerator")
        elif {"device", "host"} <= places and func not in (torch.Tensor.to, torch.Tensor.copy_):
            self._record(f"{getattr(func, '__name__', func)} mixes accelerator and host tensors")
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                _tag(tensor, self._result_place(func, args, kwargs, inputs))
        return out

    @staticmethod
    def _result_place(func, args, kwargs, inputs) -> str | None:
        if func in _FACTORIES or func in (torch.Tensor.to, torch.Tensor.new_tensor, torch.Tensor.new_zeros,
                                          torch.Tensor.new_ones, torch.Tensor.new_full, torch.Tensor.new_empty):
            target = kwargs.get("device")
            if func is torch.Tensor.to and target is None:
                target = next((a for a in args[1:] if _is_device(a) is not None), None)
            if target is not None:
                return "device" if _is_device(target) else "host"
            if func in _FACTORIES:
                return "host"
        if func in _TO_HOST:
            return "host"
        places = {_place(t) for t in inputs}
        return "device" if "device" in places else "host" if "host" in places else None


@contextmanager
def accelerator_stand_in() -> Iterator[DeviceGuard]:
    """accelerate's device is `cpu:0` and every op is checked; the violations list fills as they happen."""
    from accelerate.state import PartialState

    PartialState(cpu=True)
    saved = PartialState._shared_state.get("device")
    PartialState._shared_state["device"] = ACCELERATOR
    guard = DeviceGuard()
    copy_parameter = torch.nn.Parameter.__deepcopy__

    def deepcopy_parameter(self, memo):  # Parameter's own deepcopy builds its copy out of the mode's sight
        result = copy_parameter(self, memo)
        _tag(result, _place(self))
        return result

    torch.nn.Parameter.__deepcopy__ = deepcopy_parameter
    try:
        with guard:
            yield guard
    finally:
        PartialState._shared_state["device"] = saved
        torch.nn.Parameter.__deepcopy__ = copy_parameter
