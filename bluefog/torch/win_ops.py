"""One-sided window ops (asynchronous gossip, push-sum).

Each window `name` is a tensor on every rank plus, at every rank, one receive
buffer per in-neighbor. win_put / win_accumulate write (scaled) copies of a
tensor into this rank's buffer at each destination; win_get pulls each
source's live window tensor into the buffer for that source; only win_update
mixes the buffers into the window tensor. Put, get, accumulate, update and the
mutex never run on the calling thread but on whichever thread runs the core's
current cycle (usually the background thread), one-sided: the other rank takes
no part. win_create and win_free are collective.

Windows hold int32, int64, float32 or float64 tensors. One on a GPU (or not
contiguous) is staged: the core's window is a contiguous CPU copy, refreshed
from the tensor by each win_update of this rank (so neighbors' win_get see
the values as of this rank's last update or create), and the update's result
is written back into the tensor; put and accumulate send a CPU copy of the
tensor they are given.
"""
import contextlib
import logging
import threading
from typing import Dict, List, Optional

import torch

from bluefog.common.basics import get_basics
from bluefog.common.neighbor_weights import check_ranks, check_weight, check_weight_dict
from bluefog.torch import _C
from bluefog.torch.mpi_ops import _check_handle, _prepare, _still_pending, check_tensor

_basics = get_basics()
logger = logging.getLogger("bluefog")
_win_map: Dict[str, torch.Tensor] = {}   # name -> the user's window tensor
_win_core: Dict[str, torch.Tensor] = {}  # name -> the contiguous CPU tensor the core holds (the same one if it is)
_WIN_TYPES = (torch.int32, torch.int64, torch.float32, torch.float64)


def _windows_exist() -> bool:
    return bool(_win_map)


_basics.windows_exist = _windows_exist


def _forget_windows():
    # The core frees every window when it shuts down (and has none when it starts).
    _win_map.clear()
    _win_core.clear()


_basics.reset_hooks.append(_forget_windows)


def _check_name(name, op: str) -> str:
    if not _basics.is_initialized():  # (not "unknown window": that is not the cause)
        raise ValueError(f"{op}: BlueFog is not initialized: call bf.init() first")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{op}: the window name must be a non-empty str, got {name!r}")
    if name not in _win_map:
        raise ValueError(f"{op}: unknown window '{name}' (existing windows: {sorted(_win_map)}); "
                         "create it with win_create first")
    return name


def _check_integral(tensor, name: str, op: str, weights: Dict[str, List[float]]):
    """ValueError for a weight that is not an integer on an integer window
    (`weights`: what each list of weights is, e.g. "dst_weights"): integer
    windows are scaled and mixed exactly, by integers only, never truncated."""
    if tensor.is_floating_point():
        return
    for what, values in weights.items():
        bad = [w for w in values if w != int(w)]
        if bad:
            raise ValueError(f"{op} '{name}': {what} {bad[0]} would scale an integer window ({tensor.dtype}), "
                             f"which takes integral weights only; use a floating-point window or integral weights")


def _weights(weights, default_ranks: List[int], allowed: List[int], what: str, op: str):
    """Ranks and weights from a {rank: weight} dict (or None: default ranks, 1.0)."""
    if weights is None:
        return list(default_ranks), [1.0] * len(default_ranks)
    if isinstance(weights, (list, tuple)):
        weights = {r: 1.0 for r in check_ranks(weights, what, op)}
    weights = check_weight_dict(weights, what, op)
    stray = sorted(r for r in weights if r not in allowed)
    if stray:
        raise ValueError(f"{op}: {what} names ranks {stray} that are not {'out' if 'dst' in what else 'in'}-neighbors "
                         f"of rank {_basics.rank()} (they are {sorted(allowed)})")
    ranks = sorted(weights)
    return ranks, [weights[r] for r in ranks]


