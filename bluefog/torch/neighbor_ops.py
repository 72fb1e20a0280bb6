"""Neighbor ops over the virtual topology: neighbor_allreduce, neighbor_allgather,
hierarchical_neighbor_allreduce, pair_gossip (blocking and nonblocking).

The core only exchanges tensors (each rank receives what its sources sent,
scaled by the senders' destination weights); the weighting policy lives here.
Every rank must call each named op (a rank with nothing to exchange passes
empty lists), and the core checks that the send/receive lists of all ranks
mirror each other: a mismatch raises ValueError on every rank, nothing is
exchanged, and nothing hangs.
"""
import numbers
from typing import Dict, List, Optional, Union

import torch

from bluefog.common import neighbor_weights
from bluefog.common.basics import get_basics
from bluefog.torch import _C
from bluefog.torch.composite import start_composite, wait_until_finished
from bluefog.torch.mpi_ops import (_name, _prepare, _wait_failed, allreduce_nonblocking, check_tensor,
                                   label_errors, register_postprocess, synchronize)

_basics = get_basics()
_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Weights = Union[Dict[int, float], List[int], None]


def _reject_old_kwargs(op: str, kwargs, old_names):
    for old in old_names:
        if old in kwargs:
            raise TypeError(f"{op}() no longer accepts '{old}'; see the API documentation for the current arguments")
    if kwargs:
        raise TypeError(f"{op}() got unexpected keyword arguments {sorted(kwargs)}")


def _check_float(tensor: torch.Tensor, op: str):
    check_tensor(tensor, op)
    if tensor.dtype not in _FLOAT_TYPES:
        raise ValueError(f"{op}: needs a floating-point tensor (float16, bfloat16, float32, float64), "
                         f"got {tensor.dtype}")


