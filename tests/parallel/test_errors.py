"""Error handling of the collective ops, run on 1, 2 and 4 ranks.

Cross-rank mismatches (the same op name with a different dtype / shape / op
kind / root_rank / average flag on some ranks) must raise ValueError on EVERY
rank, naming the op, the field and the disagreeing ranks; afterwards the next
op must work. Local errors (duplicate name in flight, unsupported dtype) raise
on the rank that made them. Every op here has an explicit name: an auto name
comes from the handle counter, which a rank-local failure may advance on one
rank only.
"""
import threading
import time

import pytest
import torch

import bluefog.torch as bf

bf.init()
SIZE = bf.size()
RANK = bf.rank()


@pytest.fixture(autouse=True)
def _init():
    bf.init()
    yield


def rank_input(r, shape, dtype=torch.float32):
    n = 1
    for d in shape:
        n *= d
    return (torch.arange(n, dtype=torch.float64) % 5 + 2 * r + 1).reshape(shape).to(dtype)


def expected_sum(shape, dtype=torch.float32):
    return sum(rank_input(r, shape, torch.float64) for r in range(SIZE)).reshape(shape).to(dtype)


def check(actual, expected):
    assert actual.dtype == expected.dtype and tuple(actual.shape) == tuple(expected.shape), (actual, expected)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def next_op_works(tag):
    """After an error, a fresh op completes correctly on every rank."""
    x = rank_input(RANK, (3, 2))
    check(bf.allreduce(x, average=False, name=f"after.{tag}"), expected_sum((3, 2)))
    check(bf.broadcast(x, SIZE - 1, name=f"after.bc.{tag}"), rank_input(SIZE - 1, (3, 2)))


def odd(rank):
    return rank % 2 == 1


# Each case: (field named in the error, function(deviant: bool, name) -> handle).
# The deviant ranks submit the odd one out; the rest agree.
CASES = {
    "dtype": lambda dev, name: bf.allreduce_nonblocking(
        rank_input(RANK, (4,), torch.float64 if dev else torch.float32), average=False, name=name),
    "shape": lambda dev, name: bf.allreduce_nonblocking(
        rank_input(RANK, (5,) if dev else (4,)), average=False, name=name),
    "op": lambda dev, name: (bf.allreduce_nonblocking(rank_input(RANK, (4,)), average=False, name=name) if dev
                             else bf.broadcast_nonblocking(rank_input(RANK, (4,)), 0, name=name)),
    "root_rank": lambda dev, name: bf.broadcast_nonblocking(rank_input(RANK, (4,)), 0 if dev else SIZE - 1,
                                                            name=name),
    "average": lambda dev, name: bf.allreduce_nonblocking(rank_input(RANK, (4,)), average=dev, name=name),
    "allgather shape": lambda dev, name: bf.allgather_nonblocking(
        rank_input(RANK, (2, 3) if dev else (2, 4)), name=name),
    "is_hierarchical_local": lambda dev, name: bf.allreduce_nonblocking(
        rank_input(RANK, (4,)), average=False, is_hierarchical_local=dev, name=name),
}
# Words the error must contain for each case (the field, or both op kinds).
FIELD_WORDS = {"dtype": ["dtype", "float64", "float32"], "shape": ["shape"], "op": ["allreduce", "broadcast"],
               "root_rank": ["root_rank"], "average": ["average"], "allgather shape": ["shape"],
               "is_hierarchical_local": ["hierarchical"]}


def single_rank_expected(case):
    """What the deviant variant returns when it is the only rank."""
    if case == "dtype":
        return rank_input(0, (4,), torch.float64)
    if case == "shape":
        return rank_input(0, (5,))
    if case == "allgather shape":
        return rank_input(0, (2, 3))
    return rank_input(0, (4,))  # a sum, broadcast from 0, or average over one rank


@pytest.fixture(params=["negotiated", "skip_negotiate"])
def mode(request):
    """Runs the test with negotiation, and again in skip-negotiate mode, where
    each rank runs its ops in its own enqueue order and the ranks compare a
    digest of each op before running it."""
    bf.set_skip_negotiate_stage(request.param == "skip_negotiate")
    yield request.param
    bf.set_skip_negotiate_stage(False)


