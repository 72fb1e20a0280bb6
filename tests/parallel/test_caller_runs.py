"""A thread blocked on its own op runs the op's negotiation cycle itself
(BLUEFOG_CALLER_RUNS, default on) instead of handing it to the background
thread and sleeping until it is woken.

Checked here: blocking ops are run by their callers (the core's exchange
counters say who ran each exchange; none with BLUEFOG_CALLER_RUNS=0, which
tests/test_parallel_suites.py also runs), results stay exact when caller-run
and background-run ops mix (nonblocking ops in flight, several Python threads
blocking at once, a caller that waits late, skip-negotiate mode, window ops,
which stay on the background thread), and an op whose caller never comes is
still run by the background thread.
"""
import os
import threading
import time

import pytest
import torch

import bluefog.torch as bf
from bluefog.common.basics import get_basics
from bluefog.torch import _C

bf.init()
SIZE = bf.size()
RANK = bf.rank()
CALLER_RUNS = os.environ.get("BLUEFOG_CALLER_RUNS", "1").lower() not in ("0", "false", "no", "off")


def counts():
    return get_basics().exchange_counts()


def full_sum(n, offset=0.0):
    """sum over ranks r of (r + 1 + offset) * ones(n)."""
    return torch.full((n,), sum(r + 1 + offset for r in range(SIZE)), dtype=torch.float32)


def test_blocking_ops_run_their_own_exchanges():
    bf.barrier()
    total0, callers0 = counts()
    n_ops = 120
    x = torch.full((1024,), float(RANK + 1))
    for i in range(n_ops):
        out = bf.allreduce(x, average=False, name="caller.allreduce")
        assert torch.equal(out, full_sum(1024)), f"op {i}"
    total1, callers1 = counts()
    assert total1 - total0 >= n_ops  # at least one exchange per op
    if CALLER_RUNS:
        # The background thread takes an owned op only when its idle tick
        # (100 ms) happens to fall while the op waits: a handful at most.
        assert callers1 - callers0 >= n_ops // 2, (total1 - total0, callers1 - callers0)
    else:
        assert callers1 == callers0


def test_every_blocking_op_kind_is_correct_when_caller_run():
    x = torch.full((8, 4), float(RANK + 1))
    assert torch.equal(bf.allreduce(x, average=False, name="caller.kind.ar"), full_sum(32).reshape(8, 4))
    y = x.clone()
    bf.allreduce_(y, average=True, name="caller.kind.ar_")
    assert torch.allclose(y, full_sum(32).reshape(8, 4) / SIZE)
    for root in range(SIZE):
        assert torch.equal(bf.broadcast(x, root, name=f"caller.kind.bc.{root}"), torch.full((8, 4), float(root + 1)))
    g = bf.allgather(torch.full((RANK + 1, 2), float(RANK)), name="caller.kind.ag")
    assert torch.equal(g, torch.cat([torch.full((r + 1, 2), float(r)) for r in range(SIZE)]))
    avg = bf.neighbor_allreduce(x, name="caller.kind.nar")
    in_nbrs = bf.in_neighbor_ranks()
    expected = (RANK + 1 + sum(r + 1 for r in in_nbrs)) / (len(in_nbrs) + 1)
    assert torch.allclose(avg, torch.full((8, 4), float(expected)))
    got = bf.neighbor_allgather(torch.full((1, 3), float(RANK)), name="caller.kind.nag")
    assert torch.equal(got, torch.tensor([[float(r)] * 3 for r in in_nbrs]).reshape(len(in_nbrs), 3))
    bf.barrier()


def test_nonblocking_ops_in_flight_when_a_blocking_op_is_waited_for():
    handles = [bf.allreduce_nonblocking(torch.full((256,), float(RANK + 1 + i)), average=False,
                                        name=f"caller.mixed.{i}") for i in range(12)]
    out = bf.allreduce(torch.full((256,), float(RANK + 1)), average=False, name="caller.mixed.blocking")
    assert torch.equal(out, full_sum(256))
    for i, h in enumerate(handles):
        assert torch.equal(bf.synchronize(h), full_sum(256, offset=i)), f"nonblocking op {i}"


def test_a_caller_that_waits_late_is_served_by_the_background_thread():
    # Rank 0 marks its op as waited-for at once (as the blocking forms do) but
    # does not wait for 0.3 s; the other ranks wait at once. The background
    # thread must still run it: every rank finishes, rank 0 before it waits.
    x = torch.full((64,), float(RANK + 1))
    out = torch.empty_like(x)
    handle = _C.allreduce_async(x, out, False, False, "caller.late", True)
    if RANK == 0:
        # poll() never runs a cycle itself: only the background thread can
        # finish the op here (its idle tick, 100 ms, picks it up).
        deadline = time.time() + 30
        while not bf.poll(handle):
            assert time.time() < deadline, "the background thread did not run the op whose caller was late"
            time.sleep(0.01)
    assert torch.equal(bf.synchronize(handle), full_sum(64))


def test_threads_blocking_at_the_same_time():
    errors = []

    def worker(tid):
        try:
            for i in range(30):
                v = torch.full((128,), float(RANK + 1 + tid))
                out = bf.allreduce(v, average=False, name=f"caller.thread{tid}.{i}")
                if not torch.equal(out, full_sum(128, offset=tid)):
                    errors.append(f"thread {tid} op {i}: {out[0].item()}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {tid}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is still blocked"
    assert not errors, errors


def test_skip_negotiate_mode_runs_blocking_ops_on_the_background_thread():
    bf.set_skip_negotiate_stage(True)
    try:
        _, callers0 = counts()
        for i in range(20):
            out = bf.allreduce(torch.full((32,), float(RANK + 1)), average=False, name=f"caller.skip.{i}")
            assert torch.equal(out, full_sum(32))
        _, callers1 = counts()
        assert callers1 == callers0  # no negotiation exchanges in this mode, by anyone
    finally:
        bf.set_skip_negotiate_stage(False)
    assert not bf.get_skip_negotiate_stage()


@pytest.mark.parametrize("accumulate", [False, True])
def test_blocking_window_ops_next_to_caller_run_ops(accumulate):
    # Window ops stay on the background thread, next to caller-run negotiated
    # ops (barrier); who runs win_create/win_free depends on timing.
    name = f"caller.win.{int(accumulate)}"
    x = torch.full((16,), float(RANK + 1))
    assert bf.win_create(x, name, zero_init=True)
    try:
        op = bf.win_accumulate if accumulate else bf.win_put
        op(x, name)
        bf.barrier()
        in_nbrs = bf.in_neighbor_ranks()
        out = bf.win_update(name, self_weight=0.0, neighbor_weights={r: 1.0 for r in in_nbrs}, clone=True)
        assert torch.equal(out, torch.full((16,), float(sum(r + 1 for r in in_nbrs))))
        bf.barrier()
    finally:
        bf.win_free(name)