def _combine(x: torch.Tensor, received: torch.Tensor, self_weight: float, src_weights: List[float]
             ) -> torch.Tensor:
    """self_weight * x + sum_k src_weights[k] * received[k] (in float32 for 16-bit types)."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    result = x.to(compute) * self_weight
    for k, w in enumerate(src_weights):
        if w != 0.0:
            result.add_(received[k].to(compute), alpha=w)
    return result.to(x.dtype)


# `blocking=True` (the blocking forms): the caller synchronizes at once, and its
# wait runs the op's cycle itself instead of waking the background thread.
def _neighbor_allreduce_async(tensor, self_weight, src_weights, dst_weights, enable_topo_check, name, kwargs,
                              blocking=False):
    full_name = _name(name, "neighbor_allreduce")
    try:  # (not refusal_reported(): a with block costs about 0.3 us per op)
        _reject_old_kwargs("neighbor_allreduce", kwargs, ("neighbor_weights", "send_neighbors"))
        _check_float(tensor, "neighbor_allreduce")
        ex = neighbor_weights.resolve(_basics, "neighbor_allreduce", self_weight, src_weights, dst_weights)
        x = _prepare(tensor, "neighbor_allreduce")
        # The weighted average is formed in C++ when the handle is waited on.
        handle = _C.neighbor_async(x, False, ex.src_ranks, ex.dst_ranks, ex.dst_weights, full_name,
                                   bool(enable_topo_check), (ex.self_weight, ex.src_weights), blocking)
    except Exception as err:  # bad input, or a failed GPU staging copy: tell the other ranks
        _basics.report_refusal("neighbor_allreduce", full_name, err)
        raise
    if tensor.is_cuda:
        device = tensor.device
        register_postprocess(handle, lambda out: out.to(device))
    return handle


def neighbor_allreduce_nonblocking(tensor: torch.Tensor, *, self_weight: Optional[float] = None,
                                   src_weights: Optional[Dict[int, float]] = None, dst_weights: Weights = None,
                                   enable_topo_check: bool = True, name: Optional[str] = None,
                                   **kwargs) -> int:
    """Starts a neighbor_allreduce; returns a handle (see neighbor_allreduce)."""
    if not kwargs:
        name, handle = _neighbor_allreduce_plain(tensor, self_weight, src_weights, dst_weights, enable_topo_check,
                                                 name, False)
        if handle >= 0:
            return handle
    return _neighbor_allreduce_async(tensor, self_weight, src_weights, dst_weights, enable_topo_check, name, kwargs)


def neighbor_allreduce(tensor: torch.Tensor, *, self_weight: Optional[float] = None,
                       src_weights: Optional[Dict[int, float]] = None, dst_weights: Weights = None,
                       enable_topo_check: bool = True, name: Optional[str] = None, **kwargs) -> torch.Tensor:
    """Weighted average with neighbors: self_weight * x + sum_j src_weights[j] * x_j.

    Without weights: the topology's receive weights if it is weighted, else
    1/(in-degree + 1) for self and each in-neighbor. With dst_weights (a dict
    rank -> weight, or a list meaning weight 1) the exchange is dynamic: this
    rank sends only to those ranks, its tensor scaled by the weight, and
    receives from the keys of src_weights (self_weight and src_weights are then
    required). float16/bfloat16/float32/float64. The send/receive lists of all
    ranks are checked against each other, always during negotiation, and in
    skip-negotiate mode when enable_topo_check is True: a mismatch raises
    ValueError on every rank and nothing is exchanged.
    """
    if not kwargs:
        name, handle = _neighbor_allreduce_plain(tensor, self_weight, src_weights, dst_weights, enable_topo_check,
                                                 name, True)
        if handle >= 0:
            try:
                return _C.wait(handle)
            except BaseException as err:
                _wait_failed(handle, err)
                raise
    return synchronize(_neighbor_allreduce_async(tensor, self_weight, src_weights, dst_weights, enable_topo_check,
                                                 name, kwargs, True))


def _neighbor_allreduce_plain(tensor, self_weight, src_weights, dst_weights, enable_topo_check, name, blocking):
    """The short path for a contiguous CPU tensor of a floating-point type (see
    mpi_ops._allreduce_blocking; a 4 KiB static exchange on 4 ranks sharing 2
    cores took 64-68 us through the general path, 45-49 with the core calls
    alone): (the op's name, its handle), or handle -1 when nothing was
    submitted. Anything it does not handle, bad weights included, is left to
    the general path, which checks in its own order and reports the refusal."""
    if name.__class__ is not str or not name:
        name = _name(name, "neighbor_allreduce")
    try:
        ex = neighbor_weights.resolve(_basics, "neighbor_allreduce", self_weight, src_weights, dst_weights)
        return name, _C.neighbor_allreduce_plain(tensor, ex.src_ranks, ex.dst_ranks, ex.dst_weights, name,
                                                 bool(enable_topo_check), ex.self_weight, ex.src_weights, blocking)
    except Exception:
        return name, -1


def _neighbor_allgather_async(tensor, src_ranks, dst_ranks, enable_topo_check, name, blocking=False):
    full_name = _name(name, "neighbor_allgather")
    with _basics.refusal_reported("neighbor_allgather", full_name):
        if (src_ranks is None) != (dst_ranks is None):
            raise ValueError("neighbor_allgather: give src_ranks and dst_ranks together (or neither, for the "
                             "topology)")
        if src_ranks is None:
            src_ranks, dst_ranks = _basics.in_neighbor_ranks(), _basics.out_neighbor_ranks()
        src_ranks = neighbor_weights.check_ranks(src_ranks, "src_ranks", "neighbor_allgather")
        dst_ranks = neighbor_weights.check_ranks(dst_ranks, "dst_ranks", "neighbor_allgather")
        x = _prepare(tensor, "neighbor_allgather")
        handle = _C.neighbor_async(x, True, src_ranks, dst_ranks, [], full_name, bool(enable_topo_check), None,
                                   blocking)
    if tensor.is_cuda:
        register_postprocess(handle, lambda out: out.to(tensor.device))
    return handle


def neighbor_allgather_nonblocking(tensor: torch.Tensor, *, src_ranks: Optional[List[int]] = None,
                                   dst_ranks: Optional[List[int]] = None, enable_topo_check: bool = True,
                                   name: Optional[str] = None) -> int:
    """Starts a neighbor_allgather; returns a handle."""
    return _neighbor_allgather_async(tensor, src_ranks, dst_ranks, enable_topo_check, name)


def neighbor_allgather(tensor: torch.Tensor, *, src_ranks: Optional[List[int]] = None,
                       dst_ranks: Optional[List[int]] = None, enable_topo_check: bool = True,
                       name: Optional[str] = None) -> torch.Tensor:
    """Concatenation along dim 0 of the in-neighbors' tensors (self excluded), in
    in_neighbor_ranks() order, or in src_ranks order for a dynamic exchange
    (src_ranks and dst_ranks given together). First dimensions may differ."""
    return synchronize(_neighbor_allgather_async(tensor, src_ranks, dst_ranks, enable_topo_check, name, True))


def _pair_gossip_async(tensor, target_rank, self_weight, pair_weight, name, blocking=False):
    full_name = _name(name, "pair_gossip")
    _basics.require_initialized("pair_gossip", full_name)
    with _basics.refusal_reported("neighbor_allreduce", full_name):  # the core's kind of exchange
        _check_float(tensor, "pair_gossip")
        if isinstance(target_rank, bool) or not isinstance(target_rank, numbers.Integral):
            raise ValueError(f"pair_gossip: target_rank must be an int, got {target_rank!r}")
        if (self_weight is None) != (pair_weight is None):
            raise ValueError("pair_gossip: give self_weight and pair_weight together (or neither, for 0.5 / 0.5)")
        sw = 0.5 if self_weight is None else neighbor_weights.check_weight(self_weight, "self_weight",
                                                                           "pair_gossip")
        pw = 0.5 if pair_weight is None else neighbor_weights.check_weight(pair_weight, "pair_weight",
                                                                           "pair_gossip")
        peers = [] if int(target_rank) == _basics.rank() else [int(target_rank)]
        x = _prepare(tensor, "pair_gossip")
        handle = _C.neighbor_async(x, False, peers, peers, [], full_name, True,
                                   (sw if peers else 1.0, [pw] * len(peers)), blocking)
    label_errors(handle, f"pair_gossip '{full_name}' (run as a neighbor_allreduce with one peer)")
    if tensor.is_cuda:
        device = tensor.device
        register_postprocess(handle, lambda out: out.to(device))
    return handle


def pair_gossip_nonblocking(tensor: torch.Tensor, target_rank: int, self_weight: Optional[float] = None,
                            pair_weight: Optional[float] = None, name: Optional[str] = None) -> int:
    """Starts a pair_gossip; returns a handle."""
    return _pair_gossip_async(tensor, target_rank, self_weight, pair_weight, name)


def pair_gossip(tensor: torch.Tensor, target_rank: int, self_weight: Optional[float] = None,
                pair_weight: Optional[float] = None, name: Optional[str] = None) -> torch.Tensor:
    """self_weight * x + pair_weight * x_target (default 0.5 each) with one peer.
    Every rank calls it (with its own target, which must target it back; a rank
    passing its own rank sits the round out and gets its tensor back)."""
    return synchronize(_pair_gossip_async(tensor, target_rank, self_weight, pair_weight, name, True))


def hierarchical_neighbor_allreduce_nonblocking(tensor: torch.Tensor, *, self_weight: Optional[float] = None,
                                                src_machine_weights: Optional[Dict[int, float]] = None,
                                                dst_machine_weights: Weights = None,
                                                enable_topo_check: bool = False, name: Optional[str] = None,
                                                **kwargs) -> int:
    """Starts a hierarchical_neighbor_allreduce; returns a handle. Its steps run
    in the background (one driver thread), whether or not it is polled. In
    skip-negotiate mode it returns only once they have all run."""
    op = "hierarchical_neighbor_allreduce"
    # The steps' names derive from one base fixed now, so ranks agree on them
    # whenever (and on whichever rank) the steps start.
    base = _name(name, op)
    _basics.require_initialized(op, base)
    label = lambda step: f"{base}.{step}"  # noqa: E731
    # The first step is the machine-local allreduce: a refusal here fails it everywhere.
    with _basics.refusal_reported("allreduce", label("local")):
        _reject_old_kwargs(op, kwargs, ("neighbor_machine_weights", "send_neighbor_machines"))
        _check_float(tensor, op)
        ex = neighbor_weights.resolve_machines(_basics, op, self_weight, src_machine_weights,
                                               dst_machine_weights)
        x = _prepare(tensor, op)
    device = tensor.device

    def exchange(local_mean):
        return _C.neighbor_async(local_mean, False, ex.src_ranks, ex.dst_ranks, ex.dst_weights, label("exchange"))

    state = {}

    leader = _basics.local_rank() == 0

    def spread(received):
        # Leaders combine with their neighbor machines; the others add zeros
        # (zeros, not 0 * mean: 0 * inf would be nan).
        mean = state["mean"]
        combined = _combine(mean, received, ex.self_weight, ex.src_weights) if leader else torch.zeros_like(mean)
        return allreduce_nonblocking(combined, average=False, is_hierarchical_local=True, name=label("spread"))

    def keep_mean(mean):
        state["mean"] = mean
        return exchange(mean)

    first = allreduce_nonblocking(x, average=True, is_hierarchical_local=True, name=label("local"))
    handle = start_composite(first, [keep_mean, spread], lambda result: result.to(device), label=f"{op} '{base}'")
    if _basics.get_skip_negotiate_stage():
        # Skip-negotiate mode runs core ops in each rank's submission order:
        # the later steps must be submitted before whatever this caller
        # submits next, not whenever the driver gets to them.
        wait_until_finished(handle)
    return handle


def hierarchical_neighbor_allreduce(tensor: torch.Tensor, *, self_weight: Optional[float] = None,
                                    src_machine_weights: Optional[Dict[int, float]] = None,
                                    dst_machine_weights: Weights = None, enable_topo_check: bool = False,
                                    name: Optional[str] = None, **kwargs) -> torch.Tensor:
    """Neighbor averaging between machines: the tensor is averaged inside each
    machine, the machines' local-rank-0 processes combine with their neighbor
    machines (machine topology weights, uniform, or the given machine weights),
    and the result is shared inside the machine. The machine weights that
    count are the ones the local-rank-0 process passes (as in BlueFog 0.3);
    the other ranks' are only checked to be valid."""
    return synchronize(hierarchical_neighbor_allreduce_nonblocking(
        tensor, self_weight=self_weight, src_machine_weights=src_machine_weights,
        dst_machine_weights=dst_machine_weights, enable_topo_check=enable_topo_check, name=name, **kwargs))
