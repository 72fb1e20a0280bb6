"""Collective ops on every rank: allreduce, broadcast, allgather, handles,
barrier, basics, hierarchical local allreduce, skip-negotiate mode.

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py. Every rank's input is
a known function of its rank (`rank_input`), so each expected value is computed
here with torch from all ranks' inputs, independently of BlueFog. Every test
issues the same sequence of collective ops on every rank.
"""
import time

import pytest
import torch

import bluefog.torch as bf

bf.init()
SIZE = bf.size()
RANK = bf.rank()

ALLREDUCE_DTYPES = [torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
MOVE_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
               torch.float16, torch.float32, torch.float64]
SHAPES = [(), (0,), (0, 3), (17,), (3, 4, 5)]
SHAPE_IDS = ["scalar", "empty", "empty2d", "vector", "3d"]


@pytest.fixture(autouse=True)
def _init():
    bf.init()  # idempotent; resets the topology like user scripts do
    yield


def rank_input(r, shape, dtype):
    """Rank r's input: small integers (exact in every dtype, sums of 4 ranks too)."""
    n = 1
    for d in shape:
        n *= d
    values = torch.arange(n, dtype=torch.float64) % 5 + 2 * r + 1
    return values.reshape(shape).to(dtype)


def expected_sum(shape, dtype):
    total = sum(rank_input(r, shape, torch.float64) for r in range(SIZE))
    return torch.as_tensor(total, dtype=torch.float64).reshape(shape).to(dtype)


def expected_average(shape, dtype, ranks=None):
    ranks = list(range(SIZE)) if ranks is None else ranks
    total = sum(rank_input(r, shape, torch.float64) for r in ranks)
    return (torch.as_tensor(total, dtype=torch.float64).reshape(shape) / len(ranks)).to(dtype)


