"""Window ops on every rank, part 2: dtypes, a large window, several windows at
once, the window mutex, push-sum average consensus with the associated p, and
a soak of random window ops (part 1: test_win_ops.py).

Inputs are known functions of the rank, so every rank checks its window against
a numpy reference from the topology's weight matrix W (W[i][j]: edge i -> j).

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py. All ranks issue the
same collective calls (win_create, win_free, barrier, allgather, allreduce) in
the same order; the one-sided ops in between differ per rank. Timestamps from
time.time() are compared across ranks: the ranks of a test job share a host.
"""
import gc
import threading
import time

import numpy as np
import psutil
import pytest
import torch

import bluefog.torch as bf
from graph_refs import in_nbrs, out_nbrs, weight_matrix  # tests/parallel/graph_refs.py

bf.init()
SIZE = bf.size()
RANK = bf.rank()
HOLD = 0.3        # seconds a rank holds a mutex
PROMPT = 5.0      # loose bound: a released mutex is taken by a waiter within this


@pytest.fixture(autouse=True)
def _fresh(request):
    bf.init()
    yield
    if request.session.testsfailed == 0:  # a failed rank leaves at once (parallel conftest)
        bf.turn_off_win_ops_with_associated_p()
        bf.win_free()


def rank_input(r, shape, seed):
    rng = np.random.RandomState(seed * 1009 + r)
    return rng.uniform(-1.0, 1.0, size=shape)


def int_input(r, shape, seed, dtype):
    rng = np.random.RandomState(seed * 1009 + r)
    return torch.from_numpy(rng.randint(-50, 50, size=shape)).to(dtype)


def use_topology(G):
    assert bf.set_topology(G)
    W = weight_matrix(G)
    assert sorted(bf.in_neighbor_ranks()) == in_nbrs(W, RANK)
    assert sorted(bf.out_neighbor_ranks()) == out_nbrs(W, RANK)
    return W


def gather_row(values, name):
    """Row r of the result is rank r's `values` (float64)."""
    return bf.allgather(torch.tensor([values], dtype=torch.float64), name=name).numpy()


# ---- dtypes, size, several windows -----------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32, torch.float64])
def test_dtypes(dtype):
    W = use_topology(bf.ExponentialGraph(SIZE))
    ins, outs = in_nbrs(W, RANK), out_nbrs(W, RANK)
    xs = [int_input(r, (3, 5), 50, dtype) for r in range(SIZE)]
    x = xs[RANK].clone()
    bf.win_create(x, "dt")
    bf.barrier()
    bf.win_put(x, "dt", dst_weights={j: 2.0 for j in outs})
    bf.barrier()
    bf.win_update("dt", 3.0, {i: 1.0 for i in ins})
    assert x.dtype == dtype
    expected = 3 * xs[RANK].to(torch.int64) + sum((2 * xs[i].to(torch.int64) for i in ins),
                                                  torch.zeros(3, 5, dtype=torch.int64))
    assert torch.equal(x, expected.to(dtype))
    bf.barrier()
    z = torch.zeros(3, 5, dtype=dtype)
    bf.win_create(z, "dt.acc", zero_init=True)
    bf.barrier()
    bf.win_accumulate(xs[RANK].clone(), "dt.acc")
    bf.win_accumulate(xs[RANK].clone(), "dt.acc", dst_weights={j: 3.0 for j in outs})
    bf.barrier()
    bf.win_update_then_collect("dt.acc")
    expected = sum((4 * xs[i].to(torch.int64) for i in ins), torch.zeros(3, 5, dtype=torch.int64))
    assert z.dtype == dtype and torch.equal(z, expected.to(dtype))
    if dtype.is_floating_point:
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        y = bf.win_update("dt", 1.0 / 3.0, {i: 0.25 for i in ins}, clone=True)
        ref = x.double().numpy() / 3.0 + sum((0.25 * 2 * xs[i].double().numpy() for i in ins), np.zeros((3, 5)))
        np.testing.assert_allclose(y.double().numpy(), ref, rtol=tol, atol=tol * 100)