@pytest.mark.parametrize("who", ["rank0", "odd"])
@pytest.mark.parametrize("case", list(CASES))
def test_mismatch_raises_on_every_rank(case, who, mode):
    name = f"mm.{list(CASES).index(case)}.{who}.{mode}"  # no field word in the name itself
    deviant = (RANK == 0) if who == "rank0" else odd(RANK)
    if SIZE == 1:
        # No other rank to disagree with: the op must simply succeed.
        check(bf.synchronize(CASES[case](True, name)), single_rank_expected(case))
        next_op_works(name)
        return
    deviants = [r for r in range(SIZE) if (r == 0 if who == "rank0" else odd(r))]
    others = [r for r in range(SIZE) if r not in deviants]
    handle = CASES[case](deviant, name)
    with pytest.raises(ValueError) as info:
        bf.synchronize(handle)
    message = str(info.value)
    assert name in message, message
    for word in FIELD_WORDS[case]:
        assert word in message, (word, message)
    assert str(deviants) in message and str(others) in message, message
    next_op_works(name)


def test_skip_mode_ops_submitted_in_different_orders_fail_on_every_rank():
    """Skip-negotiate mode pairs ops by each rank's enqueue order, not by name.
    Two same-shape allreduces submitted in opposite orders on odd ranks used to
    be summed crosswise (a silently wrong answer); now each pairing of
    different names fails on every rank, naming both. With negotiation the
    same code is fine (ops are matched by name)."""
    if SIZE == 1:
        pytest.skip("needs a rank whose order differs")
    names = ["order.a", "order.b"]
    if odd(RANK):
        names.reverse()
    bf.set_skip_negotiate_stage(True)
    try:
        handles = [bf.allreduce_nonblocking(rank_input(RANK, (3,)), average=False, name=n) for n in names]
        for n, h in zip(names, handles):
            with pytest.raises(ValueError) as info:
                bf.synchronize(h)
            text = str(info.value)
            assert f"'{n}'" in text and "order.a" in text and "order.b" in text, text
            assert "the op to run next" in text and "same order" in text, text
        next_op_works("order")
    finally:
        bf.set_skip_negotiate_stage(False)


def test_mismatch_blocking_and_poll():
    """The blocking form raises too, and poll() reports the failed op as done."""
    name = "mismatch.blocking"
    x = rank_input(RANK, (2,), torch.int32 if RANK == 0 else torch.int64)
    if SIZE == 1:
        check(bf.allreduce(x, average=False, name=name), x)
    else:
        with pytest.raises(ValueError, match="dtype"):
            bf.allreduce(x, average=False, name=name)
        h = bf.allreduce_nonblocking(x, average=False, name=name + ".nb")
        deadline = time.time() + 60
        while not bf.poll(h):
            assert time.time() < deadline
            time.sleep(0.001)
        with pytest.raises(ValueError, match=r"mismatch\.blocking\.nb"):
            bf.synchronize(h)
    next_op_works("blocking")


def test_mismatch_among_other_ops_in_flight():
    """A mismatched op fails while good ops submitted around it still complete."""
    x = rank_input(RANK, (3,))
    h1 = bf.allreduce_nonblocking(x, average=False, name="mix.good.1")
    bad = bf.allreduce_nonblocking(rank_input(RANK, (3 + (RANK % 2),)), average=False, name="mix.bad")
    h2 = bf.allgather_nonblocking(x, name="mix.good.2")
    check(bf.synchronize(h1), expected_sum((3,)))
    if SIZE == 1:
        check(bf.synchronize(bad), rank_input(0, (3,)))
    else:
        with pytest.raises(ValueError, match="mix.bad"):
            bf.synchronize(bad)
    check(bf.synchronize(h2), torch.cat([rank_input(r, (3,)) for r in range(SIZE)]))


