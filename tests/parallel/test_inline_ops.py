"""Small allreduce / neighbor_allreduce ops whose data travels inside the
negotiation exchange (BLUEFOG_INLINE_BYTES, default 64 KiB over all ranks).

Each rank then reduces locally, in rank order, from the same bytes: results must
be exact against a reference summed in rank order, identical bit for bit on
every rank, and correct at every size around the threshold, where some ops go
inline and others through MPI (also when ranks submit in different groupings,
so one rank's request carries its data and another's does not).
tests/test_parallel_suites.py also runs the collective and neighbor suites with
BLUEFOG_INLINE_BYTES=0, so both paths are covered for every op and dtype.
"""
import os
import time

import numpy as np
import pytest
import torch

import bluefog.torch as bf
from bluefog.common import topology_util as tu

bf.init()
SIZE = bf.size()
RANK = bf.rank()
INLINE_BYTES = int(os.environ.get("BLUEFOG_INLINE_BYTES", 64 * 1024))
PER_RANK = INLINE_BYTES // SIZE  # the largest input that goes inline
pytestmark = pytest.mark.skipif(PER_RANK < 16, reason="BLUEFOG_INLINE_BYTES turns inline ops off in this run")


def rank_data(r, n, dtype, seed=0):
    g = torch.Generator().manual_seed(1000 * seed + r)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 3).to(dtype)


def rank_order_sum(n, dtype, seed=0):
    """What every rank must compute: ((x0 + x1) + x2) + ... in `dtype`."""
    acc = rank_data(0, n, dtype, seed).clone()
    for r in range(1, SIZE):
        acc = acc + rank_data(r, n, dtype, seed)
    return acc