def test_large_window():
    W = use_topology(bf.ExponentialGraph(SIZE))
    n = 8 * 1024 * 1024  # 32 MB of float32
    base = np.arange(n, dtype=np.int64) % 1024

    def value(r):  # integers: exact in float32
        return (base + 1024 * r).astype(np.float32)

    x = torch.from_numpy(value(RANK))
    bf.win_create(x, "large", zero_init=True)
    bf.barrier()
    bf.win_put(x, "large")
    bf.barrier()
    ins = in_nbrs(W, RANK)
    bf.win_update("large", 1.0, {i: 1.0 for i in ins})
    expected = value(RANK)
    for i in ins:
        expected += value(i)
    assert np.array_equal(x.numpy(), expected)
    del expected, base


def test_several_windows_at_once():
    W = use_topology(bf.ExponentialGraph(SIZE))
    ins, outs = in_nbrs(W, RANK), out_nbrs(W, RANK)
    specs = {"m.f64": ((2, 3), torch.float64, 60), "m.i32": ((5,), torch.int32, 61),
             "m.f32": ((4, 4), torch.float32, 62)}
    vals = {k: [int_input(r, shape, seed, dt) for r in range(SIZE)] for k, (shape, dt, seed) in specs.items()}
    wins = {k: vals[k][RANK].clone() for k in specs}
    for k in ("m.f64", "m.i32", "m.f32"):
        bf.win_create(wins[k], k, zero_init=True)
    assert bf.get_current_created_window_names() == ["m.f32", "m.f64", "m.i32"]
    mult = {"m.f64": 1.0, "m.i32": 2.0, "m.f32": 3.0}

    def round_trip(names):
        bf.barrier()
        for k in names:
            bf.win_put(wins[k], k, dst_weights={j: mult[k] for j in outs})
        bf.barrier()
        before = {k: wins[k].clone() for k in names}
        for k in reversed(names):
            bf.win_update(k, 1.0, {i: 1.0 for i in ins}, reset=True)
        return before

    before = round_trip(["m.f64", "m.i32", "m.f32"])
    for k in specs:
        exp = vals[k][RANK].double() + sum((mult[k] * vals[k][i].double() for i in ins), 0.0)
        assert torch.equal(wins[k], exp.to(specs[k][1])), k
        assert torch.equal(before[k], vals[k][RANK])
    bf.win_free("m.i32")
    assert bf.get_current_created_window_names() == ["m.f32", "m.f64"]
    with pytest.raises(ValueError):
        bf.win_put(wins["m.i32"], "m.i32")
    # the other windows keep working; in-neighbors now send the updated tensors
    new = {k: [vals[k][r].double() + sum((mult[k] * vals[k][i].double() for i in in_nbrs(W, r)), 0.0)
               for r in range(SIZE)] for k in ("m.f64", "m.f32")}
    round_trip(["m.f64", "m.f32"])
    for k in ("m.f64", "m.f32"):
        exp = new[k][RANK] + sum((mult[k] * new[k][i] for i in ins), 0.0)
        assert torch.equal(wins[k], exp.to(specs[k][1])), k


# ---- mutex ------------------------------------------------------------------------------
@pytest.mark.parametrize("targets", ["rank0", "all_reversed"])
def test_win_mutex_excludes(targets):
    bf.win_create(torch.zeros(2, dtype=torch.float64), "mtx")
    ranks = [0] if targets == "rank0" else list(reversed(range(SIZE)))  # taken in rank order: no deadlock
    bf.barrier()
    t_req = time.time()
    with bf.win_mutex("mtx", ranks=ranks):
        t_in = time.time()
        time.sleep(HOLD)
        t_out = time.time()
    iv = gather_row([t_req, t_in, t_out], "mtx.intervals")
    iv = iv[np.argsort(iv[:, 1])]
    for k in range(SIZE):
        assert iv[k, 2] - iv[k, 1] >= HOLD * 0.99
        if k:
            # [t_in, t_out] lies inside the real hold: holds must not overlap
            assert iv[k, 1] >= iv[k - 1, 2], f"overlapping holds: {iv.tolist()}"
            # and a waiter gets the lock promptly once it is released
            assert iv[k, 1] - max(iv[k - 1, 2], iv[k, 0]) < PROMPT, iv.tolist()
    assert iv[0, 1] - iv[0, 0] < PROMPT