def _wait_or_finish_later(handle: int, done=None, late=None):
    """Waits for a window lifecycle op (create, mutex or lock acquire), then
    runs `done()`. Ctrl-C (or whatever a signal handler raises) interrupts the
    wait but not the op, which goes on and completes when the peers get there:
    a daemon thread then waits for it and runs `late()` (so that a window the
    peers created is known here, and a lock the op takes is released again
    instead of being held by nobody for good)."""
    try:
        _C.wait(handle)
    except BaseException:
        if not _still_pending(handle):
            raise  # the op's own error
        def finish():
            try:
                _C.wait(handle)
            except Exception:  # noqa: BLE001  (the op failed: nothing to record or release)
                return
            if late is not None:
                late()
        threading.Thread(target=finish, name="bluefog-finish-interrupted-window-op", daemon=True).start()
        raise
    if done is not None:
        done()


def _check_tensor(tensor, name: str, op: str):
    check_tensor(tensor, f"{op} '{name}'")
    window = _win_map[name]
    if tensor.dtype != window.dtype or tensor.shape != window.shape:
        raise ValueError(f"{op} '{name}': the tensor ({tensor.dtype}, {tuple(tensor.shape)}) does not match the "
                         f"window ({window.dtype}, {tuple(window.shape)})")


def win_create(tensor: torch.Tensor, name: str, zero_init: bool = False) -> bool:
    """Collective. Makes `tensor` the window `name` (kept and updated in place)
    and allocates one receive buffer per in-neighbor, holding a copy of the
    tensor (or zeros with zero_init). The topology cannot change while windows
    exist."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"win_create: the window name must be a non-empty str, got {name!r}")
    with _basics.refusal_reported("win_create", name):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _WIN_TYPES:
            raise ValueError("win_create: windows hold int32, int64, float32 or float64 tensors, got "
                             f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
        core = _prepare(tensor, f"win_create '{name}'")  # itself, or a contiguous CPU copy (GPU, strided)
        handle = _C.win_create_async(core, name, bool(zero_init), _basics.in_neighbor_ranks(),
                                     _basics.out_neighbor_ranks())
    def record():
        _win_map[name] = tensor
        _win_core[name] = core
    _wait_or_finish_later(handle, done=record, late=record)
    return True


def win_free(name: Optional[str] = None) -> bool:
    """Collective. Frees window `name`, or every window when name is None."""
    if name is not None:
        _check_name(name, "win_free")
    _C.wait(_C.win_free_async(name or ""))
    if name is None:
        _win_map.clear()
        _win_core.clear()
    else:
        _win_map.pop(name, None)
        _win_core.pop(name, None)
    return True


def get_current_created_window_names() -> List[str]:
    """Sorted names of the live windows."""
    return sorted(_win_map)


def _put_nonblocking(tensor, name, self_weight, dst_weights, require_mutex, accumulate):
    op = "win_accumulate" if accumulate else "win_put"
    _check_name(name, op)
    _check_tensor(tensor, name, op)
    out_nbrs = _basics.out_neighbor_ranks()
    ranks, weights = _weights(dst_weights, out_nbrs, out_nbrs, "dst_weights", op)
    sw = check_weight(self_weight, "self_weight", op) if self_weight is not None else 1.0
    _check_integral(tensor, name, op, {"self_weight": [sw], "dst_weights": weights})
    src = _prepare(tensor, f"{op} '{name}'")
    # The core scales what it sent by self_weight once sent, before the next queued op runs.
    handle = _C.win_put_async(src, name, ranks, weights, sw, bool(require_mutex), accumulate)
    if sw != 1.0 and src is not tensor:
        # A staged tensor (GPU, strided): the core sends and scales its own copy.
        # The tensor is scaled here, now, so that whatever comes next (a
        # win_update before this op is waited for, too) sees the scaled values.
        with torch.no_grad():
            tensor.mul_(sw)
    return handle


def win_put_nonblocking(tensor: torch.Tensor, name: str, self_weight: Optional[float] = None,
                        dst_weights: Optional[Dict[int, float]] = None, require_mutex: bool = False) -> int:
    """Starts a win_put; returns a handle for win_wait / win_poll."""
    return _put_nonblocking(tensor, name, self_weight, dst_weights, require_mutex, False)


def win_put(tensor: torch.Tensor, name: str, self_weight: Optional[float] = None,
            dst_weights: Optional[Dict[int, float]] = None, require_mutex: bool = False) -> bool:
    """Writes tensor * w into this rank's buffer at each destination (default: all
    out-neighbors, w = 1), then scales `tensor` by self_weight (default 1)."""
    return win_wait(win_put_nonblocking(tensor, name, self_weight, dst_weights, require_mutex))


def win_accumulate_nonblocking(tensor: torch.Tensor, name: str, self_weight: Optional[float] = None,
                               dst_weights: Optional[Dict[int, float]] = None, require_mutex: bool = False) -> int:
    """Starts a win_accumulate; returns a handle."""
    return _put_nonblocking(tensor, name, self_weight, dst_weights, require_mutex, True)


def win_accumulate(tensor: torch.Tensor, name: str, self_weight: Optional[float] = None,
                   dst_weights: Optional[Dict[int, float]] = None, require_mutex: bool = False) -> bool:
    """Adds tensor * w into this rank's buffer at each destination, then scales
    `tensor` by self_weight."""
    return win_wait(win_accumulate_nonblocking(tensor, name, self_weight, dst_weights, require_mutex))


def win_get_nonblocking(name: str, src_weights: Optional[Dict[int, float]] = None,
                        require_mutex: bool = False) -> int:
    """Starts a win_get; returns a handle."""
    _check_name(name, "win_get")
    in_nbrs = _basics.in_neighbor_ranks()
    ranks, weights = _weights(src_weights, in_nbrs, in_nbrs, "src_weights", "win_get")
    _check_integral(_win_map[name], name, "win_get", {"src_weights": weights})
    return _C.win_get_async(name, ranks, weights, bool(require_mutex))


def win_get(name: str, src_weights: Optional[Dict[int, float]] = None, require_mutex: bool = False) -> bool:
    """Pulls each source's window tensor (default: all in-neighbors) into this
    rank's buffer for it, scaled by its weight (default 1)."""
    return win_wait(win_get_nonblocking(name, src_weights, require_mutex))