def check(actual, expected):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert tuple(actual.shape) == tuple(expected.shape), (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def noncontiguous_input(r, dtype):
    """A transposed (non-contiguous) view holding rank_input(r, (4, 6), dtype)."""
    t = rank_input(r, (4, 6), dtype).t().contiguous().t()
    assert not t.is_contiguous()
    check(t, rank_input(r, (4, 6), dtype))
    return t


def wait_done(handle, seconds=60.0):
    """Polls until the op is done; fails (instead of hanging) after `seconds`."""
    deadline = time.time() + seconds
    while not bf.poll(handle):
        assert time.time() < deadline, f"handle {handle} not done after {seconds} s"
        time.sleep(0.001)
    return True


# ---- allreduce ------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", ALLREDUCE_DTYPES, ids=str)
def test_allreduce_sum(dtype, shape):
    x = rank_input(RANK, shape, dtype)
    before = x.clone()
    exp = expected_sum(shape, dtype)
    check(bf.allreduce(x, average=False, name=f"ar.sum.{dtype}.{shape}"), exp)
    check(x, before)  # the input is unchanged
    check(bf.allreduce(x, average=False), exp)  # auto name
    h = bf.allreduce_nonblocking(x, average=False, name=f"ar.sum.nb.{dtype}.{shape}")
    assert isinstance(h, int)
    check(bf.synchronize(h), exp)
    h = bf.allreduce_nonblocking(x, average=False)
    assert wait_done(h) and bf.poll(h) is True
    check(bf.wait(h), exp)
    check(x, before)


def wrapped(total, dtype):
    """`total` (int64) reduced modulo the width of `dtype`, as torch's integer add wraps."""
    info = torch.iinfo(dtype)
    span = info.max - info.min + 1
    return ((total - info.min) % span + info.min).to(dtype)


# 16 elements travel inside the negotiation; 300 000 take MPI_Allreduce; 1.1 M
# (1 MiB and more) BlueFog's ring.
@pytest.mark.parametrize("n", [16, 300_000, 1_100_000], ids=["inline", "mpi", "ring"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16], ids=str)
def test_allreduce_small_int_sum_wraps(dtype, n):
    # Every rank holds values near the top of the range: any sum of 2+ ranks
    # overflows. Open MPI's vectorized MPI_SUM saturates these types instead.
    top = torch.iinfo(dtype).max
    x = (top - (torch.arange(n, dtype=torch.int64) % 7) - RANK).to(dtype)
    total = sum((top - (torch.arange(n, dtype=torch.int64) % 7) - r) for r in range(SIZE))
    exp = wrapped(total, dtype)
    check(bf.allreduce(x, average=False, name=f"ar.wrap.{dtype}.{n}"), exp)
    y = x.clone()
    check(bf.allreduce_(y, average=False, name=f"ar_.wrap.{dtype}.{n}"), exp)


# Large tensors through MPI's allreduce or (1 MiB and more) BlueFog's ring (n
# not divisible by the rank count, and a prime), random data: the exact result
# is not known in float, so every rank checks it is close to the float64 sum
# and that all ranks hold the same bits.
@pytest.mark.parametrize("n", [65_536, 65_537, 262_147], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_allreduce_large_same_bits_on_every_rank(dtype, n):
    def data(r):
        return torch.randn(n, generator=torch.Generator().manual_seed(1000 + r), dtype=torch.float64)
    x = data(RANK).to(dtype)
    before = x.clone()
    out = bf.allreduce(x, average=False, name=f"ar.big.{dtype}.{n}")
    check(x, before)
    ref = sum(data(r).to(dtype).to(torch.float64) for r in range(SIZE))
    tol = 0.05 * SIZE if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.to(torch.float64), ref, rtol=tol, atol=tol)
    everyone = bf.allgather(out.unsqueeze(0), name=f"ar.big.check.{dtype}.{n}")
    for r in range(SIZE):
        assert torch.equal(everyone[r], out), f"rank {r}'s result differs from rank {RANK}'s"
    avg = bf.allreduce(x, average=True, name=f"ar.big.avg.{dtype}.{n}")
    torch.testing.assert_close(avg.to(torch.float64), ref / SIZE, rtol=tol, atol=tol)


# Allreduces of 1 MiB and more run as BlueFog's own ring in the core
# (BLUEFOG_RING_ALLREDUCE_BYTES; tests/test_parallel_suites.py also runs this
# file with it off): element counts just over the threshold and not divisible
# by the rank count, every dtype, out of place, in place and fused, sums exact,
# averages, the input untouched, the same bits on every rank.
@pytest.mark.parametrize("dtype", ALLREDUCE_DTYPES + [torch.uint8, torch.int8, torch.int16], ids=str)
def test_large_allreduce_ring(dtype):
    n = (1 << 20) // torch.tensor([], dtype=dtype).element_size() + 2 * SIZE + 1
    x = rank_input(RANK, (n,), dtype)
    before = x.clone()
    exp = expected_sum((n,), dtype) if dtype.is_floating_point or dtype in (torch.int32, torch.int64) else \
        wrapped(sum(rank_input(r, (n,), torch.int64) for r in range(SIZE)), dtype)
    check(bf.allreduce(x, average=False, name=f"ar.ring.{dtype}"), exp)
    check(x, before)
    y = x.clone()
    check(bf.allreduce_(y, average=False, name=f"ar.ring_.{dtype}"), exp)
    check(y, exp)
    # Two submitted together are fused (one allreduce over the fusion buffer).
    z = x.clone()
    h1 = bf.allreduce_nonblocking(x, average=False, name=f"ar.ring.f1.{dtype}")
    h2 = bf.allreduce_nonblocking_(z, average=False, name=f"ar.ring.f2.{dtype}")
    check(bf.synchronize(h1), exp)
    bf.synchronize(h2)
    check(z, exp)
    if dtype.is_floating_point:
        avg = bf.allreduce(x, average=True, name=f"ar.ring.avg.{dtype}")
        check(avg, expected_average((n,), dtype))
        y = x.clone()
        check(bf.allreduce_(y, average=True, name=f"ar.ring_.avg.{dtype}"), expected_average((n,), dtype))
        everyone = bf.allgather(avg.unsqueeze(0), name=f"ar.ring.bits.{dtype}")
        for r in range(SIZE):
            assert torch.equal(everyone[r], avg), f"rank {r}'s average differs from rank {RANK}'s"
        local = list(range(RANK - bf.local_rank(), RANK - bf.local_rank() + bf.local_size()))
        check(bf.allreduce(x, is_hierarchical_local=True, name=f"ar.ring.local.{dtype}"),
              expected_average((n,), dtype, local))
    check(x, before)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_allreduce_average(dtype, shape):
    x = rank_input(RANK, shape, dtype)
    exp = expected_average(shape, dtype)
    check(bf.allreduce(x, name=f"ar.avg.{dtype}.{shape}"), exp)  # average is the default
    check(bf.allreduce(x, average=True), exp)
    check(bf.synchronize(bf.allreduce_nonblocking(x, average=True, name=f"ar.avg.nb.{dtype}.{shape}")), exp)
    check(x, rank_input(RANK, shape, dtype))


INPLACE_CASES = [(dtype, False) for dtype in ALLREDUCE_DTYPES] + [(dtype, True) for dtype in FLOAT_DTYPES]


@pytest.mark.parametrize("dtype,average", INPLACE_CASES, ids=[f"{d}-{'avg' if a else 'sum'}" for d, a in INPLACE_CASES])
def test_allreduce_inplace(dtype, average):
    shape = (3, 5)
    exp = expected_average(shape, dtype) if average else expected_sum(shape, dtype)
    x = rank_input(RANK, shape, dtype)
    ptr = x.data_ptr()
    out = bf.allreduce_(x, average=average, name=f"ar_.{dtype}.{average}")
    check(x, exp)
    check(out, exp)
    assert out.data_ptr() == ptr

    x = rank_input(RANK, shape, dtype)
    h = bf.allreduce_nonblocking_(x, average=average, name=f"ar_.nb.{dtype}.{average}")
    wait_done(h)
    out = bf.synchronize(h)
    check(x, exp)
    check(out, exp)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32, torch.float64], ids=str)
