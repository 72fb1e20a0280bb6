"""Fast rounds (BLUEFOG_FAST_ROUNDS, csrc/common/fast_round.h): after two
exchanges in a row that each ran one small allreduce, the next exchange first
tries to agree on and sum a small allreduce with ONE MPI allreduce of a
fixed-size message (each rank's exact description of the op it offers, then
its input). When the ranks offer different ops, or have more to say, the usual
allgather exchange follows in the same cycle.

Checked here: results (exact where the sum is exact in any order, close and
identical on every rank otherwise), that repeated ops do run in fast rounds
(and do not with BLUEFOG_FAST_ROUNDS=0, which tests/test_parallel_suites.py
also runs), and that everything the full exchange handles still works while
fast rounds are on: mismatches raise on every rank, different submission
orders, late ranks, other kinds of ops in between.

A rank whose op reaches its background thread a cycle late (a stalled rank on
a busy machine) sends that op through the full exchange instead: one hiccup
can cost up to three fast rounds, so the counts below leave that much room.
"""
import os
import time

import pytest
import torch

import bluefog.torch as bf
from bluefog.common.basics import get_basics

bf.init()
SIZE = bf.size()
RANK = bf.rank()
FAST = os.environ.get("BLUEFOG_FAST_ROUNDS", "1").lower() not in ("0", "false", "no", "off")
PER_RANK = int(os.environ.get("BLUEFOG_INLINE_BYTES", 64 * 1024)) // SIZE
pytestmark = pytest.mark.skipif(PER_RANK < 64, reason="BLUEFOG_INLINE_BYTES turns inline ops (and fast rounds) off")
multi_rank = pytest.mark.skipif(SIZE < 2, reason="needs ranks that can disagree")


def agreed():
    return get_basics().fast_round_counts()[1]


def warm_up(n=8, nbytes=32):
    """Small allreduces back to back: afterwards fast rounds are on (if enabled)."""
    for _ in range(n):
        bf.allreduce(torch.ones(nbytes // 4), average=False, name="fast.warm")


def same_on_every_rank(t):
    gathered = bf.allgather(t.reshape(1, -1).contiguous().view(torch.uint8), name=None)
    for r in range(SIZE):
        assert torch.equal(gathered[r], gathered[0]), f"rank {r}'s result differs from rank 0's"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
                                   torch.int64, torch.int8, torch.uint8])
@pytest.mark.parametrize("inplace", [False, True], ids=["out_of_place", "in_place"])
def test_repeated_allreduce_is_exact_and_runs_in_fast_rounds(dtype, inplace):
    n = 100
    before = agreed()
    for it in range(20):
        # Small integers: the sum is exact in every dtype and in any order.
        base = (torch.arange(n) % 7 + RANK + it % 3).to(dtype)
        x = base.clone()
        out = bf.allreduce_(x, average=False, name="fast.rep") if inplace else \
            bf.allreduce(x, average=False, name="fast.rep")
        expected = sum((torch.arange(n) % 7 + r + it % 3) for r in range(SIZE)).to(dtype)
        assert out.dtype == dtype and torch.equal(out, expected), (it, out[:8], expected[:8])
        if not inplace:
            assert torch.equal(x, base), "the input changed"
    ran_fast = agreed() - before
    if FAST:
        assert ran_fast >= 12, f"only {ran_fast} of 20 repeated allreduces ran in fast rounds"
    else:
        assert ran_fast == 0


def test_two_sizes_alternating_both_run_in_fast_rounds():
    before = agreed()
    for it in range(24):
        n = 16 if it % 2 else 1000
        out = bf.allreduce(torch.full((n,), float(RANK)), average=False, name=f"fast.alt.{n}")
        assert torch.equal(out, torch.full((n,), float(sum(range(SIZE)))))
    ran_fast = agreed() - before
    assert (ran_fast >= 14) if FAST else (ran_fast == 0), ran_fast


def test_integer_sums_wrap_in_fast_rounds():
    warm_up(nbytes=40)
    before = agreed()
    info = torch.iinfo(torch.int8)
    for _ in range(12):
        out = bf.allreduce(torch.full((40,), info.max, dtype=torch.int8), average=False, name="fast.wrap")
        expected = ((int(info.max) * SIZE - info.min) % 256) + info.min
        assert out.tolist() == [expected] * 40
    assert (agreed() - before >= 6) == FAST


