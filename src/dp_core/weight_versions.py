"""Whether a module's weights changed: what the inference paths that hold derived copies of them check.

The ONNX Runtime graph and the bf16 / int8 copy on CUDA are built from the weights and must be rebuilt or
refreshed when the weights change. A change is one of: a parameter replaced (a new tensor object or new
storage), an in-place update that bumps the tensor's version counter (``load_state_dict``, ``copy_``, plain
and foreach optimiser steps), or a step of an optimiser that holds the parameter: fused optimiser steps
(``AdamW(fused=True)``, the training default here) update in place without bumping the version counter, so
each optimiser step is counted per parameter by a global step hook. A replayed CUDA graph of a training
step runs no Python step, and counts its steps with :func:`count_step`. Writes through ``.data`` (as diffusers'
``EMAModel.copy_to`` and ``restore`` make them) bump no counter and are not seen: after such a write, call
``DiffusionPolicy.configure_inference`` again (training validates on the torch fp32 path, which holds no copy).
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_steps: dict[int, int] = {}  # id(parameter) -> optimiser steps taken on it; entries leave with their parameter


def count_step(optimizer: torch.optim.Optimizer, *_) -> None:
    """Count one step of ``optimizer`` on each of its parameters (the global step hook)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            key = id(p)
            if key not in _steps:
                weakref.finalize(p, _steps.pop, key, None)
                _steps[key] = 0
            _steps[key] += 1


register_optimizer_step_post_hook(count_step)


def module_tensors(modules: list[torch.nn.Module], buffers: bool = True) -> list[torch.Tensor]:
    """The parameters (and buffers) held directly by each of ``modules``, in order (a walk of a module list
    taken once is several times cheaper than ``Module.parameters()`` and still sees replaced parameters)."""
    out = [t for m in modules for t in m._parameters.values() if t is not None]
    if buffers:
        out += [t for m in modules for t in m._buffers.values() if t is not None]
    return out


def weights_key(tensors: list[torch.Tensor]) -> tuple:
    """Changes whenever one of ``tensors`` is replaced or updated (see the module docstring)."""
    return tuple((t.data_ptr(), t._version, _steps.get(id(t), 0)) for t in tensors)
