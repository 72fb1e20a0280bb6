"""PyTorch collective ops: allreduce, broadcast, allgather (blocking,
nonblocking with handles, and in-place), poll / synchronize, barrier.

Every op is named: the same name must be used for the same op on every rank.
With name=None a name "<op>.noname.<n>" is generated from a per-op counter of
unnamed calls, which matches across ranks when every rank issues the same
sequence of unnamed ops of that kind.
"""
import numbers
from typing import Optional

import torch

from bluefog.common.basics import export_basics, get_basics
from bluefog.common.neighbor_weights import check_root
from bluefog.torch import _C

_basics = get_basics()

# handle -> callable(raw output) -> what synchronize() returns
_postprocess = {}


def register_postprocess(handle: int, fn):
    """Makes synchronize(handle) return fn(output) instead of the raw output."""
    _postprocess[handle] = fn
    return handle


# handle -> the user-facing op its errors should name, where the core runs it
# as another kind (pair_gossip is a neighbor_allreduce to one peer)
_op_labels = {}


def label_errors(handle: int, label: str) -> int:
    """Errors of the op behind `handle` start with `label` (e.g. "pair_gossip 'x'")."""
    _op_labels[handle] = label
    return handle


def check_tensor(tensor, op: str):
    """ValueError unless `tensor` is a dense torch.Tensor with memory of its own
    (on the CPU, or a GPU: staged through the CPU)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{op}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout is not torch.strided:
        raise ValueError(f"{op}: expected a dense tensor, got layout {tensor.layout} (use .to_dense())")
    # (is_cpu / is_cuda: about 0.3 us cheaper per op than tensor.device.type)
    if not (tensor.is_cpu or tensor.is_cuda):
        raise ValueError(f"{op}: tensors on device '{tensor.device.type}' are not supported (CPU or CUDA)")


def _prepare(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """The tensor the core can work on: contiguous, on the CPU."""
    check_tensor(tensor, op)
    if tensor.is_cuda:
        # Until the NCCL controller lands, GPU tensors are staged through the CPU
        # (dense: .to() alone keeps a channels_last or transposed layout).
        return tensor.detach().to("cpu", memory_format=torch.contiguous_format)
    # (A copy of a strided tensor needs no autograd history: results come back
    # through _write_back, outside autograd.)
    return tensor.detach().contiguous() if not tensor.is_contiguous() else tensor


def _write_back(target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The in-place op's result into `target`, as the core writes a contiguous
    CPU tensor: outside autograd (a leaf that requires grad is fine; no copy
    node), with the version bump that makes a stale saved tensor an error."""
    with torch.no_grad():
        target.copy_(out)
    return target


def _finish(handle: int, target: Optional[torch.Tensor], device: Optional[torch.device] = None) -> int:
    """Registers a copy of the result back into `target` (a non-contiguous or
    GPU tensor of an in-place op), or to `device` (the GPU a staged input came
    from), at synchronize time."""
    if target is not None:
        register_postprocess(handle, lambda out: _write_back(target, out))
    elif device is not None:
        register_postprocess(handle, lambda out: out.to(device))
    return handle


_auto_counts = {}
# A fresh init starts the counts again on every rank (an unnamed call that
# failed before init, on one rank only, must not shift that rank's names).
_basics.reset_hooks.append(_auto_counts.clear)


def _name(name: Optional[str], op: str) -> str:
    """`name`, or "<op>.noname.<n>" where n counts this process's unnamed `op`
    calls: ranks issuing the same sequence of unnamed ops agree on the names,
    whatever else (polling, other ops' internal steps) happens in between."""
    if name is None:
        n = _auto_counts.get(op, 0)
        _auto_counts[op] = n + 1
        return f"{op}.noname.{n}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"{op}: name must be a non-empty str or None, got {name!r}")
    return name


# ---- allreduce --------------------------------------------------------------
def _allreduce_blocking(tensor, inplace, average, is_hierarchical_local, name, op):
    """allreduce / allreduce_ with the least Python around the two core calls
    for a contiguous dense CPU tensor (on 4 ranks sharing 2 cores, every
    microsecond of Python per op costs about two of latency: a 4 KiB
    allreduce_ took 28-32 us through _allreduce_async and synchronize, 23-25
    us with the two calls alone); anything else takes the general path."""
    if name.__class__ is not str or not name:
        name = _name(name, "allreduce")
    try:
        handle = _C.allreduce_plain(tensor, inplace, average, is_hierarchical_local, name)
    except Exception as err:  # e.g. an unsupported dtype: tell the other ranks
        _basics.report_refusal("allreduce", name, err)
        raise
    if handle < 0:
        return synchronize(_allreduce_async(tensor, None, average, is_hierarchical_local, name, op, inplace, True))
    try:
        return _C.wait(handle)
    except BaseException as err:
        _wait_failed(handle, err)
        raise