neighbor_win_put = win_put
neighbor_win_put_nonblocking = win_put_nonblocking
neighbor_win_get = win_get
neighbor_win_get_nonblocking = win_get_nonblocking
neighbor_win_accumulate = win_accumulate
neighbor_win_accumulate_nonblocking = win_accumulate_nonblocking


def win_poll(handle: int) -> bool:
    """True once the window op behind `handle` has finished (a finished put or
    accumulate has then scaled its tensor by self_weight; a staged tensor, on
    a GPU or not contiguous, was scaled when the op started)."""
    _check_handle(handle, "win_poll")
    return _C.poll(handle)


def win_wait(handle: int) -> bool:
    """Waits for a window op; raises if it failed. Returns True, or False (with a
    warning) for a handle that is unknown, was already waited for, or belongs
    to an op that is not a window op (that handle is left alone: wait for it
    with synchronize)."""
    try:
        _check_handle(handle, "win_wait")
        kind = _C.handle_kind(handle)
    except ValueError as e:
        logger.warning("win_wait: %s", e)
        return False
    if kind < 0:
        logger.warning("win_wait: unknown handle %d (never returned by a window op, or already waited for)", handle)
        return False
    if kind == 0:
        logger.warning("win_wait: handle %d is not a window op's (it is left for synchronize to wait for)", handle)
        return False
    _C.wait(handle)
    return True