def test_require_mutex_waits_for_holder():
    """Rank 0 holds its own mutex; in-neighbors' puts with require_mutex=True
    into rank 0 cannot finish before it lets go."""
    G = bf.FullyConnectedGraph(SIZE)
    assert bf.set_topology(G)
    W = weight_matrix(G)
    x = torch.full((3,), float(RANK), dtype=torch.float64)
    bf.win_create(x, "hold", zero_init=True)
    t_out = t_done = 0.0
    if RANK == 0:
        with bf.win_mutex("hold", for_self=True):
            bf.barrier()
            time.sleep(HOLD)
            t_out = time.time()
    else:
        bf.barrier()
        bf.win_put(x, "hold", dst_weights={0: 1.0}, require_mutex=True)
        t_done = time.time()
    iv = gather_row([t_out, t_done], "hold.times")
    release = iv[0, 0]
    for r in range(1, SIZE):
        assert iv[r, 1] >= release, f"rank {r}'s put finished inside rank 0's hold: {iv.tolist()}"
        assert iv[r, 1] - release < PROMPT
    bf.barrier()
    if RANK == 0:  # the puts did land
        assert bf.get_win_version("hold") == {i: 1 for i in in_nbrs(W, 0)}
        out = bf.win_update("hold", 0.0, {i: 1.0 for i in in_nbrs(W, 0)}, require_mutex=True)
        assert torch.equal(out, torch.full((3,), float(sum(range(1, SIZE))), dtype=torch.float64))


def test_win_lock_holds_off_puts_into_this_rank():
    """win_lock (reached as in BlueFog 0.3, through bluefog.torch.mpi_ops, with
    the other window ops): while rank 0 holds it, no put (even without
    require_mutex) lands in rank 0's buffers; it finishes after the lock goes."""
    from bluefog.torch import mpi_ops
    from bluefog.torch.mpi_ops import win_create, win_lock, win_put, get_win_version  # noqa: F401
    for name in mpi_ops._WINDOW_OPS:
        assert getattr(mpi_ops, name) is getattr(bf._win_ops, name), name
    with pytest.raises(ValueError, match="win_lock"):
        with win_lock("no.such.window"):
            pass
    assert bf.set_topology(bf.FullyConnectedGraph(SIZE))
    x = torch.full((3,), float(RANK), dtype=torch.float64)
    assert win_create(x, "lock", zero_init=True)
    t_out = t_done = 0.0
    if RANK == 0:
        with win_lock("lock"):
            bf.barrier()
            time.sleep(HOLD)
            versions = get_win_version("lock")
            t_out = time.time()
        assert versions == {i: 0 for i in range(1, SIZE)}, versions  # nothing landed meanwhile
    else:
        bf.barrier()
        win_put(x, "lock", dst_weights={0: 1.0})
        t_done = time.time()
    iv = gather_row([t_out, t_done], "lock.times")
    for r in range(1, SIZE):
        assert iv[r, 1] >= iv[0, 0], f"rank {r}'s put finished inside rank 0's win_lock: {iv.tolist()}"
    bf.barrier()
    if RANK == 0:
        assert get_win_version("lock") == {i: 1 for i in range(1, SIZE)}


