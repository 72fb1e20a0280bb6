"""Handles for ops made of several core ops run one after another (e.g. the
hierarchical neighbor allreduce). Composite handles are negative ints, so
they never collide with the core's handles.

A composite makes progress in the background, like a single core op: one
driver thread per process waits for each composite's current step and starts
the next one, composites in the order they were started (the same order on
every rank, as their names already require). So ranks may wait for their
handles in any order, or run other ops meanwhile, without waiting for each
other's next step (when the caller's wait advanced its own composite only,
two ranks waiting for two composites in opposite orders hung).
"""
import collections
import itertools
import threading
from typing import Callable, Deque, Dict, List

from bluefog.torch import _C

_counter = itertools.count(1)
_composites: Dict[int, "Composite"] = {}
_lock = threading.Condition()
_queue: Deque["Composite"] = collections.deque()  # started and not finished, in start order
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

    def run(self):
        """Runs the remaining steps (on the driver thread); keeps the error, if any."""
        from bluefog.torch.mpi_ops import synchronize
        try:
            value = synchronize(self.handle)
            while self.steps:
                value = synchronize(self.steps.pop(0)(value))
            self.result = self.finish(value)
        except BaseException as err:  # noqa: BLE001  (re-raised by the caller's synchronize)
            self.error = err
            if self.label and type(err) in (ValueError, RuntimeError, TypeError):
                self.error = type(err)(f"{self.label}: {err}")  # the step's message names the step only
        self.done.set()


def _drive():
    while True:
        with _lock:
            while not _queue:
                _lock.wait()
            comp = _queue[0]
        comp.run()
        with _lock:
            _queue.popleft()


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
    return h


def poll_composite(handle: int) -> bool:
    comp = _composites.get(handle)
    if comp is None:
        raise ValueError(f"unknown handle {handle}")
    return comp.done.is_set()


def synchronize_composite(handle: int):
    comp = _composites.get(handle)
    if comp is None:
        raise ValueError(f"unknown handle {handle} (never returned by a nonblocking op, or already synchronized)")
    comp.done.wait()  # (Ctrl-C here leaves the handle to be synchronized again)
    if _composites.pop(handle, None) is None:
        raise ValueError(f"handle {handle} was synchronized by another thread while this one waited for it")
    if comp.error is not None:
        raise comp.error
    return comp.result