def test_allreduce_noncontiguous(dtype):
    exp = expected_sum((4, 6), dtype)
    x = noncontiguous_input(RANK, dtype)
    contiguous = bf.allreduce(x.contiguous(), average=False, name="ar.nc.ref")
    check(contiguous, exp)
    out = bf.allreduce(x, average=False, name="ar.nc")
    check(out, exp)
    check(x, rank_input(RANK, (4, 6), dtype))  # input unchanged
    check(bf.synchronize(bf.allreduce_nonblocking(x, average=False, name="ar.nc.nb")), exp)

    # In place on a non-contiguous view: the caller's tensor holds the result.
    y = noncontiguous_input(RANK, dtype)
    out = bf.allreduce_(y, average=False, name="ar_.nc")
    check(y, exp)
    check(out, exp)
    z = noncontiguous_input(RANK, dtype)
    bf.synchronize(bf.allreduce_nonblocking_(z, average=False, name="ar_.nc.nb"))
    check(z, exp)
    # A view into a bigger tensor: only the viewed elements change.
    big = torch.zeros(6, 8, dtype=dtype)
    view = big[1:5, 1:7]
    view.copy_(rank_input(RANK, (4, 6), dtype))
    bf.allreduce_(view, average=False, name="ar_.view")
    check(big[1:5, 1:7], exp)
    outside = big.clone()
    outside[1:5, 1:7] = 0
    assert (outside == 0).all()


# ---- broadcast ------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=str)
def test_broadcast(dtype, shape):
    x = rank_input(RANK, shape, dtype)
    for root in range(SIZE):
        exp = rank_input(root, shape, dtype)
        check(bf.broadcast(x, root_rank=root, name=f"bc.{dtype}.{shape}.{root}"), exp)
        check(x, rank_input(RANK, shape, dtype))  # input unchanged
        check(bf.broadcast(x, root), exp)  # auto name, positional root
        h = bf.broadcast_nonblocking(x, root, name=f"bc.nb.{dtype}.{shape}.{root}")
        wait_done(h)
        check(bf.synchronize(h), exp)
        check(x, rank_input(RANK, shape, dtype))


def test_broadcast_numpy_integer_root():
    """A numpy integer root (e.g. from np.argmax) works, as in BlueFog 0.3."""
    import numpy as np
    root = np.int64(SIZE - 1)
    check(bf.broadcast(rank_input(RANK, (3,), torch.float32), root, name="bc.np_root"),
          rank_input(SIZE - 1, (3,), torch.float32))


@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=str)
def test_broadcast_inplace(dtype):
    shape = (2, 7)
    for root in range(SIZE):
        exp = rank_input(root, shape, dtype)
        x = rank_input(RANK, shape, dtype)
        ptr = x.data_ptr()
        out = bf.broadcast_(x, root_rank=root, name=f"bc_.{dtype}.{root}")
        check(x, exp)
        check(out, exp)
        assert out.data_ptr() == ptr
        y = rank_input(RANK, shape, dtype)
        h = bf.broadcast_nonblocking_(y, root, name=f"bc_.nb.{dtype}.{root}")
        check(bf.synchronize(h), exp)
        check(y, exp)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.float32], ids=str)
def test_broadcast_noncontiguous(dtype):
    for root in range(SIZE):
        exp = rank_input(root, (4, 6), dtype)
        x = noncontiguous_input(RANK, dtype)
        check(bf.broadcast(x.contiguous(), root, name=f"bc.nc.ref.{root}"), exp)
        check(bf.broadcast(x, root, name=f"bc.nc.{root}"), exp)
        check(x, rank_input(RANK, (4, 6), dtype))
        out = bf.broadcast_(x, root, name=f"bc_.nc.{root}")
        check(x, exp)
        check(out, exp)
        y = noncontiguous_input(RANK, dtype)
        bf.synchronize(bf.broadcast_nonblocking_(y, root, name=f"bc_.nc.nb.{root}"))
        check(y, exp)


# ---- allgather ------------------------------------------------------------------
def expected_gather(shapes, dtype):
    parts = [rank_input(r, shapes[r], dtype) for r in range(SIZE)]
    parts = [p.reshape(1) if p.dim() == 0 else p for p in parts]
    return torch.cat(parts, dim=0)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=str)
def test_allgather(dtype, shape):
    x = rank_input(RANK, shape, dtype)
    exp = expected_gather([shape] * SIZE, dtype)
    check(bf.allgather(x, name=f"ag.{dtype}.{shape}"), exp)
    check(x, rank_input(RANK, shape, dtype))
    check(bf.allgather(x), exp)
    h = bf.allgather_nonblocking(x, name=f"ag.nb.{dtype}.{shape}")
    wait_done(h)
    check(bf.synchronize(h), exp)