def test_get_and_update_inside_win_lock_raise_instead_of_hanging():
    """win_update / win_get of the locked window inside `with win_lock` waited
    for the lock they were inside of, for good: a ValueError naming the op now,
    and both work once the block is left."""
    assert bf.set_topology(bf.RingGraph(SIZE))
    x = torch.full((3,), float(RANK), dtype=torch.float64)
    bf.win_create(x, "locked.self")
    bf.barrier()
    with bf.win_lock("locked.self"):
        with pytest.raises(ValueError, match=r"win_update 'locked.self': this process holds win_lock"):
            bf.win_update("locked.self", clone=True)
        with pytest.raises(ValueError, match=r"win_get 'locked.self': this process holds win_lock"):
            bf.win_get("locked.self")
        with pytest.raises(ValueError, match="win_lock 'locked.self': this process already holds it"):
            with bf.win_lock("locked.self"):
                pass
    bf.barrier()
    bf.win_get("locked.self")
    bf.barrier()
    out = bf.win_update("locked.self", clone=True)
    nbrs = bf.in_neighbor_ranks()
    assert torch.allclose(out, torch.full((3,), (RANK + sum(nbrs)) / (len(nbrs) + 1), dtype=torch.float64))
    bf.barrier()


def test_failed_mutex_acquire_leaves_nothing_locked():
    """A rank out of range fails the acquire before any mutex is taken (it used
    to leave the lower ranks' mutexes taken for good: the next locker hung)."""
    bf.win_create(torch.zeros(2, dtype=torch.float64), "leak")
    bf.barrier()
    with pytest.raises(ValueError, match=rf"win_mutex 'leak': mutex rank {SIZE + 3} out of range \[0, {SIZE}\)"):
        with bf.win_mutex("leak", ranks=[(RANK + 1) % SIZE, SIZE + 3]):
            pass
    bf.barrier()
    with bf.win_mutex("leak", ranks=list(range(SIZE))):  # every mutex is free
        pass
    bf.win_update("leak", require_mutex=True)
    bf.barrier()


def test_mutex_is_not_reentrant_error_not_hang():
    """A window op with require_mutex=True inside `with win_mutex` on the same
    ranks would wait for this process itself: an error naming the op."""
    bf.win_create(torch.ones(2, dtype=torch.float64), "reent")
    bf.barrier()
    with bf.win_mutex("reent", for_self=True):
        with pytest.raises(ValueError, match=f"win_update 'reent': this process already holds the window mutex "
                                             f"of rank {RANK}"):
            bf.win_update("reent", require_mutex=True)
    outs = bf.out_neighbor_ranks()
    if outs:
        with bf.win_mutex("reent", ranks=outs):
            with pytest.raises(ValueError, match="win_put 'reent': this process already holds"):
                bf.win_put(torch.ones(2, dtype=torch.float64), "reent", require_mutex=True)
    bf.barrier()
    bf.win_update("reent", require_mutex=True)  # the failed attempts released nothing they did not take
    bf.barrier()


def test_put_waiting_for_a_mutex_holds_none_of_the_others():
    """Rank 0 holds rank 1's mutex (win_mutex) and then wants its own for a
    win_update; rank 2's put to ranks 0 and 1 with require_mutex=True took
    rank 0's mutex and waited for rank 1's, keeping rank 0's: both waited for
    each other for good. A put now takes all of its mutexes or none."""
    if SIZE < 3:
        pytest.skip("needs a third rank that puts to ranks 0 and 1")
    assert bf.set_topology(bf.FullyConnectedGraph(SIZE))
    x = torch.full((2,), float(RANK), dtype=torch.float64)
    bf.win_create(x, "hold.wait", zero_init=True)
    bf.barrier()
    if RANK == 0:
        with bf.win_mutex("hold.wait", ranks=[1]):
            time.sleep(HOLD)
            bf.win_update("hold.wait", require_mutex=True)
    elif RANK == 2:
        time.sleep(HOLD / 3)
        bf.win_put(x, "hold.wait", dst_weights={0: 1.0, 1: 1.0}, require_mutex=True)
    bf.barrier()
    if RANK in (0, 1):
        assert bf.get_win_version("hold.wait")[2] == 1
    bf.barrier()