# `blocking=True` (the blocking forms): the caller synchronizes at once, and its
# wait runs the op's cycle itself instead of waking the background thread.
def _allreduce_async(tensor, output, average, is_hierarchical_local, name, op, inplace, blocking=False):
    full_name = _name(name, "allreduce")
    try:  # (not refusal_reported(): a with block costs about 0.3 us per op)
        src = _prepare(tensor, op)
        if inplace:
            out = src
            target = tensor if out is not tensor else None
        else:
            out = _C.empty_output_like(src) if output is None else output
            target = tensor.new_empty(tensor.shape) if src is not tensor and tensor.is_cuda else None
        handle = _C.allreduce_async(src, out, bool(average), bool(is_hierarchical_local), full_name, blocking)
    except Exception as err:  # bad input, or a failed GPU staging copy: tell the other ranks
        _basics.report_refusal("allreduce", full_name, err)
        raise
    return _finish(handle, target)


def allreduce_nonblocking(tensor: torch.Tensor, average: bool = True, is_hierarchical_local: bool = False,
                          name: Optional[str] = None) -> int:
    """Starts an allreduce (sum, or average over ranks) into a new tensor; returns
    a handle for poll()/synchronize(). With is_hierarchical_local=True the
    reduction runs only among the ranks of this machine."""
    return _allreduce_async(tensor, None, average, is_hierarchical_local, name, "allreduce", False)


def allreduce(tensor: torch.Tensor, average: bool = True, is_hierarchical_local: bool = False,
              name: Optional[str] = None) -> torch.Tensor:
    """Sum (or average, the default) of `tensor` over all ranks, as a new tensor.
    uint8/int8/int16/int32/int64/float16/bfloat16/float32/float64 (average needs a float type)."""
    return _allreduce_blocking(tensor, False, average, is_hierarchical_local, name, "allreduce")


def allreduce_nonblocking_(tensor: torch.Tensor, average: bool = True, is_hierarchical_local: bool = False,
                           name: Optional[str] = None) -> int:
    """In-place nonblocking allreduce: `tensor` holds the result after synchronize()."""
    return _allreduce_async(tensor, None, average, is_hierarchical_local, name, "allreduce_", True)


def allreduce_(tensor: torch.Tensor, average: bool = True, is_hierarchical_local: bool = False,
               name: Optional[str] = None) -> torch.Tensor:
    """In-place allreduce; returns `tensor`."""
    return _allreduce_blocking(tensor, True, average, is_hierarchical_local, name, "allreduce_")


# ---- broadcast --------------------------------------------------------------
def _broadcast_async(tensor, root_rank, name, op, inplace, blocking=False):
    full_name = _name(name, "broadcast")
    try:
        root_rank = check_root(root_rank, op)
        src = _prepare(tensor, op)
        out = src if inplace else _C.empty_output_like(src)
        target = tensor if inplace and src is not tensor else None
        handle = _C.broadcast_async(src, out, root_rank, full_name, blocking)
    except Exception as err:  # bad input, or a failed GPU staging copy: tell the other ranks
        _basics.report_refusal("broadcast", full_name, err)
        raise
    return _finish(handle, target, tensor.device if tensor.is_cuda else None)


def broadcast_nonblocking(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None) -> int:
    """Starts a broadcast of root_rank's tensor into a new tensor; returns a handle."""
    return _broadcast_async(tensor, root_rank, name, "broadcast", False)


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None) -> torch.Tensor:
    """A copy of root_rank's `tensor` on every rank; the input is unchanged."""
    return synchronize(_broadcast_async(tensor, root_rank, name, "broadcast", False, True))


def broadcast_nonblocking_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None) -> int:
    """In-place nonblocking broadcast into `tensor`."""
    return _broadcast_async(tensor, root_rank, name, "broadcast_", True)


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None) -> torch.Tensor:
    """In-place broadcast; returns `tensor` holding root_rank's values."""
    return synchronize(_broadcast_async(tensor, root_rank, name, "broadcast_", True, True))


# ---- allgather --------------------------------------------------------------
def _allgather_async(tensor, name, blocking=False):
    full_name = _name(name, "allgather")
    with _basics.refusal_reported("allgather", full_name):
        src = _prepare(tensor, "allgather")
        handle = _C.allgather_async(src, full_name, blocking)
    return _finish(handle, None, tensor.device if tensor.is_cuda else None)


