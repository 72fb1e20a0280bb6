"""Handles for ops made of several core ops run one after another (e.g. the
hierarchical neighbor allreduce). Composite handles are negative ints, so
they never collide with the core's handles; poll() advances them."""
import itertools
from typing import Callable, Dict, List

from bluefog.torch import _C

_counter = itertools.count(1)
_composites: Dict[int, "Composite"] = {}


class Composite:
    """`steps[i](previous_result)` starts step i and returns a core handle;
    `finish(last_result)` gives the final result."""

    def __init__(self, first_handle: int, steps: List[Callable[[object], int]], finish: Callable[[object], object]):
        self.handle = first_handle
        self.steps = list(steps)
        self.finish = finish
        self.result = None
        self.done = False

    def _advance(self, block: bool) -> bool:
        from bluefog.torch.mpi_ops import synchronize
        while not self.done:
            if not block and not _C.poll(self.handle):
                return False
            value = synchronize(self.handle)
            if self.steps:
                self.handle = self.steps.pop(0)(value)
            else:
                self.result = self.finish(value)
                self.done = True
        return True


def start_composite(first_handle: int, steps, finish) -> int:
    """Registers a composite op; returns its (negative) handle."""
    h = -next(_counter)
    _composites[h] = Composite(first_handle, steps, finish)
    return h


def poll_composite(handle: int) -> bool:
    comp = _composites.get(handle)
    if comp is None:
        raise ValueError(f"unknown handle {handle}")
    return comp._advance(block=False)


def synchronize_composite(handle: int):
    comp = _composites.pop(handle, None)
    if comp is None:
        raise ValueError(f"unknown handle {handle} (never returned by a nonblocking op, or already synchronized)")
    comp._advance(block=True)
    return comp.result