def test_mutex_wait_does_not_block_collectives():
    """Rank 0 holds its own mutex while it takes part in an allreduce; the
    others' puts into rank 0 with require_mutex=True wait for it meanwhile.
    The waiting puts must not hold up the others' allreduce (rank 0 lets go
    only after it), which used to deadlock."""
    if SIZE == 1:
        pytest.skip("needs a peer holding the mutex")
    G = bf.FullyConnectedGraph(SIZE)
    assert bf.set_topology(G)
    x = torch.full((3,), float(RANK), dtype=torch.float64)
    bf.win_create(x, "coll", zero_init=True)
    if RANK == 0:
        with bf.win_mutex("coll", for_self=True):
            bf.barrier()
            time.sleep(HOLD)
            total = bf.allreduce(torch.tensor([1.0]), average=False, name="coll.ar")
    else:
        bf.barrier()
        h = bf.win_put_nonblocking(x, "coll", dst_weights={0: 1.0}, require_mutex=True)
        time.sleep(HOLD / 3)
        assert not bf.win_poll(h), "the put finished while rank 0 held its mutex"
        total = bf.allreduce(torch.tensor([1.0]), average=False, name="coll.ar")
        assert bf.win_wait(h)
    assert total.item() == SIZE
    bf.barrier()
    if RANK == 0:
        assert bf.get_win_version("coll") == {i: 1 for i in range(1, SIZE)}
        out = bf.win_update("coll", 0.0, {i: 1.0 for i in range(1, SIZE)}, require_mutex=True)
        assert torch.equal(out, torch.full((3,), float(sum(range(1, SIZE))), dtype=torch.float64))


def test_mutex_release_passes_another_threads_waiting_op():
    """Rank 1's main thread holds rank 1's mutex; a second thread's put into
    rank 0 with require_mutex=True waits for rank 0's mutex, which rank 0
    holds while its own put into rank 1 waits for rank 1's. The main thread's
    release used to wait behind the second thread's put (window ops ran in
    submission order across threads): all three waited for good. Window ops
    now keep each thread's order only, so the release goes on."""
    if SIZE == 1:
        pytest.skip("needs a peer holding a mutex")
    assert bf.set_topology(bf.FullyConnectedGraph(SIZE))
    x = torch.full((2,), float(RANK), dtype=torch.float64)
    bf.win_create(x, "xthread", zero_init=True)
    if RANK == 0:
        with bf.win_mutex("xthread", for_self=True):
            bf.barrier()
            bf.win_put(x, "xthread", dst_weights={1: 1.0}, require_mutex=True)  # waits for rank 1's
    elif RANK == 1:
        submitted = threading.Event()
        handles, errors = [], []

        def put_from_another_thread():
            try:
                handles.append(bf.win_put_nonblocking(x, "xthread", dst_weights={0: 1.0}, require_mutex=True))
                submitted.set()
                assert bf.win_wait(handles[0])
            except BaseException as err:  # reported by the main thread
                errors.append(err)
                submitted.set()

        with bf.win_mutex("xthread", for_self=True):
            bf.barrier()
            worker = threading.Thread(target=put_from_another_thread, daemon=True)
            worker.start()
            assert submitted.wait(PROMPT) and not errors, errors
            time.sleep(HOLD / 3)
            assert not bf.win_poll(handles[0]), "the put finished while rank 0 held its mutex"
        worker.join(PROMPT)
        assert not worker.is_alive(), "the second thread's put never finished"
        assert not errors, errors
    else:
        bf.barrier()
    bf.barrier()
    if RANK in (0, 1):
        assert bf.get_win_version("xthread")[1 - RANK] == 1
    bf.barrier()