# ---- local errors --------------------------------------------------------------------
def test_barrier_from_a_second_thread_while_one_waits_raises():
    """barrier() is per process: a second thread calling it while another
    waits gets a clear ValueError (before: random 'unknown handle' errors, or
    a return without any barrier of its own, from a shared pending handle)."""
    if SIZE == 1:
        pytest.skip("a barrier of one rank does not wait")
    if RANK == 0:
        t = threading.Thread(target=bf.barrier)
        t.start()
        time.sleep(1.5)  # t now waits for the other ranks, which come 3 s late
        with pytest.raises(ValueError, match="another thread of this process is in barrier"):
            bf.barrier()
        t.join(60)
        assert not t.is_alive()
    else:
        time.sleep(3.0)
        bf.barrier()
    next_op_works("barrier.threads")


def test_duplicate_name_in_flight():
    """Rank 0 enqueues 'dup' twice: the second raises ValueError on rank 0 only,
    and every rank still completes the first one."""
    x = rank_input(RANK, (4,))
    exp = expected_sum((4,))
    if SIZE > 1:
        # The other ranks submit 'dup' only after rank 0 has made its second
        # attempt (they first wait for 'dup.gate', which rank 0 submits after
        # it), so 'dup' is certainly still in flight on rank 0.
        if RANK == 0:
            h = bf.allreduce_nonblocking(x, average=False, name="dup")
            with pytest.raises(ValueError) as info:
                bf.allreduce_nonblocking(x, average=False, name="dup")
            assert "dup" in str(info.value) and "in flight" in str(info.value)
            with pytest.raises(ValueError, match="in flight"):
                bf.broadcast_nonblocking(x, 0, name="dup")  # any op kind
            assert bf.poll(h) is False  # the others have not submitted 'dup' yet
            gate = bf.allreduce_nonblocking(x, average=False, name="dup.gate")
            check(bf.synchronize(h), exp)
            check(bf.synchronize(gate), exp)
        else:
            check(bf.allreduce(x, average=False, name="dup.gate"), exp)
            check(bf.allreduce(x, average=False, name="dup"), exp)
    else:
        # One rank: keep 'dup' queued behind a big op (~10 ms) so that it is
        # still in flight; retry in the unlikely case it finished first.
        big = torch.ones(3_000_000, dtype=torch.float64)
        raised = False
        for attempt in range(20):
            hb = bf.allreduce_nonblocking(big, average=False, name=f"dup.big.{attempt}")
            h = bf.allreduce_nonblocking(x, average=False, name=f"dup.{attempt}")
            try:
                h2 = bf.allreduce_nonblocking(x, average=False, name=f"dup.{attempt}")
            except ValueError as e:
                assert f"dup.{attempt}" in str(e) and "in flight" in str(e)
                raised = True
            else:
                bf.synchronize(h2)
            bf.synchronize(hb)
            check(bf.synchronize(h), exp)
            if raised:
                break
        assert raised, "a duplicate name in flight never raised"
    # The name is free again once its op completed.
    check(bf.allreduce(x, average=False, name="dup"), exp)
    next_op_works("dup")


