"""Handles for ops made of several core ops run one after another (e.g. the
hierarchical neighbor allreduce). Composite handles are negative ints, so
they never collide with the core's handles.

A composite makes progress in the background, like a single core op: one
driver thread per process waits for the current steps of all composites in
flight at once (the core's wait_any) and starts each one's next step as soon
as its current step is done. Step names derive from the composite's name, so
the ranks' steps match however the composites interleave: ranks may start
composites in different orders, wait for their handles in any order, or run
other ops meanwhile. (A driver that finished one composite before looking at
the next hung when two ranks started two composites in opposite orders: each
waited for the step the other had not started.)
"""
import collections
import itertools
import threading
from typing import Callable, Deque, Dict, List

from bluefog.torch import _C

_counter = itertools.count(1)
_composites: Dict[int, "Composite"] = {}
_lock = threading.Condition()
_queue: Deque["Composite"] = collections.deque()  # started, not yet seen by the driver
_driver = None


class Composite:
    """`steps[i](previous_result)` starts step i and returns a core handle;
    `finish(last_result)` gives the final result."""

    def __init__(self, first_handle: int, steps: List[Callable[[object], int]], finish: Callable[[object], object],
                 label: str = ""):
        self.label = label  # e.g. "hierarchical_neighbor_allreduce 'x'": what a step's error is about
        self.handle = first_handle
        self.steps = list(steps)
        self.finish = finish
        self.result = None
        self.error = None
        self.done = threading.Event()

    def advance(self) -> bool:
        """Called (on the driver thread) once the current step is done: starts
        the next step, or forms the result (or keeps the error). True when the
        composite is finished."""
        from bluefog.torch.mpi_ops import synchronize
        try:
            value = synchronize(self.handle)
            if self.steps:
                self.handle = self.steps.pop(0)(value)
                return False
            self.result = self.finish(value)
        except BaseException as err:  # noqa: BLE001  (re-raised by the caller's synchronize)
            self.error = err
            if self.label and type(err) in (ValueError, RuntimeError, TypeError):
                self.error = type(err)(f"{self.label}: {err}")  # the step's message names the step only
        self.done.set()
        return True


def _drive():
    active: List[Composite] = []
    while True:
        with _lock:
            while not _queue and not active:
                _lock.wait()
            active.extend(_queue)
            _queue.clear()
            kicks = _C.kicks()  # a composite started after this wakes wait_any
        i = _C.wait_any([c.handle for c in active], kicks, 1000)
        if i >= 0 and active[i].advance():
            active.pop(i)


def start_composite(first_handle: int, steps, finish, label: str = "") -> int:
    """Registers a composite op (its first step already started); returns its
    (negative) handle. `label` names the op in its steps' errors."""
    global _driver
    h = -next(_counter)
    comp = Composite(first_handle, steps, finish, label)
    _composites[h] = comp
    with _lock:
        if _driver is None:
            _driver = threading.Thread(target=_drive, name="bluefog-composite-ops", daemon=True)
            _driver.start()
        _queue.append(comp)
        _lock.notify()
    _C.kick()
    return h


def _wait_done(comp: Composite) -> None:
    """Blocks until `comp`'s last step is done, counted as a blocked wait for
    the deadlock check (the driver's own wait is not). Ctrl-C here leaves the
    handle to be synchronized again."""
    blocked = _C.BlockedWait()
    try:
        comp.done.wait()
    finally:
        blocked.release()


def wait_until_finished(handle: int) -> None:
    """Blocks until the composite's last step is done (its handle stays valid)."""
    _wait_done(_composites[handle])


def poll_composite(handle: int) -> bool:
    comp = _composites.get(handle)
    if comp is None:
        raise ValueError(f"unknown handle {handle}")
    return comp.done.is_set()


def synchronize_composite(handle: int):
    comp = _composites.get(handle)
    if comp is None:
        raise ValueError(f"unknown handle {handle} (never returned by a nonblocking op, or already synchronized)")
    _wait_done(comp)
    if _composites.pop(handle, None) is None:
        raise ValueError(f"handle {handle} was synchronized by another thread while this one waited for it")
    if comp.error is not None:
        raise comp.error
    return comp.result
