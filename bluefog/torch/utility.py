"""Training utilities: broadcast / allreduce of parameters and optimizer state."""
import collections.abc
from typing import Iterable

import torch

from bluefog.torch.mpi_ops import (allreduce_nonblocking_, broadcast_, broadcast_nonblocking_, synchronize)


def _named_tensors(params, func: str):
    if isinstance(params, dict):
        return sorted(params.items())
    if isinstance(params, collections.abc.Iterable) and not isinstance(params, (str, torch.Tensor)):
        items = []
        for i, p in enumerate(params):
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                items.append(p)
            elif isinstance(p, torch.Tensor):
                items.append((f"param.{i}", p))
            else:
                raise ValueError(f"{func}: expected tensors or (name, tensor) pairs, got {type(p).__name__}")
        return items
    raise ValueError(f"{func}: params must be a dict, or a list of tensors or (name, tensor) pairs; "
                     f"got {type(params).__name__}")


def broadcast_parameters(params, root_rank: int):
    """Overwrites every tensor in `params` (a state_dict-like dict, a list of
    tensors, or (name, tensor) pairs such as model.named_parameters()) with
    root_rank's values, in place."""
    handles = [broadcast_nonblocking_(p.data if isinstance(p, torch.nn.Parameter) else p, root_rank,
                                      name=f"broadcast_parameters.{name}")
               for name, p in _named_tensors(params, "broadcast_parameters")]
    for h in handles:
        synchronize(h)


def allreduce_parameters(params):
    """Averages every tensor in `params` over all ranks, in place. Every tensor
    must be floating-point (checked before any is changed)."""
    named = list(_named_tensors(params, "allreduce_parameters"))
    for name, p in named:
        if not torch.is_tensor(p) or not p.is_floating_point():
            kind = getattr(p, "dtype", type(p).__name__)
            raise ValueError(f"allreduce_parameters: '{name}' is {kind}; only floating-point tensors can be averaged "
                             f"(leave out entries such as a BatchNorm's num_batches_tracked)")
    handles = [allreduce_nonblocking_(p.data if isinstance(p, torch.nn.Parameter) else p, average=True,
                                      name=f"allreduce_parameters.{name}")
               for name, p in named]
    for h in handles:
        synchronize(h)


def _plain_step(optimizer):
    """The wrapped user optimizer's own step (bluefog wrappers would communicate)."""
    base = getattr(optimizer, "_bluefog_base_class", None)
    if base is not None:
        base.step(optimizer)
    else:
        optimizer.step()


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int):
    """Makes every rank's optimizer state (per-parameter buffers, step counts and
    other scalars, and param-group options such as lr) equal to root_rank's."""
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("broadcast_optimizer_state does not support torch.optim.LBFGS")
    state_dict = optimizer.state_dict()
    if not state_dict["state"]:
        # Create the state (momentum buffers, ...) with a zero-gradient step, as
        # 0.3 did: with the real lr (state such as Rprop's step sizes starts from
        # it), the parameters put back afterwards (weight decay moves them).
        saved = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    saved[p] = (p.grad, p.detach().clone())
                    p.grad = torch.zeros_like(p)
        try:
            _plain_step(optimizer)
        finally:
            with torch.no_grad():
                for p, (grad, value) in saved.items():
                    p.copy_(value)
                    p.grad = grad
        state_dict = optimizer.state_dict()

    handles, restore = [], []
    # Param-group options (lr, momentum, betas, ...), as tensors.
    for gi, group in enumerate(state_dict["param_groups"]):
        for key, value in sorted(group.items()):
            if key == "params":
                continue
            t = value.detach().clone() if torch.is_tensor(value) else _to_tensor(value)  # a tensor lr, say
            if t is None:
                continue
            handles.append(broadcast_nonblocking_(t, root_rank, name=f"opt_state.group.{key}.{gi}"))
            restore.append((group, key, value, t))
    # Per-parameter state.
    for pid, pstate in sorted(state_dict["state"].items()):
        for key, value in sorted(pstate.items()):
            name = f"opt_state.{pid}.{key}"
            if torch.is_tensor(value):
                handles.append(broadcast_nonblocking_(value, root_rank, name=name))
            else:
                t = _to_tensor(value)
                if t is None:
                    continue
                handles.append(broadcast_nonblocking_(t, root_rank, name=name))
                restore.append((pstate, key, value, t))
    for h in handles:
        synchronize(h)
    for container, key, old, t in restore:
        container[key] = _from_tensor(old, t)
    optimizer.load_state_dict(state_dict)


def _to_tensor(value):
    if isinstance(value, bool):
        return torch.tensor([int(value)], dtype=torch.int64)
    if isinstance(value, int):
        return torch.tensor([value], dtype=torch.int64)
    if isinstance(value, float):
        return torch.tensor([value], dtype=torch.float64)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in value):
        return torch.tensor([float(v) for v in value], dtype=torch.float64)
    return None


def _from_tensor(old, t: torch.Tensor):
    if torch.is_tensor(old):
        return t
    if isinstance(old, bool):
        return bool(t.item())
    if isinstance(old, int):
        return int(t.item())
    if isinstance(old, float):
        return float(t.item())
    values = [type(v)(x) for v, x in zip(old, t.tolist())]
    return type(old)(values)