# Each case: (what rank 0's local error says, function(bad: bool, name) -> result).
# Rank 0 passes input its frontend refuses before anything is submitted; the
# other ranks pass good input and would wait for rank 0 forever.
REFUSED = {
    "allreduce.dtype": ("not supported", lambda bad, name: bf.allreduce(
        torch.ones(3, dtype=torch.complex64 if bad else torch.float32), name=name)),
    "broadcast.root": ("root_rank must be an int", lambda bad, name: bf.broadcast(
        torch.ones(3), "0" if bad else 0, name=name)),
    "allgather.type": ("expected a torch.Tensor", lambda bad, name: bf.allgather(
        [1.0, 2.0] if bad else torch.ones(2), name=name)),
    "neighbor_allreduce.dtype": ("needs a floating-point tensor", lambda bad, name: bf.neighbor_allreduce(
        torch.ones(3, dtype=torch.int32 if bad else torch.float32), name=name)),
    "neighbor_allreduce.weights": ("not in-neighbors", lambda bad, name: bf.neighbor_allreduce(
        torch.ones(3), self_weight=0.5,
        src_weights={SIZE + 5 if bad else r: 0.5 / len(bf.in_neighbor_ranks()) for r in bf.in_neighbor_ranks()},
        name=name)),
    "neighbor_allgather.ranks": ("together", lambda bad, name: bf.neighbor_allgather(
        torch.ones(2), src_ranks=[] if bad else None, name=name)),
    "pair_gossip.target": ("target_rank must be an int", lambda bad, name: bf.pair_gossip(
        torch.ones(2), 0.5 if bad else (RANK + 1) % SIZE if SIZE % 2 == 0 else RANK, name=name)),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_input_refused_on_one_rank_fails_the_op_everywhere(case, mode):
    """Input that one rank's frontend refuses (dtype, type, weights for a
    non-neighbor, ...) never reaches the core there; that rank still tells the
    others, so the op fails on every rank, naming the op, the rank and why,
    instead of leaving the others waiting forever (or, in skip-negotiate mode,
    pairing their op with that rank's next one). The next op works."""
    if SIZE == 1:
        pytest.skip("needs a rank whose input is good")
    says, run = REFUSED[case]
    name = f"refused.{case}.{mode}"
    with pytest.raises(ValueError) as info:
        run(RANK == 0, name)
    text = str(info.value)
    assert says in text, text
    if RANK != 0:
        assert f"'{name}'" in text and "refused on rank 0" in text and "it ran on no rank" in text, text
    next_op_works(f"refused.{case}")


@pytest.mark.parametrize("op", ["allreduce", "broadcast", "neighbor_allreduce"])
def test_a_failure_while_staging_the_input_is_reported_too(op, monkeypatch):
    """Not only ValueError/TypeError: an error while preparing the input on one
    rank (a GPU-to-CPU copy out of memory, simulated here) fails the op on the
    others too, instead of leaving them waiting for it."""
    if SIZE == 1:
        pytest.skip("needs a rank whose input is good")
    from bluefog.torch import mpi_ops, neighbor_ops
    name = f"staging.{op}"
    if RANK == 0:
        def fail(tensor, what):
            raise RuntimeError("CUDA out of memory (simulated)")
        monkeypatch.setattr(mpi_ops, "_prepare", fail)
        monkeypatch.setattr(neighbor_ops, "_prepare", fail)
    # (A contiguous CPU tensor needs no staging: the short paths of the blocking
    # allreduce and neighbor_allreduce never call _prepare, so theirs is transposed.)
    run = {"allreduce": lambda: bf.allreduce(torch.ones(2, 3).t(), name=name),
           "broadcast": lambda: bf.broadcast(torch.ones(3), 0, name=name),
           "neighbor_allreduce": lambda: bf.neighbor_allreduce(torch.ones(2, 3).t(), name=name)}[op]
    with pytest.raises((RuntimeError, ValueError)) as info:
        run()
    text = str(info.value)
    assert "CUDA out of memory (simulated)" in text, text
    if RANK != 0:
        assert f"'{name}'" in text and "refused on rank 0" in text, text
    monkeypatch.undo()
    next_op_works(name)


@pytest.mark.parametrize("case", ["allreduce.dtype", "neighbor_allreduce.weights"])
def test_retry_under_the_same_name_after_a_refusal(case, mode):
    """The usual reaction to the error: retry the op, same name, good input, on
    every rank. Rank 0 raised at once while its refusal was still in flight
    (the others reach the op later); its retry waits behind the refusal
    instead of failing with 'duplicate name' (which left the others' retry
    waiting for rank 0 for good)."""
    if SIZE == 1:
        pytest.skip("needs a rank whose input is good")
    says, run = REFUSED[case]
    name = f"retry.{case}.{mode}"
    if RANK != 0:
        time.sleep(0.3)  # rank 0 retries before the others have even submitted
    with pytest.raises(ValueError, match=says):
        run(RANK == 0, name)
    run(False, name)
    run(False, name)  # and the name is free afterwards
    next_op_works(name)


def test_refused_unnamed_op_keeps_automatic_names_aligned():
    """An unnamed op takes its automatic name before its input is checked, so
    a refusal on one rank leaves every rank's counter at the same place."""
    if SIZE == 1:
        pytest.skip("needs a rank whose input is good")
    with pytest.raises(ValueError):
        bf.neighbor_allreduce(torch.ones(2, dtype=torch.int64 if RANK == 0 else torch.float32))
    out = bf.neighbor_allreduce(torch.full((2,), float(RANK)))  # the next automatic name on every rank
    ins = bf.in_neighbor_ranks()
    expected = (RANK + sum(ins)) / (len(ins) + 1)
    torch.testing.assert_close(out, torch.full((2,), expected))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_unsupported_dtype(dtype):
    x = torch.ones(3, dtype=dtype)
    with pytest.raises(ValueError, match="not supported"):
        bf.allreduce(x, average=False, name="unsupported.ar")
    with pytest.raises(ValueError, match="not supported"):
        bf.allreduce_nonblocking(x, average=False, name="unsupported.ar.nb")
    with pytest.raises(ValueError, match="not supported"):
        bf.broadcast(x, 0, name="unsupported.bc")
    with pytest.raises(ValueError, match="not supported"):
        bf.broadcast_(x, 0, name="unsupported.bc_")
    with pytest.raises(ValueError, match="not supported"):
        bf.allgather(x, name="unsupported.ag")
    next_op_works(f"unsupported.{dtype}")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8], ids=str)