def test_mutex_held_by_another_thread_is_waited_for():
    """One thread holds this rank's mutex (win_mutex); another thread's
    win_update with require_mutex=True waits for its release (it used to
    raise "already holds", as if the thread held it itself), and a third
    thread's win_mutex on it waits too. The holder's own require_mutex op
    still raises (not re-entrant)."""
    x = torch.ones(2, dtype=torch.float64)
    bf.win_create(x, "thr.hold")
    bf.barrier()
    done, errors = {}, []

    def in_thread(key, fn):
        def run():
            try:
                fn()
                done[key] = time.time()
            except BaseException as err:  # reported by the main thread
                errors.append(err)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def other_mutex():
        with bf.win_mutex("thr.hold", for_self=True):
            pass

    with bf.win_mutex("thr.hold", for_self=True):
        workers = [in_thread("update", lambda: bf.win_update("thr.hold", require_mutex=True)),
                   in_thread("mutex", other_mutex)]
        time.sleep(HOLD)
        assert not done and not errors, (done, errors)  # both wait for this thread's release
        with pytest.raises(ValueError, match="this process already holds the window mutex"):
            bf.win_update("thr.hold", require_mutex=True)  # this thread holds it itself
        released = time.time()
    for t in workers:
        t.join(PROMPT)
        assert not t.is_alive(), "a thread waiting for the mutex never got it"
    assert not errors, errors
    assert all(released <= t_done < released + PROMPT for t_done in done.values()), (released, done)
    bf.barrier()


def _f(i, j):
    return 0.5 + 0.25 * i + 0.125 * j


def test_associated_p_bookkeeping():
    """p follows put (replace), accumulate (add), get and update exactly as x does."""
    W = use_topology(bf.ExponentialGraph(SIZE))
    ins, outs = in_nbrs(W, RANK), out_nbrs(W, RANK)
    ins_of = [in_nbrs(W, r) for r in range(SIZE)]
    subset = [out_nbrs(W, i)[::2] for i in range(SIZE)]
    s = [0.5 + 0.1 * r for r in range(SIZE)]
    bf.win_create(torch.ones(2, dtype=torch.float64), "p.put")  # p slots start at 1
    bf.win_create(torch.ones(2, dtype=torch.float64), "p.acc", zero_init=True)  # p slots start at 0
    bf.turn_on_win_ops_with_associated_p()
    bf.barrier()
    x = torch.ones(2, dtype=torch.float64)
    bf.win_put(x, "p.put", self_weight=s[RANK], dst_weights={j: _f(RANK, j) for j in subset[RANK]})
    assert abs(bf.win_associated_p("p.put") - s[RANK]) < 1e-15
    a = torch.ones(2, dtype=torch.float64)
    bf.win_accumulate(a, "p.acc", self_weight=s[RANK], dst_weights={j: _f(RANK, j) for j in outs})
    bf.win_accumulate(a, "p.acc", self_weight=s[RANK], dst_weights={j: 2 * _f(RANK, j) for j in outs})
    assert abs(bf.win_associated_p("p.acc") - s[RANK] ** 2) < 1e-15
    bf.barrier()
    g = [{i: 0.1 * (i + 1) for i in ins_of[r]} for r in range(SIZE)]
    bf.win_update("p.put", self_weight=0.3, neighbor_weights=g[RANK])
    p_put = [0.3 * s[j] + sum(g[j][i] * (_f(i, j) if j in subset[i] else 1.0) for i in ins_of[j])
             for j in range(SIZE)]
    assert abs(bf.win_associated_p("p.put") - p_put[RANK]) < 1e-12
    bf.win_update_then_collect("p.acc")
    p_acc = s[RANK] ** 2 + sum(_f(i, RANK) + 2 * s[i] * _f(i, RANK) for i in ins)
    assert abs(bf.win_associated_p("p.acc") - p_acc) < 1e-12
    bf.barrier()  # every p is final before the gets read it
    h = {i: 0.5 + 0.1 * i for i in ins}
    bf.win_get("p.put", src_weights=h)
    bf.barrier()
    bf.win_update("p.put", 1.0, {i: 1.0 for i in ins})
    expected = p_put[RANK] + sum(h[i] * p_put[i] for i in ins)
    assert abs(bf.win_associated_p("p.put") - expected) < 1e-12
    bf.turn_off_win_ops_with_associated_p()
    bf.win_update("p.put", 0.5, {i: 0.5 for i in ins})  # p off: p stays
    assert abs(bf.win_associated_p("p.put") - expected) < 1e-12