@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=str)
def test_allgather_variable_first_dim(dtype):
    # first dim rank+1
    shapes = [(r + 1, 3, 2) for r in range(SIZE)]
    exp = expected_gather(shapes, dtype)
    assert exp.shape == (SIZE * (SIZE + 1) // 2, 3, 2)
    check(bf.allgather(rank_input(RANK, shapes[RANK], dtype), name=f"agv.{dtype}"), exp)
    # first dim = rank: rank 0 contributes nothing
    shapes = [(r, 3) for r in range(SIZE)]
    exp = expected_gather(shapes, dtype)
    assert exp.shape == (SIZE * (SIZE - 1) // 2, 3)
    check(bf.synchronize(bf.allgather_nonblocking(rank_input(RANK, shapes[RANK], dtype), name=f"agv0.{dtype}")),
          exp)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float64], ids=str)
def test_allgather_noncontiguous(dtype):
    exp = expected_gather([(4, 6)] * SIZE, dtype)
    x = noncontiguous_input(RANK, dtype)
    check(bf.allgather(x.contiguous(), name="ag.nc.ref"), exp)
    check(bf.allgather(x, name="ag.nc"), exp)
    check(bf.synchronize(bf.allgather_nonblocking(x, name="ag.nc.nb")), exp)
    check(x, rank_input(RANK, (4, 6), dtype))


# ---- ordering, names, many ops in flight ---------------------------------------------
def test_different_enqueue_orders():
    """Even and odd ranks enqueue the same named ops in opposite orders."""
    ops = [
        ("ord.ar.f32", lambda: bf.allreduce_nonblocking(rank_input(RANK, (5,), torch.float32), name="ord.ar.f32"),
         expected_average((5,), torch.float32)),
        ("ord.ar.i64", lambda: bf.allreduce_nonblocking(rank_input(RANK, (3, 2), torch.int64), average=False,
                                                        name="ord.ar.i64"),
         expected_sum((3, 2), torch.int64)),
        ("ord.bc", lambda: bf.broadcast_nonblocking(rank_input(RANK, (4,), torch.int16), SIZE - 1, name="ord.bc"),
         rank_input(SIZE - 1, (4,), torch.int16)),
        ("ord.ag", lambda: bf.allgather_nonblocking(rank_input(RANK, (RANK + 1,), torch.float64), name="ord.ag"),
         expected_gather([(r + 1,) for r in range(SIZE)], torch.float64)),
        ("ord.ar.f64", lambda: bf.allreduce_nonblocking(rank_input(RANK, (7,), torch.float64), average=False,
                                                        name="ord.ar.f64"),
         expected_sum((7,), torch.float64)),
    ]
    for rotation in range(3):
        order = list(range(len(ops)))
        order = order[rotation:] + order[:rotation]
        if RANK % 2 == 1:
            order.reverse()
        handles = {}
        for i in order:
            handles[i] = ops[i][1]()
        # Synchronize in yet another rank-dependent order.
        for i in (order if RANK % 2 == 0 else sorted(order)):
            check(bf.synchronize(handles[i]), ops[i][2])


def test_many_ops_in_flight():
    """100 nonblocking ops of mixed sizes and dtypes, then synchronized (small
    same-dtype allreduces fuse; the big ones do not fit one fusion buffer
    with others)."""
    specs = []
    for i in range(100):
        kind = i % 10
        if kind == 7:
            specs.append(("bc", (i % 13 + 1,), torch.int32))
        elif kind == 9:
            specs.append(("ag", (i % 4 + 1, 2), torch.float32))
        else:
            n = [1, 3, 100, 1000, 4, 70000][i % 6]
            dtype = [torch.float32, torch.float64, torch.int32][i % 3]
            specs.append(("ar", (n,), dtype))
    handles = []
    for i, (kind, shape, dtype) in enumerate(specs):
        x = rank_input(RANK, shape, dtype)
        if kind == "ar":
            handles.append(bf.allreduce_nonblocking(x, average=False, name=f"many.{i}"))
        elif kind == "bc":
            handles.append(bf.broadcast_nonblocking(x, i % SIZE, name=f"many.{i}"))
        else:
            handles.append(bf.allgather_nonblocking(x, name=f"many.{i}"))
    assert len(set(handles)) == 100
    for i, ((kind, shape, dtype), h) in enumerate(zip(specs, handles)):
        if kind == "ar":
            exp = expected_sum(shape, dtype)
        elif kind == "bc":
            exp = rank_input(i % SIZE, shape, dtype)
        else:
            exp = expected_gather([shape] * SIZE, dtype)
        check(bf.synchronize(h), exp)


def test_auto_names_and_explicit_names():
    x = rank_input(RANK, (6,), torch.float32)
    exp = expected_sum((6,), torch.float32)
    # Several unnamed ops in flight at once: auto names match across ranks.
    handles = [bf.allreduce_nonblocking(x, average=False) for _ in range(5)]
    handles += [bf.broadcast_nonblocking(x, 0) for _ in range(3)]
    handles += [bf.allgather_nonblocking(x) for _ in range(3)]
    assert len(set(handles)) == len(handles)
    for h in handles[:5]:
        check(bf.synchronize(h), exp)
    for h in handles[5:8]:
        check(bf.synchronize(h), rank_input(0, (6,), torch.float32))
    for h in handles[8:]:
        check(bf.synchronize(h), expected_gather([(6,)] * SIZE, torch.float32))
    # An explicit name can be reused once its op has completed.
    for _ in range(3):
        check(bf.allreduce(x, average=False, name="reused.name"), exp)
    # Names are arbitrary strings.
    check(bf.allreduce(x, average=False, name="weird name/with:chars\"and'quotes é"), exp)