def test_average_on_integer_tensor(dtype, mode):
    """(In skip-negotiate mode the ranks' digests agree, and the op is still
    checked: it returned the input unaveraged there.)"""
    x = torch.ones(3, dtype=dtype)
    with pytest.raises(ValueError, match="average"):
        bf.allreduce(x, average=True, name=f"avg.int.{dtype}.{mode}")
    with pytest.raises(ValueError, match="average"):
        bf.synchronize(bf.allreduce_nonblocking_(x.clone(), name=f"avg.int.inplace.{dtype}.{mode}"))
    next_op_works(f"avg.int.{dtype}.{mode}")


def test_bool_allreduce_is_refused(mode):
    """(In skip-negotiate mode it stopped BlueFog: MPI_ERR_OP in the background loop.)"""
    with pytest.raises(ValueError, match="dtype bool cannot be summed"):
        bf.allreduce(torch.ones(3, dtype=torch.bool), average=False, name=f"bool.{mode}")
    next_op_works(f"bool.{mode}")


@pytest.mark.parametrize("root", [SIZE, SIZE + 3, -1])
def test_broadcast_root_out_of_range(root, mode):
    """(In skip-negotiate mode this stopped BlueFog on every rank: MPI_ERR_ROOT.)"""
    x = rank_input(RANK, (3,))
    with pytest.raises(ValueError, match="root"):
        bf.broadcast(x, root, name=f"root.range.{root}.{mode}")
    y = x.clone()
    with pytest.raises(ValueError, match="root"):
        bf.synchronize(bf.broadcast_nonblocking_(y, root, name=f"root.range.inplace.{root}.{mode}"))
    check(y, x)  # a failed in-place op leaves the tensor alone
    next_op_works(f"root.{root}.{mode}")


def test_skip_mode_enable_topo_check_must_agree():
    """Skip-negotiate mode checks the send/receive pattern only with
    enable_topo_check, a collective step: ranks that disagree on the flag hung
    (one in the check, the other in the exchange). Now a ValueError on every
    rank names the flag. (Negotiation checks every pattern and ignores it.)"""
    if SIZE == 1:
        pytest.skip("needs a rank whose flag differs")
    bf.set_skip_negotiate_stage(True)
    try:
        with pytest.raises(ValueError, match=r"ranks disagree on enable_topo_check: rank \[0\] has True"):
            bf.neighbor_allreduce(torch.ones(3), enable_topo_check=RANK == 0, name="topo.flag")
        next_op_works("topo.flag")
    finally:
        bf.set_skip_negotiate_stage(False)


def test_broadcast_root_not_an_int():
    x = rank_input(RANK, (3,))
    with pytest.raises(ValueError):
        bf.broadcast(x, 0.5, name="root.float")
    next_op_works("root.float")