def win_update(name: str, self_weight: Optional[float] = None, neighbor_weights: Optional[Dict[int, float]] = None,
               reset: bool = False, clone: bool = False, require_mutex: bool = False) -> torch.Tensor:
    """Local: tensor = self_weight * tensor + sum_j w_j * buffer_j, in place on the
    window tensor (or on a clone with clone=True). No weights: the topology's
    receive weights if it is weighted, else 1/(in-degree + 1). reset=True zeroes
    the buffers used; require_mutex takes this rank's own window mutex."""
    _check_name(name, "win_update")
    in_nbrs = _basics.in_neighbor_ranks()
    defaults = self_weight is None and neighbor_weights is None
    if defaults:
        if _basics.is_topo_weighted():
            from bluefog.common.topology_util import GetRecvWeights
            self_weight, neighbor_weights = GetRecvWeights(_basics.topology_in_use(), _basics.rank())
        else:
            uniform = 1.0 / (len(in_nbrs) + 1)
            self_weight, neighbor_weights = uniform, {r: uniform for r in in_nbrs}
    elif self_weight is None or neighbor_weights is None:
        raise ValueError("win_update: give self_weight and neighbor_weights together (or neither)")
    ranks, weights = _weights(neighbor_weights, in_nbrs, in_nbrs, "neighbor_weights", "win_update")
    sw = check_weight(self_weight, "self_weight", "win_update")
    given = "the default " if defaults else ""  # (1/(in-degree + 1), or the topology's weights)
    _check_integral(_win_map[name], name, "win_update", {given + "self_weight": [sw], given + "neighbor_weights": weights})
    window, core = _win_map[name], _win_core[name]
    staged = core is not window
    if staged:
        with torch.no_grad():
            core.copy_(window)  # the values the tensor has now (e.g. after a local step on the GPU)
    output = core.clone() if clone else core
    _C.wait(_C.win_update_async(name, output, sw, ranks, weights, bool(reset), bool(require_mutex)))
    if not staged:
        return output
    if clone:
        return output.to(window.device).view(window.shape)
    with torch.no_grad():
        window.copy_(core)
    return window


def win_update_then_collect(name: str, require_mutex: bool = True) -> torch.Tensor:
    """Sums the window tensor with every in-neighbor buffer and clears the
    buffers (push-sum style)."""
    in_nbrs = _basics.in_neighbor_ranks()
    return win_update(name, 1.0, {r: 1.0 for r in in_nbrs}, reset=True, require_mutex=require_mutex)


def get_win_version(name: str) -> Dict[int, int]:
    """Per in-neighbor count of puts/gets into its buffer since the last
    win_update (0: already consumed)."""
    _check_name(name, "get_win_version")
    ranks, versions = _C.win_versions(name)
    return dict(zip(ranks, versions))


@contextlib.contextmanager
def win_mutex(name: str, for_self: bool = False, ranks: Optional[List[int]] = None):
    """Holds the window mutex of `ranks` (default: the out-neighbors), or of this
    rank itself with for_self=True, for the duration of the block. Mutexes are
    taken in rank order, so lockers never deadlock each other.

    Each rank's window has one mutex (BlueFog 0.3 kept one slot per peer), which
    every mutex-protected write into that window takes. So for_self=True holds
    off every such writer at once, whatever `ranks` says (`ranks` is accepted
    for compatibility; the lock is never narrower than asked)."""
    _check_name(name, "win_mutex")
    targets = [_basics.rank()] if for_self else (list(ranks) if ranks is not None else _basics.out_neighbor_ranks())
    release = lambda: _C.wait(_C.win_mutex_async(name, targets, False))  # noqa: E731
    _wait_or_finish_later(_C.win_mutex_async(name, targets, True), late=release)
    try:
        yield
    finally:
        release()


@contextlib.contextmanager
def win_lock(name: str):
    """An exclusive RMA epoch on this rank's window buffers: no neighbor can write
    into them during the block. win_get and win_update of `name` need those
    buffers themselves: inside the block they raise ValueError (call them
    after it); win_lock is not re-entrant."""
    _check_name(name, "win_lock")
    release = lambda: _C.wait(_C.win_lock_async(name, False))  # noqa: E731
    _wait_or_finish_later(_C.win_lock_async(name, True), late=release)
    try:
        yield
    finally:
        release()


def win_associated_p(name: str) -> float:
    """The push-sum weight p of this rank's window (1.0 at creation)."""
    _check_name(name, "win_associated_p")
    return _C.win_associated_p(name)


def turn_on_win_ops_with_associated_p():
    """From now on put, accumulate and update apply their weights to p as well."""
    _C.set_win_associated_p(True)


def turn_off_win_ops_with_associated_p():
    """Stop tracking p in window ops."""
    _C.set_win_associated_p(False)