# ---- handles -----------------------------------------------------------------------
def test_poll_and_synchronize_return_values():
    x = rank_input(RANK, (3,), torch.float64)
    h = bf.allreduce_nonblocking(x, average=False, name="poll.test")
    polled = bf.poll(h)
    assert isinstance(polled, bool)
    wait_done(h)
    assert bf.poll(h) is True
    assert bf.poll(h) is True  # polling does not consume the handle
    check(bf.synchronize(h), expected_sum((3,), torch.float64))


def test_unknown_handle_raises():
    with pytest.raises(ValueError, match="handle"):
        bf.synchronize(987654321)
    with pytest.raises(ValueError, match="handle"):
        bf.poll(987654321)
    with pytest.raises(ValueError):
        bf.synchronize(-5)
    for bad in (None, "3", 1.0):  # used to be TypeError: '<' not supported ...
        with pytest.raises(ValueError, match="expected a handle"):
            bf.synchronize(bad)
        with pytest.raises(ValueError, match="expected a handle"):
            bf.poll(bad)


def test_synchronize_twice_raises():
    x = rank_input(RANK, (2,), torch.float32)
    h = bf.allreduce_nonblocking(x, average=False, name="sync.twice")
    check(bf.synchronize(h), expected_sum((2,), torch.float32))
    with pytest.raises(ValueError, match="handle"):
        bf.synchronize(h)
    with pytest.raises(ValueError, match="handle"):
        bf.poll(h)
    h = bf.broadcast_nonblocking_(x, 0, name="sync.twice.inplace")
    bf.synchronize(h)
    with pytest.raises(ValueError, match="handle"):
        bf.wait(h)


def test_two_threads_synchronizing_one_handle():
    """Two threads wait for the same handle: one gets the result, the other a
    ValueError (never an IndexError, and neither hangs)."""
    import threading
    for i in range(30):
        x = rank_input(RANK, (4,), torch.float32)
        h = bf.allreduce_nonblocking(x, average=False, name=f"two.waiters.{i}")
        got = []

        def wait():
            try:
                got.append(("ok", bf.synchronize(h)))
            except Exception as e:  # noqa: BLE001  (recorded and checked below)
                got.append((type(e).__name__, str(e)))
        threads = [threading.Thread(target=wait) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), f"a waiter hung (round {i})"
        kinds = sorted(k for k, _ in got)
        assert kinds == ["ValueError", "ok"], got
        check(next(v for k, v in got if k == "ok"), expected_sum((4,), torch.float32))
        assert "handle" in next(v for k, v in got if k == "ValueError")


@pytest.mark.parametrize("make", [lambda: torch.ones(4, device="meta"), lambda: torch.ones(4).to_sparse()],
                         ids=["meta", "sparse"])
def test_tensor_without_dense_memory_is_refused(make):
    """A meta tensor has no memory (MPI got a null pointer: a segfault); a
    sparse one has no dense buffer. Both raise ValueError on every rank."""
    for op in (lambda t: bf.allreduce(t, name="nomem.ar"), lambda t: bf.allreduce_(t, name="nomem.ar_"),
               lambda t: bf.allgather(t, name="nomem.ag"), lambda t: bf.broadcast(t, 0, name="nomem.bc"),
               lambda t: bf.neighbor_allreduce(t, name="nomem.nar")):
        with pytest.raises(ValueError, match="dense|device 'meta'"):
            op(make())
    check(bf.allreduce(rank_input(RANK, (2,), torch.float32), average=False, name="nomem.after"),
          expected_sum((2,), torch.float32))


@pytest.mark.parametrize("n", [1, 1_000_000], ids=["small", "large"])
def test_suspend_pauses_ops_until_resume(monkeypatch, n):
    """suspend() (interactive sessions: faked here) pauses the background loop:
    an op started meanwhile does not complete until resume(). (A small op used
    to go through: the loop was already waiting for work when suspended.)"""
    from bluefog.common.basics import get_basics
    monkeypatch.setattr(type(get_basics()), "_in_ipython", staticmethod(lambda: True))
    bf.barrier()
    bf.suspend()
    try:
        h = bf.allreduce_nonblocking(torch.ones(n), average=False, name=f"suspended.{n}")
        time.sleep(0.5)
        done = bf.poll(h)
    finally:
        bf.resume()
    assert not done, "an op completed while BlueFog was suspended"
    assert torch.equal(bf.synchronize(h), torch.full((n,), float(SIZE)))