# A fast round's message travels in pieces that fit an eager MPI message when
# it is small (4000 bytes a piece, at most 8), as one message otherwise: 1028
# bytes is one piece, 6000 two, and the largest input that can run in a fast
# round (PER_RANK: 16 KiB on 4 ranks, 32 KiB on 2) five or six pieces, or one
# message on 2 ranks.
@pytest.mark.parametrize("nbytes", [1028, 6000, PER_RANK], ids=["1028B", "6000B", "largest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_average_of_random_data_is_close_and_identical_on_every_rank(dtype, nbytes):
    n = nbytes // dtype.itemsize
    warm_up(nbytes=n * dtype.itemsize)
    before = agreed()
    for it in range(6):
        g = torch.Generator().manual_seed(100 * it + RANK)
        x = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
        out = bf.allreduce(x, average=True, name="fast.avg")
        ref = sum(torch.randn(n, generator=torch.Generator().manual_seed(100 * it + r), dtype=torch.float64)
                  .to(dtype).double() for r in range(SIZE)) / SIZE
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    same_on_every_rank(out)
    if FAST and SIZE > 1:
        assert agreed() - before >= 2, "the averages did not run in fast rounds"


def test_unnamed_ops_run_in_fast_rounds():
    before = agreed()
    for it in range(20):
        out = bf.allreduce(torch.full((16,), float(RANK + it)), average=False)
        assert torch.equal(out, torch.full((16,), float(sum(range(SIZE)) + SIZE * it)))
    assert (agreed() - before >= 12) == FAST


def test_a_name_too_long_for_the_header_takes_the_allgather_exchange():
    before = agreed()
    name = "fast.long." + "x" * 190  # the header holds about 110 bytes of name
    for it in range(10):
        out = bf.allreduce(torch.full((8,), float(RANK + it)), average=False, name=name)
        assert torch.equal(out, torch.full((8,), float(sum(range(SIZE)) + SIZE * it)))
    assert agreed() == before


@multi_rank
@pytest.mark.parametrize("case", ["shape", "dtype", "average", "size"])
def test_mismatch_in_fast_mode_raises_on_every_rank(case):
    warm_up(nbytes=64)
    odd = RANK == SIZE - 1
    x = torch.ones(16)
    average = False
    if case == "shape" and odd:
        x = torch.ones(4, 4)  # same bytes, other shape
    elif case == "dtype" and odd:
        x = torch.ones(16, dtype=torch.int32)  # same bytes, other dtype
    elif case == "average":
        average = odd
    elif case == "size" and odd:
        x = torch.ones(8)
    with pytest.raises(ValueError, match="fast.bad." + case):
        bf.allreduce(x, average=average, name="fast.bad." + case)
    # The job goes on, and fast rounds come back.
    warm_up(nbytes=64)
    before = agreed()
    for _ in range(10):
        assert torch.equal(bf.allreduce(torch.ones(16), average=False, name="fast.after"), torch.full((16,), 1.0 * SIZE))
    assert (agreed() - before >= 5) == FAST


def test_ranks_submitting_in_different_orders():
    warm_up()
    names = ["fast.order.a", "fast.order.b", "fast.order.c"]
    order = names if RANK % 2 == 0 else names[::-1]
    handles = {nm: bf.allreduce_nonblocking(torch.full((8,), float(i + RANK)), average=False, name=nm)
               for i, nm in sorted(enumerate(names), key=lambda p: order.index(p[1]))}
    for i, nm in enumerate(names):
        assert torch.equal(bf.synchronize(handles[nm]), torch.full((8,), float(i * SIZE + sum(range(SIZE)))))


def test_late_rank_and_other_ops_in_between():
    warm_up()
    if RANK == SIZE - 1:
        time.sleep(0.3)  # the others' fast rounds find this rank idle
    out = bf.allreduce(torch.full((8,), float(RANK)), average=False, name="fast.late")
    assert torch.equal(out, torch.full((8,), float(sum(range(SIZE)))))
    warm_up()
    b = bf.broadcast(torch.full((8,), float(RANK)), root_rank=0, name="fast.bcast")
    assert torch.equal(b, torch.zeros(8))
    g = bf.allgather(torch.full((1, 2), float(RANK)), name="fast.gather")
    assert torch.equal(g, torch.arange(SIZE, dtype=torch.float32).repeat_interleave(2).reshape(SIZE, 2))
    na = bf.neighbor_allreduce(torch.full((8,), float(RANK)), name="fast.neighbor")
    ins = bf.in_neighbor_ranks()
    assert torch.allclose(na, torch.full((8,), (RANK + sum(ins)) / (len(ins) + 1)))
    big = bf.allreduce(torch.ones(PER_RANK // 4 + 1), average=False, name="fast.big")  # too big to travel inline
    assert torch.equal(big, torch.full((PER_RANK // 4 + 1,), float(SIZE)))
    warm_up()
    assert torch.equal(bf.allreduce(torch.ones(8), name="fast.last"), torch.ones(8))