# ---- push-sum ---------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["DirectedRing", "ExponentialGraph"])
def test_push_sum_average_consensus(graph):
    G = bf.RingGraph(SIZE, connect_style=1) if graph == "DirectedRing" else bf.ExponentialGraph(SIZE)
    assert bf.set_topology(G)
    W = weight_matrix(G)
    outs = out_nbrs(W, RANK)
    xs = np.stack([rank_input(r, (10,), 80) + 3.0 * r for r in range(SIZE)])
    average = xs.mean(axis=0)
    x = torch.from_numpy(xs[RANK].copy())
    bf.win_create(x, "ps", zero_init=True)
    assert bf.win_associated_p("ps") == 1.0
    bf.turn_on_win_ops_with_associated_p()
    w = 1.0 / (len(outs) + 1)
    for it in range(200):
        bf.win_accumulate(x, "ps", self_weight=w, dst_weights={j: w for j in outs}, require_mutex=True)
        bf.win_update_then_collect("ps")
        if it % 20 == 19:
            bf.barrier()  # bounds the skew between ranks
    bf.barrier()  # every accumulate has landed
    bf.win_update_then_collect("ps")
    p = bf.win_associated_p("ps")
    bf.turn_off_win_ops_with_associated_p()
    assert p > 0
    # mass is conserved: sum of x and of p over ranks
    totals = gather_row(list(x.numpy()) + [p], "ps.totals").sum(axis=0)
    np.testing.assert_allclose(totals[:-1], xs.sum(axis=0), rtol=1e-10, atol=1e-10)
    assert abs(totals[-1] - SIZE) < 1e-10
    np.testing.assert_allclose(x.numpy() / p, average, rtol=0, atol=1e-6)
    # with p off, ops leave p alone
    bf.win_accumulate(x, "ps", self_weight=0.5, dst_weights={j: 0.5 for j in outs})
    bf.win_update_then_collect("ps")
    assert bf.win_associated_p("ps") == p


# ---- soak -------------------------------------------------------------------------------
def _rss():
    return psutil.Process().memory_info().rss