# ---- barrier ---------------------------------------------------------------------
def _barrier_is_a_barrier(tag):
    """Nobody leaves the barrier before the last rank arrives (rank 0 arrives
    0.3 s late). All ranks run on one host, so time.time() is comparable."""
    if RANK == 0:
        time.sleep(0.3)
    arrived = time.time()
    bf.barrier()
    left = time.time()
    times = bf.allgather(torch.tensor([[arrived, left]], dtype=torch.float64), name=f"barrier.times.{tag}")
    assert times.shape == (SIZE, 2)
    assert times[:, 1].min().item() >= times[:, 0].max().item()


def test_barrier():
    for i in range(3):
        bf.barrier()
    _barrier_is_a_barrier("negotiated")
    # Ops around barriers still work.
    x = rank_input(RANK, (4,), torch.float32)
    h = bf.allreduce_nonblocking(x, average=False, name="around.barrier")
    bf.barrier()
    check(bf.synchronize(h), expected_sum((4,), torch.float32))


# ---- basics ----------------------------------------------------------------------
def _hostnames():
    """Every rank's hostname, gathered with bf.allgather (fixed-width bytes)."""
    import socket
    raw = socket.gethostname().encode()[:64].ljust(64, b"\0")
    gathered = bf.allgather(torch.tensor(list(raw), dtype=torch.uint8).reshape(1, 64), name="basics.hostnames")
    return [bytes(row.tolist()).rstrip(b"\0").decode() for row in gathered]


def test_basics():
    size, rank = bf.size(), bf.rank()
    assert isinstance(size, int) and isinstance(rank, int)
    assert size >= 1 and 0 <= rank < size
    ranks = bf.allgather(torch.tensor([rank], dtype=torch.int64), name="basics.ranks")
    assert ranks.tolist() == list(range(size))  # distinct ranks, in rank order
    local_size, local_rank = bf.local_size(), bf.local_rank()
    assert 1 <= local_size <= size and 0 <= local_rank < local_size
    assert bf.is_homogeneous() in (True, False)
    import os
    if "BLUEFOG_NODES_PER_MACHINE" not in os.environ:
        # Default split: the ranks sharing this host.
        hosts = _hostnames()
        mine = [r for r in range(size) if hosts[r] == hosts[rank]]
        assert local_size == len(mine)
        assert local_rank == mine.index(rank)
    if bf.is_homogeneous():
        assert size % local_size == 0
        assert bf.machine_size() == size // local_size
        assert bf.machine_rank() == rank // local_size
        assert local_rank == rank % local_size
    flags = [bf.mpi_threads_supported(), bf.unified_mpi_window_model_supported(), bf.nccl_built(),
             bf.is_homogeneous()]
    for f in flags:
        assert isinstance(f, bool)
    # The same answers on every rank.
    t = torch.tensor([[int(f) for f in flags] + [size, local_size]], dtype=torch.int64)
    everyone = bf.allgather(t, name="basics.flags")
    assert (everyone == t).all()
    assert bf.get_skip_negotiate_stage() is False


# ---- hierarchical local allreduce -------------------------------------------------------
def test_hierarchical_local_allreduce():
    local_size = bf.local_size()
    start = bf.rank() - bf.local_rank()
    local_ranks = list(range(start, start + local_size))
    if bf.is_homogeneous():
        assert local_ranks == list(range(bf.machine_rank() * local_size, (bf.machine_rank() + 1) * local_size))
    import os
    if "BLUEFOG_NODES_PER_MACHINE" not in os.environ and len(set(_hostnames())) == 1:
        # The driver runs every rank on one machine: the local group is everyone.
        assert local_ranks == list(range(SIZE))
    for dtype in (torch.float32, torch.float64, torch.float16):
        x = rank_input(RANK, (3, 4), dtype)
        exp = expected_average((3, 4), dtype, local_ranks)
        check(bf.allreduce(x, is_hierarchical_local=True, name=f"hier.{dtype}"), exp)
        check(bf.synchronize(bf.allreduce_nonblocking(x, average=True, is_hierarchical_local=True,
                                                      name=f"hier.nb.{dtype}")), exp)
        y = x.clone()
        bf.allreduce_(y, is_hierarchical_local=True, name=f"hier_.{dtype}")
        check(y, exp)
    # The local sum too.
    x = rank_input(RANK, (5,), torch.int32)
    exp = sum(rank_input(r, (5,), torch.int64) for r in local_ranks).to(torch.int32)
    check(bf.allreduce(x, average=False, is_hierarchical_local=True, name="hier.sum"), exp)