def same_on_every_rank(t):
    gathered = bf.allgather(t.reshape(1, -1).contiguous().view(torch.uint8), name=None)
    first = gathered[0]
    for r in range(SIZE):
        assert torch.equal(gathered[r], first), f"rank {r}'s result differs from rank 0's"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_small_allreduce_is_exact_in_rank_order_and_identical(dtype):
    n = max(1, min(1000, PER_RANK // torch.empty((), dtype=dtype).element_size()))
    x = rank_data(RANK, n, dtype, seed=1)
    out = bf.allreduce(x, average=False, name=f"inline.exact.{dtype}")
    assert torch.equal(out, rank_order_sum(n, dtype, seed=1))
    assert torch.equal(x, rank_data(RANK, n, dtype, seed=1))  # input untouched
    same_on_every_rank(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_small_integer_allreduce_wraps_like_mpi(dtype):
    info = torch.iinfo(dtype)
    x = torch.full((33,), info.max, dtype=dtype)  # overflows for SIZE > 1
    out = bf.allreduce(x, average=False, name=f"inline.int.{dtype}")
    expected = ((int(info.max) * SIZE - info.min) % (info.max - info.min + 1)) + info.min
    assert out.tolist() == [expected] * 33


def test_average_in_place_and_zero_copy_semantics():
    x = torch.arange(10, dtype=torch.float32) + RANK
    bf.allreduce_(x, average=True, name="inline.avg_")
    torch.testing.assert_close(x, torch.arange(10, dtype=torch.float32) + (SIZE - 1) / 2)


@pytest.mark.parametrize("delta", [-4, 0, 4])
def test_sizes_around_the_threshold(delta):
    n = max(1, (PER_RANK + delta) // 4)
    x = rank_data(RANK, n, torch.float32, seed=2)
    out = bf.allreduce(x, average=False, name=f"inline.edge.{delta}")
    torch.testing.assert_close(out, rank_order_sum(n, torch.float32, seed=2), rtol=1e-5, atol=1e-5)
    same_on_every_rank(out)


def test_many_in_flight_mixed_inline_mpi_and_fused():
    sizes = [1, 7, 100, PER_RANK // 8, PER_RANK // 4, PER_RANK // 2, 3 * PER_RANK // 4, 2 * PER_RANK // 4 + 1]
    handles = []
    for i in range(40):
        n = max(1, sizes[i % len(sizes)])
        # Ranks submit in different groupings: some cycles carry several requests
        # on one rank (the inline budget runs out there) and one on another.
        if (RANK + i) % 3 == 0:
            time.sleep(0.001)
        handles.append((n, i, bf.allreduce_nonblocking(rank_data(RANK, n, torch.float64, seed=i),
                                                        average=False, name=f"inline.mix.{i}")))
    for n, i, h in handles:
        torch.testing.assert_close(bf.synchronize(h), rank_order_sum(n, torch.float64, seed=i))


@pytest.mark.skipif(SIZE < 2, reason="needs a rank that submits late")
def test_inputs_that_wait_for_a_late_rank_survive_later_rounds():
    # The last rank submits "late" 30 ms after the others, and in between it
    # and the others run other inline ops, so the rounds that carry their data
    # reuse the receive buffers in which the waiting op's inputs arrived. Those
    # inputs must have been kept (the core reads them in place only within the
    # round they arrive in).
    n = 48
    late = rank_data(RANK, n, torch.float64, seed=31)
    if RANK != SIZE - 1:
        h = bf.allreduce_nonblocking(late, average=False, name="inline.late")
    # The ops in between may run in fast rounds (when every rank picks one up in
    # the same exchange), which sum in MPI's order: integer values, exact in any.
    for i in range(6):
        between = [rank_data(r, n, torch.float64, seed=40 + i).round() for r in range(SIZE)]
        out = bf.allreduce(between[RANK], average=False, name=f"inline.between.{i}")
        torch.testing.assert_close(out, sum(between), rtol=0, atol=0)
    if RANK == SIZE - 1:
        time.sleep(0.03)
        h = bf.allreduce_nonblocking(late, average=False, name="inline.late")
    out = bf.synchronize(h)
    torch.testing.assert_close(out, rank_order_sum(n, torch.float64, seed=31), rtol=0, atol=0)
    same_on_every_rank(out)


def test_small_neighbor_allreduce_static_and_dynamic_weights():
    if SIZE == 1:
        x = torch.ones(5)
        torch.testing.assert_close(bf.neighbor_allreduce(x, name="inline.nar.single"), x)
        return
    bf.set_topology(tu.RingGraph(SIZE))
    x = torch.arange(8, dtype=torch.float64) * (RANK + 1)
    out = bf.neighbor_allreduce(x, name="inline.nar.static")
    W = np.zeros((SIZE, SIZE))
    for r in range(SIZE):
        srcs = sorted({(r - 1) % SIZE, (r + 1) % SIZE})
        for s in srcs + [r]:
            W[r, s] = 1.0 / (len(srcs) + 1)
    X = np.stack([np.arange(8) * (r + 1) for r in range(SIZE)])
    np.testing.assert_allclose(out.numpy(), (W @ X)[RANK], rtol=1e-12)

    # Dynamic one peer with a send weight: the receiver applies the sender's scale.
    dst = (RANK + 1) % SIZE
    src = (RANK - 1) % SIZE
    out = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={src: 1.0}, dst_weights={dst: 0.25},
                                name="inline.nar.dynamic")
    expected = 0.5 * np.arange(8) * (RANK + 1) + 0.25 * np.arange(8) * (src + 1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_float16_neighbor_allreduce_small():
    if SIZE == 1:
        return
    bf.set_topology(tu.RingGraph(SIZE))
    x = torch.full((16,), float(RANK + 1), dtype=torch.float16)
    out = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(RANK - 1) % SIZE: 0.5},
                                dst_weights={(RANK + 1) % SIZE: 1.0}, name="inline.nar.half")
    expected = 0.5 * (RANK + 1) + 0.5 * (((RANK - 1) % SIZE) + 1)
    torch.testing.assert_close(out, torch.full((16,), expected, dtype=torch.float16))