def test_soak_random_window_ops():
    G = bf.ExponentialGraph(SIZE)
    assert bf.set_topology(G)
    W = weight_matrix(G)
    ins, outs = in_nbrs(W, RANK), out_nbrs(W, RANK)
    f = torch.from_numpy(rank_input(RANK, (64,), 90))
    k = torch.arange(16, dtype=torch.int32) + RANK
    bf.win_create(f, "soak.f")
    bf.win_create(k, "soak.i", zero_init=True)
    rng = np.random.RandomState(4321 + RANK)
    pending = []
    counts = {}

    def subset(ranks):
        return [r for r in ranks if rng.rand() < 0.7]

    def one_op():
        kind = rng.choice(["put", "put_nb", "acc", "acc_i", "get", "update", "update_i", "version", "mutex"])
        counts[kind] = counts.get(kind, 0) + 1
        mutex = bool(rng.rand() < 0.2)
        if kind == "put":
            bf.win_put(f, "soak.f", self_weight=float(rng.uniform(0.5, 1.0)),
                       dst_weights={j: float(rng.uniform(0, 1)) for j in subset(outs)}, require_mutex=mutex)
        elif kind == "put_nb":
            src = torch.from_numpy(rng.uniform(-1, 1, 64))
            pending.append(bf.win_put_nonblocking(src, "soak.f", dst_weights={j: 0.5 for j in subset(outs)}))
        elif kind == "acc":
            src = torch.from_numpy(rng.uniform(-1, 1, 64))
            bf.win_accumulate(src, "soak.f", dst_weights={j: 0.1 for j in subset(outs)}, require_mutex=mutex)
        elif kind == "acc_i":
            bf.win_accumulate(torch.ones(16, dtype=torch.int32), "soak.i", require_mutex=mutex)
        elif kind == "get":
            bf.win_get("soak.f", src_weights={i: float(rng.uniform(0, 1)) for i in subset(ins)},
                       require_mutex=mutex)
        elif kind == "update":
            ws = rng.uniform(0.1, 1.0, len(ins) + 1)
            ws /= ws.sum()  # convex: values stay bounded
            bf.win_update("soak.f", float(ws[0]), dict(zip(ins, map(float, ws[1:]))),
                          reset=bool(rng.rand() < 0.3), clone=bool(rng.rand() < 0.2), require_mutex=mutex)
        elif kind == "update_i":
            bf.win_update("soak.i", 1.0, {i: 0.0 for i in ins}, reset=True, require_mutex=mutex)
        elif kind == "version":
            v = bf.get_win_version("soak.f")
            assert sorted(v) == ins and all(c >= 0 for c in v.values())
        else:
            with bf.win_mutex("soak.f", for_self=bool(rng.rand() < 0.5)):
                pass
        if len(pending) > 3 or (pending and rng.rand() < 0.3):
            assert bf.win_wait(pending.pop(0)) is True

    def run(n):
        for step in range(n):
            one_op()
            if step % 100 == 99:
                bf.barrier()
        while pending:
            bf.win_wait(pending.pop(0))
        bf.barrier()

    run(100)  # warm-up: buffers, handles, allocator pools
    gc.collect()
    rss0 = _rss()
    run(1000)
    gc.collect()
    growth = _rss() - rss0
    assert growth < 50 * 2 ** 20, f"RSS grew by {growth / 2 ** 20:.1f} MB over 1000 window ops"
    assert set(counts) >= {"put", "acc", "get", "update", "version", "mutex"}, counts
    assert torch.isfinite(f).all()

    # final consistency check: the windows still compute exact results
    bf.win_update("soak.f", 1.0, {i: 0.0 for i in ins})  # clear the versions
    bf.win_update("soak.i", 1.0, {i: 0.0 for i in ins}, reset=True)
    bf.barrier()
    fs = [rank_input(r, (64,), 91) for r in range(SIZE)]
    f.copy_(torch.from_numpy(fs[RANK]))
    k.copy_(torch.arange(16, dtype=torch.int32) * (RANK + 1))
    bf.win_put(f, "soak.f")
    bf.win_accumulate(k, "soak.i", dst_weights={j: 2.0 for j in outs})
    bf.barrier()
    assert bf.get_win_version("soak.f") == {i: 1 for i in ins}
    bf.win_update("soak.f", 0.5, {i: 0.25 for i in ins})
    expected = 0.5 * fs[RANK] + sum((0.25 * fs[i] for i in ins), np.zeros(64))
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-12, atol=1e-12)
    bf.win_update_then_collect("soak.i")
    expected_k = np.arange(16) * (RANK + 1) + sum((2 * np.arange(16) * (i + 1) for i in ins), np.zeros(16))
    assert np.array_equal(k.numpy(), expected_k.astype(np.int32))


# ---- regression -------------------------------------------------------------------------
def test_unnamed_collective_after_rank_dependent_window_ops():
    """Window ops are one-sided, so ranks issue different numbers of them (push-sum
    loops, a mutex on some ranks). The automatic name of an unnamed collective
    afterwards must not depend on them (BlueFog 0.3 keeps window handles in their
    own HandleManager), or the ranks submit different names and the collective
    never completes (it hung here when names came from the shared handle count)."""
    x = torch.ones(2, dtype=torch.float64)
    bf.win_create(x, "asym")
    bf.barrier()
    for _ in range(RANK):  # rank r issues r window ops
        bf.win_put(x, "asym")
    h = bf.allreduce_nonblocking(torch.ones(1, dtype=torch.float64), average=False)
    deadline = time.time() + 30
    while not bf.poll(h) and time.time() < deadline:
        time.sleep(0.01)
    assert bf.poll(h), "an unnamed allreduce after rank-dependent numbers of window ops did not complete in 30 s"
    assert bf.synchronize(h).item() == SIZE