# ---- skip-negotiate mode ---------------------------------------------------------------
def test_skip_negotiate_stage():
    # No try/finally: a rank that failed inside skip mode must not issue a
    # collective the others are not issuing (that would hang, not fail); the
    # parallel conftest makes a failed rank exit, which ends the job.
    assert bf.get_skip_negotiate_stage() is False
    bf.set_skip_negotiate_stage(True)
    flag_after_on = bf.get_skip_negotiate_stage()  # checked below, after every rank left skip mode
    # Same ops in the same order on every rank.
    for dtype in (torch.float32, torch.int64):
        x = rank_input(RANK, (4, 3), dtype)
        check(bf.allreduce(x, average=False, name=f"skip.ar.{dtype}"), expected_sum((4, 3), dtype))
    x = rank_input(RANK, (5,), torch.float64)
    check(bf.allreduce(x, name="skip.avg"), expected_average((5,), torch.float64))
    for root in range(SIZE):
        check(bf.broadcast(x, root, name=f"skip.bc.{root}"), rank_input(root, (5,), torch.float64))
    check(bf.allgather(rank_input(RANK, (RANK + 1, 2), torch.int32), name="skip.ag"),
          expected_gather([(r + 1, 2) for r in range(SIZE)], torch.int32))
    handles = [bf.allreduce_nonblocking(rank_input(RANK, (i + 1,), torch.float32), average=False,
                                        name=f"skip.nb.{i}") for i in range(10)]
    for i, h in enumerate(handles):
        check(bf.synchronize(h), expected_sum((i + 1,), torch.float32))
    y = noncontiguous_input(RANK, torch.float32)
    bf.allreduce_(y, average=False, name="skip.inplace")
    check(y, expected_sum((4, 6), torch.float32))
    check(bf.allreduce(x, average=False), expected_sum((5,), torch.float64))  # auto name
    _barrier_is_a_barrier("skip")
    bf.set_skip_negotiate_stage(False)
    flag_after_off = bf.get_skip_negotiate_stage()
    assert flag_after_on is True, "get_skip_negotiate_stage() right after set_skip_negotiate_stage(True)"
    assert flag_after_off is False, "get_skip_negotiate_stage() right after set_skip_negotiate_stage(False)"
    # Back to negotiation: different orders work again.
    a = rank_input(RANK, (2,), torch.float32)
    names = ["after.skip.a", "after.skip.b"]
    if RANK % 2:
        names.reverse()
    handles = {n: bf.allreduce_nonblocking(a, average=False, name=n) for n in names}
    for n in sorted(handles):
        check(bf.synchronize(handles[n]), expected_sum((2,), torch.float32))


def test_large_outputs_come_from_the_output_cache_and_behave_like_tensors():
    from bluefog.torch import _C
    n = 300 * 1024  # 1.2 MB of float32: above the pool's 256 KiB minimum
    x = torch.full((n,), float(RANK + 1))
    expected = float(sum(range(1, SIZE + 1)))
    first = bf.allreduce(x, average=False, name="pool.a")
    assert first.data_ptr() % 64 == 0
    assert (first.data_ptr() - x.data_ptr()) % 4096 != 0  # not at the input's page offset
    ptr = first.data_ptr()
    del first  # back to the cache...
    assert _C.cached_output_bytes() >= n * 4
    again = bf.allreduce(x, average=False, name="pool.b")  # ...and reused, already mapped
    assert again.data_ptr() == ptr
    assert torch.equal(again, torch.full((n,), expected))
    bc = bf.broadcast(x, root_rank=0, name="pool.bc")
    assert torch.equal(bc, torch.full((n,), 1.0))
    # An ordinary resizable CPU tensor: growing it moves it to new memory.
    again.resize_(2 * n)
    again[n:] = 7
    assert again[:n].eq(expected).all() and again[n:].eq(7).all()
    assert again.grad_fn is None and not again.requires_grad