def allgather_nonblocking(tensor: torch.Tensor, name: Optional[str] = None) -> int:
    """Starts an allgather; returns a handle."""
    return _allgather_async(tensor, name)


def allgather(tensor: torch.Tensor, name: Optional[str] = None) -> torch.Tensor:
    """Concatenation of every rank's tensor along dim 0, in rank order. The first
    dimension may differ between ranks; the others must match."""
    return synchronize(_allgather_async(tensor, name, True))


# ---- handles ------------------------------------------------------------------
def _check_handle(handle, op: str):
    if type(handle) is int and -2**31 <= handle < 2**31:  # the usual case, without the ABC check below (0.3 us)
        return
    if isinstance(handle, bool) or not isinstance(handle, numbers.Integral):
        raise ValueError(f"{op}: expected a handle (an int returned by a nonblocking op), got {handle!r}")
    if not -2**31 <= handle < 2**31:  # (no handle is that large; pybind11 would raise a TypeError)
        raise ValueError(f"{op}: unknown handle {handle} (never returned by a nonblocking op)")


def poll(handle: int) -> bool:
    """True once the op behind `handle` has finished (successfully or not)."""
    _check_handle(handle, "poll")
    if handle < 0:
        from bluefog.torch.composite import poll_composite
        return poll_composite(handle)
    return _C.poll(handle)


def synchronize(handle: int) -> torch.Tensor:
    """Waits for the op behind `handle` (without holding the GIL), raises if it
    failed (ValueError: invalid input or ranks disagree; RuntimeError:
    communication failure), and returns its output."""
    _check_handle(handle, "synchronize")
    if handle < 0:
        from bluefog.torch.composite import synchronize_composite
        return synchronize_composite(handle)
    try:
        output = _C.wait(handle)
    except BaseException as err:
        _wait_failed(handle, err)
        raise
    _op_labels.pop(handle, None)
    post = _postprocess.pop(handle, None)
    return post(output) if post is not None else output


wait = synchronize


def _wait_failed(handle: int, err: BaseException):
    """After _C.wait(handle) raised `err`: forgets the handle's post-processing
    and raises the error under the op's label, if it has one. Returns (the
    caller re-raises `err`) when there is nothing to add, or when the wait was
    interrupted (Ctrl-C, or whatever a signal handler raised): the op goes on,
    and its handle, with its post-processing, may be waited for again."""
    if _still_pending(handle):
        return
    _postprocess.pop(handle, None)
    label = _op_labels.pop(handle, None)
    if label is not None and isinstance(err, (ValueError, RuntimeError)):
        raise type(err)(f"{label}: {err}") from err


def _still_pending(handle: int) -> bool:
    """True if `handle` is still known to the core (an interrupted wait), False
    once its op's outcome has been taken (success or the op's own error)."""
    try:
        _C.poll(handle)
        return True
    except ValueError:
        return False


def barrier():
    """Blocks until every rank has reached the barrier."""
    _basics.barrier()


# BlueFog 0.3 defined the basics (size, rank, the topology functions, ...), the
# neighbor ops and the window ops in this module too, and some only here
# (is_topo_weighted, pair_gossip, win_lock): `bf.mpi_ops.<name>` and `from
# bluefog.torch.mpi_ops import <name>` keep working. The neighbor and window
# ops live in modules that import this one, so they are looked up on first use.
export_basics(globals())
_NEIGHBOR_OPS = (
    "neighbor_allreduce", "neighbor_allreduce_nonblocking", "neighbor_allgather", "neighbor_allgather_nonblocking",
    "hierarchical_neighbor_allreduce", "hierarchical_neighbor_allreduce_nonblocking", "pair_gossip",
    "pair_gossip_nonblocking")


_WINDOW_OPS = (
    "win_create", "win_free", "win_put", "win_put_nonblocking", "win_get", "win_get_nonblocking", "win_accumulate",
    "win_accumulate_nonblocking", "neighbor_win_put", "neighbor_win_put_nonblocking", "neighbor_win_get",
    "neighbor_win_get_nonblocking", "neighbor_win_accumulate", "neighbor_win_accumulate_nonblocking", "win_poll",
    "win_wait", "win_update", "win_update_then_collect", "get_win_version", "get_current_created_window_names",
    "win_mutex", "win_lock", "win_associated_p", "turn_on_win_ops_with_associated_p",
    "turn_off_win_ops_with_associated_p")


def __getattr__(name):
    if name in _NEIGHBOR_OPS:
        from bluefog.torch import neighbor_ops
        return getattr(neighbor_ops, name)
    if name in _WINDOW_OPS:
        from bluefog.torch import win_ops
        return getattr(win_ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