@pytest.mark.parametrize("nbytes", [4, 1000, 4096, 8188])
def test_small_outputs_come_from_the_output_cache(nbytes):
    """Below 8 KiB too (256-byte size classes): a dropped output's memory is
    reused by the next output of its class, not given back to malloc."""
    from bluefog.torch import _C
    x = torch.full((nbytes // 4,), float(RANK + 1))
    expected = torch.full((nbytes // 4,), float(sum(range(1, SIZE + 1))))
    first = bf.allreduce(x, average=False, name=f"small.pool.{nbytes}.a")
    assert torch.equal(first, expected) and first.data_ptr() % 64 == 0
    ptr = first.data_ptr()
    cached = _C.cached_output_bytes()
    del first
    assert _C.cached_output_bytes() >= cached + nbytes
    again = bf.allreduce(x, average=False, name=f"small.pool.{nbytes}.b")
    assert again.data_ptr() == ptr and torch.equal(again, expected)
    again.resize_(3 * nbytes // 4)  # an ordinary resizable tensor
    again[nbytes // 4:] = 5
    assert torch.equal(again[:nbytes // 4], expected) and again[nbytes // 4:].eq(5).all()


@pytest.mark.parametrize("op", ["allreduce_", "broadcast_", "allreduce_nonblocking_", "broadcast_nonblocking_"])
def test_in_place_ops_bump_the_autograd_version(op):
    """An in-place collective counts as an in-place op for autograd (as torch's
    own do): a tensor saved for backward and then overwritten makes backward()
    raise instead of silently computing with the new values (it returned
    [4, 8] instead of [2, 4] for d/dw sum((w * 1)^2) with w = [1, 2])."""
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    a = w * 1.0
    loss = (a * a).sum()  # saves a
    before = a._version
    if op == "allreduce_":
        bf.allreduce_(a, average=True, name=f"ver.{op}")
    elif op == "broadcast_":
        bf.broadcast_(a, 0, name=f"ver.{op}")
    elif op == "allreduce_nonblocking_":
        bf.synchronize(bf.allreduce_nonblocking_(a, average=True, name=f"ver.{op}"))
    else:
        bf.synchronize(bf.broadcast_nonblocking_(a, 0, name=f"ver.{op}"))
    assert a._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # Out of place: nothing saved is touched, and backward works.
    b = w * 1.0
    loss = (b * b).sum()
    bf.allreduce(b, name=f"ver.out.{op}")
    loss.backward()
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("contiguous", [True, False])
def test_in_place_result_comes_back_outside_autograd(contiguous):
    """In place on a leaf that requires grad: the values arrive, the version is
    bumped, and no autograd node appears, whether the core wrote the tensor
    itself (contiguous) or its result is copied back (before, for a
    non-contiguous one: RuntimeError 'a leaf Variable that requires grad is
    being used in an in-place operation')."""
    shape = (3, 2)
    leaf = torch.empty(shape, dtype=torch.float64) if contiguous else \
        torch.empty_strided(shape, (1, 3), dtype=torch.float64)
    with torch.no_grad():
        leaf.copy_(rank_input(RANK, shape, torch.float64))
    leaf.requires_grad_()
    assert leaf.is_contiguous() == contiguous
    before = leaf._version
    bf.allreduce_(leaf, average=False, name=f"leaf.inplace.{contiguous}")
    check(leaf.detach(), expected_sum(shape, torch.float64))
    assert leaf._version > before and leaf.grad_fn is None and leaf.is_leaf and leaf.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU tensors are staged through the CPU)")
def test_cuda_tensors_come_back_on_their_device():
    """Out-of-place results of GPU inputs are on the input's GPU (a nonblocking
    broadcast or allgather returned a CPU tensor), and in-place ops write back."""
    x = rank_input(RANK, (5,), torch.float32).cuda()
    outs = {
        "allreduce": bf.allreduce(x, average=False, name="cuda.ar"),
        "allreduce_nb": bf.synchronize(bf.allreduce_nonblocking(x, average=False, name="cuda.ar.nb")),
        "broadcast": bf.broadcast(x, 0, name="cuda.bc"),
        "broadcast_nb": bf.synchronize(bf.broadcast_nonblocking(x, 0, name="cuda.bc.nb")),
        "allgather": bf.allgather(x, name="cuda.ag"),
        "allgather_nb": bf.synchronize(bf.allgather_nonblocking(x, name="cuda.ag.nb")),
        "neighbor_allreduce": bf.neighbor_allreduce(x, name="cuda.nar"),
    }
    for what, out in outs.items():
        assert out.device == x.device, (what, out.device)
    check(outs["allreduce"].cpu(), expected_sum((5,), torch.float32))
    check(outs["broadcast_nb"].cpu(), rank_input(0, (5,), torch.float32))
    y = x.clone()
    bf.allreduce_(y, average=False, name="cuda.ar_")
    assert y.device == x.device
    check(y.cpu(), expected_sum((5,), torch.float32))
    # Dense but not contiguous on the GPU (channels_last, transposed): staged densely.
    cl = rank_input(RANK, (1, 2, 2, 3), torch.float32).cuda().to(memory_format=torch.channels_last)
    check(bf.allreduce(cl, average=False, name="cuda.cl").cpu(), expected_sum((1, 2, 2, 3), torch.float32))
    t = rank_input(RANK, (3, 2), torch.float32).cuda().t()
    check(bf.allreduce(t, average=False, name="cuda.t").cpu(), expected_sum((3, 2), torch.float32).t())
    # In place on a GPU leaf that requires grad, nonblocking: written back at synchronize.
    leaf = rank_input(RANK, (4,), torch.float32).cuda().requires_grad_()
    bf.synchronize(bf.allreduce_nonblocking_(leaf, average=False, name="cuda.leaf"))
    check(leaf.detach().cpu(), expected_sum((4,), torch.float32))
    assert leaf.grad_fn is None


def test_ops_started_in_inference_mode_complete_outside_it():
    """An op started under torch.inference_mode() and waited for outside it
    returns its result (bumping an inference tensor's version raises, so only
    tensors written in place that autograd tracks get a bump)."""
    x = rank_input(RANK, (3,), torch.float32)
    with torch.inference_mode():
        h = bf.allreduce_nonblocking(x, average=False, name="inference.out")
        y = rank_input(RANK, (3,), torch.float32)
        h2 = bf.allreduce_nonblocking_(y, average=False, name="inference.in")
    check(bf.synchronize(h), expected_sum((3,), torch.float32))
    check(bf.synchronize(h2), expected_sum((3,), torch.float32))
