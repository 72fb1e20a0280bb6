"""Hierarchical ops on every rank: the machine layout, allreduce with
is_hierarchical_local=True, and hierarchical_neighbor_allreduce (machine
topology uniform / weighted, explicit machine weights, nonblocking, errors).

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py, where every rank is
on one host. To get more than one "machine", this file sets
BLUEFOG_NODES_PER_MACHINE=2 at import time, before bluefog is initialized (the
setting is read at the first init of the process), when the launcher's world
size is even and > 1: machines are then blocks of 2 consecutive ranks (1
machine on 2 ranks, 2 machines on 4 ranks). On 1 rank there is one machine of
one rank, and the degenerate single-machine behaviour is asserted. A value
given by the caller (e.g. mpirun -x BLUEFOG_NODES_PER_MACHINE=2) is kept.

Every expected value is computed with numpy from every rank's known input
(`rank_input`, seeded and rank-dependent) and the full weight matrix of the
machine graph (W[i][j] = weight of the edge i -> j), independently of
BlueFog's weighting code.
"""
import os
import time


def _launcher_world_size() -> int:
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


_WORLD = _launcher_world_size()
_CALLER_PER = os.environ.get("BLUEFOG_NODES_PER_MACHINE")
_WE_SET_NODES_PER_MACHINE = False
if "BLUEFOG_NODES_PER_MACHINE" not in os.environ and _WORLD > 1 and _WORLD % 2 == 0:
    os.environ["BLUEFOG_NODES_PER_MACHINE"] = "2"
    _WE_SET_NODES_PER_MACHINE = True

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import bluefog.torch as bf  # noqa: E402
from graph_refs import weight_matrix  # noqa: E402  (tests/parallel/graph_refs.py)
from bluefog.common.basics import get_basics  # noqa: E402
from bluefog.common import topology_util  # noqa: E402

# Whether this process started BlueFog here (so the layout comes from the setting above and no
# machine topology has been set yet).
_FRESH = not get_basics().is_initialized()
bf.init()
SIZE = bf.size()
RANK = bf.rank()
if _WORLD:
    assert _WORLD == SIZE, (_WORLD, SIZE)
_PER = os.environ.get("BLUEFOG_NODES_PER_MACHINE")


def expected_layout():
    """(local_size, local_rank, machine_size, machine_rank) from the setting alone: blocks of
    `per` consecutive ranks (all ranks on one host when it is not set: the driver's case)."""
    per = int(_PER) if (_PER and _FRESH) else None
    if per is None:
        return None
    first = (RANK // per) * per
    local_size = min(per, SIZE - first)
    return local_size, RANK - first, SIZE // local_size, RANK // local_size


LOCAL_SIZE = bf.local_size()
LOCAL_RANK = bf.local_rank()
assert bf.is_homogeneous(), "these tests need a homogeneous layout"
MACHINES = bf.machine_size()
MACHINE = bf.machine_rank()
BLOCK = list(range(MACHINE * LOCAL_SIZE, (MACHINE + 1) * LOCAL_SIZE))


@pytest.fixture(autouse=True)
def _init():
    bf.init()  # idempotent; resets the rank topology (not the machine topology)
    yield


def rank_input(r, shape, seed, dtype=torch.float64):
    rng = np.random.RandomState(seed * 7919 + r)
    return torch.from_numpy(rng.uniform(-1.0, 1.0, size=shape)).to(dtype)


def machine_means(shape, seed, dtype=torch.float64):
    """(MACHINES, *shape): the mean of each machine's ranks' inputs (float64)."""
    X = np.stack([rank_input(r, shape, seed, dtype).to(torch.float64).numpy() for r in range(SIZE)])
    return X.reshape((MACHINES, LOCAL_SIZE) + tuple(shape)).mean(axis=1)


def uniform_matrix(W):
    A = (W != 0).astype(np.float64)
    np.fill_diagonal(A, 0.0)
    return (A + np.eye(len(W))) / (A.sum(axis=0) + 1.0)[None, :]


def combine(M, means, m):
    """z_m = sum_l M[l][m] * mean_l."""
    return np.tensordot(M[:, m], means, axes=(0, 0))


def check(actual, expected, dtype=torch.float64):
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert tuple(actual.shape) == tuple(np.shape(expected)), (actual.shape, np.shape(expected))
    tol = {torch.float16: 3e-3, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    np.testing.assert_allclose(actual.to(torch.float64).numpy(), expected, rtol=tol, atol=tol)


def wait_done(handle, seconds=60.0):
    deadline = time.time() + seconds
    while not bf.poll(handle):
        assert time.time() < deadline, f"handle {handle} not done after {seconds} s"
        time.sleep(0.001)


# ---- must run first: no machine topology has been set yet in this process -----------------------
def test_no_machine_topology_raises_runtime_error():
    if not _FRESH:
        pytest.skip("bluefog was initialized before this file was imported; a machine topology may exist")
    assert bf.load_machine_topology() is None
    assert bf.in_neighbor_machine_ranks() == [] and bf.out_neighbor_machine_ranks() == []
    x = rank_input(RANK, (3,), 1)
    with pytest.raises(RuntimeError):
        bf.hierarchical_neighbor_allreduce(x)
    with pytest.raises(RuntimeError):
        bf.hierarchical_neighbor_allreduce_nonblocking(x, name="hier.notopo")
    # Explicit weights do not need the machine topology.
    y = bf.hierarchical_neighbor_allreduce(x, self_weight=1.0, src_machine_weights={}, dst_machine_weights={},
                                           name="hier.notopo.explicit")
    check(y, machine_means((3,), 1)[MACHINE])


# ---- layout -------------------------------------------------------------------------------------
def test_layout_blocks():
    expected = expected_layout()
    if expected is not None:
        assert (LOCAL_SIZE, LOCAL_RANK, MACHINES, MACHINE) == expected
    if _FRESH and _CALLER_PER is None and SIZE > 1 and SIZE % 2 == 0:
        # The launcher's world size was found, so the blocks of 2 are in effect.
        assert _WE_SET_NODES_PER_MACHINE, "could not read the world size from the launcher environment"
        assert LOCAL_SIZE == 2 and MACHINES == SIZE // 2
    if SIZE == 1:
        assert (LOCAL_SIZE, LOCAL_RANK, MACHINES, MACHINE) == (1, 0, 1, 0)
    assert SIZE % LOCAL_SIZE == 0
    assert MACHINES == SIZE // LOCAL_SIZE
    assert MACHINE == RANK // LOCAL_SIZE and LOCAL_RANK == RANK % LOCAL_SIZE
    # Every rank agrees (gathered).
    row = torch.tensor([[RANK, LOCAL_SIZE, LOCAL_RANK, MACHINES, MACHINE]], dtype=torch.int64)
    table = bf.allgather(row, name="hier.layout").tolist()
    for r, (rank, ls, lr, ms, mr) in enumerate(table):
        assert (rank, ls, ms) == (r, LOCAL_SIZE, MACHINES)
        assert (lr, mr) == (r % LOCAL_SIZE, r // LOCAL_SIZE)


# ---- allreduce(is_hierarchical_local=True) ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_local_allreduce_averages_within_block(dtype):
    shape, seed = (3, 4), 2
    X = np.stack([rank_input(r, shape, seed, dtype).to(torch.float64).numpy() for r in range(SIZE)])
    x = rank_input(RANK, shape, seed, dtype)
    check(bf.allreduce(x, is_hierarchical_local=True, name=f"local.avg.{dtype}"), X[BLOCK].mean(axis=0), dtype)
    check(bf.allreduce(x, average=False, is_hierarchical_local=True, name=f"local.sum.{dtype}"),
          X[BLOCK].sum(axis=0), dtype)
    handle = bf.allreduce_nonblocking(x, is_hierarchical_local=True, name=f"local.nb.{dtype}")
    wait_done(handle)
    check(bf.synchronize(handle), X[BLOCK].mean(axis=0), dtype)
    # The global allreduce is unaffected by the layout.
    check(bf.allreduce(x, name=f"global.avg.{dtype}"), X.mean(axis=0), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_large_local_allreduce_within_block(dtype):
    # 1 MiB and more: BlueFog's ring on the machine's communicator (when it
    # holds more than one rank), out of place and in place.
    n = (1 << 20) // torch.tensor([], dtype=dtype).element_size() + 5
    X = np.stack([rank_input(r, (n,), 5, dtype).to(torch.float64).numpy() for r in BLOCK])
    x = rank_input(RANK, (n,), 5, dtype)
    check(bf.allreduce(x, is_hierarchical_local=True, name=f"local.big.avg.{dtype}"), X.mean(axis=0), dtype)
    y = x.clone()
    bf.allreduce_(y, average=False, is_hierarchical_local=True, name=f"local.big.sum_.{dtype}")
    check(y, X.sum(axis=0), dtype)
    check(x, rank_input(RANK, (n,), 5, dtype).to(torch.float64).numpy(), dtype)  # the input is unchanged


# ---- hierarchical_neighbor_allreduce with the machine topology ------------------------------
MACHINE_GRAPHS = {
    "ExponentialGraph": lambda m: bf.ExponentialGraph(m),
    "RingGraph1": lambda m: bf.RingGraph(m, connect_style=1),
    "FullyConnectedGraph": lambda m: bf.FullyConnectedGraph(m),
}


def lopsided_graph(m):
    """A weighted machine graph whose weights are not uniform: W[i][i] = 0.7, and i sends to
    i+1 with 0.3 (on one machine only the self loop, 0.7, which does not sum to 1)."""
    W = np.zeros((m, m))
    for i in range(m):
        W[i, i] = 0.7
        if m > 1:
            W[i, (i + 1) % m] += 0.3
    return nx.from_numpy_array(W, create_using=nx.DiGraph)


@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
@pytest.mark.parametrize("graph", list(MACHINE_GRAPHS) + ["lopsided"])
def test_hierarchical_with_machine_topology(graph, weighted):
    G = lopsided_graph(MACHINES) if graph == "lopsided" else MACHINE_GRAPHS[graph](MACHINES)
    assert bf.set_machine_topology(G, is_weighted=weighted)
    assert bf.is_machine_topo_weighted() == weighted
    W = weight_matrix(G)
    assert sorted(bf.in_neighbor_machine_ranks()) == [i for i in range(MACHINES) if i != MACHINE and W[i, MACHINE]]
    assert sorted(bf.out_neighbor_machine_ranks()) == [j for j in range(MACHINES) if j != MACHINE and W[MACHINE, j]]
    M = W if weighted else uniform_matrix(W)
    shape, seed = (2, 5), 3
    x = rank_input(RANK, shape, seed)
    x_before = x.clone()
    y = bf.hierarchical_neighbor_allreduce(x, name=f"hier.{graph}.{weighted}")
    check(y, combine(M, machine_means(shape, seed), MACHINE))
    assert torch.equal(x, x_before), "the input must not be modified"


def test_hierarchical_exponential_reaches_global_average_on_two_machines_or_fewer():
    # ExponentialGraph on <= 2 machines is fully connected with equal weights, so one step
    # gives the global mean on every rank.
    bf.set_machine_topology(bf.ExponentialGraph(MACHINES))
    shape, seed = (4,), 4
    y = bf.hierarchical_neighbor_allreduce(rank_input(RANK, shape, seed), name="hier.global")
    if MACHINES <= 2:
        check(y, machine_means(shape, seed).mean(axis=0))
    else:
        check(y, combine(uniform_matrix(weight_matrix(bf.ExponentialGraph(MACHINES))), machine_means(shape, seed),
                          MACHINE))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_hierarchical_dtypes_and_shapes(dtype):
    G = lopsided_graph(MACHINES)
    bf.set_machine_topology(G, is_weighted=True)
    for shape in [(), (3,), (2, 3, 2)]:
        seed = 5 + len(shape)
        y = bf.hierarchical_neighbor_allreduce(rank_input(RANK, shape, seed, dtype), name=f"hier.dt.{dtype}.{shape}")
        check(y, combine(weight_matrix(G), machine_means(shape, seed, dtype), MACHINE), dtype)


def test_hierarchical_keeps_inf():
    """inf in the input stays inf (as in allreduce): the ranks that are not
    their machine's leader must add zeros, not 0 * inf = nan."""
    bf.set_machine_topology(bf.RingGraph(MACHINES))
    x = torch.tensor([float("inf"), 1.0])
    y = bf.hierarchical_neighbor_allreduce(x, name="hier.inf")
    assert torch.isinf(y[0]) and y[0] > 0, y
    assert torch.isfinite(y[1]), y


def test_single_machine_degenerate_case():
    # On one machine there is no neighbour machine: the result is self_weight * local mean
    # (uniform: weight 1, so the local mean; on one rank, x itself).
    if MACHINES != 1:
        assert MACHINES > 1 and LOCAL_SIZE * MACHINES == SIZE
        return
    bf.set_machine_topology(bf.ExponentialGraph(1))
    assert bf.in_neighbor_machine_ranks() == [] and bf.out_neighbor_machine_ranks() == []
    shape, seed = (3,), 6
    X = np.stack([rank_input(r, shape, seed).numpy() for r in range(SIZE)])
    x = rank_input(RANK, shape, seed)
    y = bf.hierarchical_neighbor_allreduce(x, name="hier.single")
    check(y, X.mean(axis=0))
    if SIZE == 1:
        check(y, x.numpy())
        check(bf.allreduce(x, is_hierarchical_local=True, name="hier.single.local"), x.numpy())
    y = bf.hierarchical_neighbor_allreduce(x, self_weight=0.25, src_machine_weights={}, dst_machine_weights={},
                                           name="hier.single.explicit")
    check(y, 0.25 * X.mean(axis=0))


# ---- explicit (dynamic) machine weights ----------------------------------------------------------
@pytest.mark.parametrize("style", ["half", "dst_scaled", "dst_list"])
def test_hierarchical_explicit_ring_weights(style):
    # Machine m sends to m+1 and receives from m-1 (nobody on one machine).
    shape, seed = (3,), 7
    means = machine_means(shape, seed)
    nxt, prv = (MACHINE + 1) % MACHINES, (MACHINE - 1) % MACHINES
    M = np.zeros((MACHINES, MACHINES))
    for m in range(MACHINES):
        M[m, m] += 0.5
        if MACHINES > 1:
            M[(m - 1) % MACHINES, m] += 0.5
    if MACHINES == 1:
        src, dst = {}, ({} if style != "dst_list" else [])
    elif style == "half":
        src, dst = {prv: 0.5}, {nxt: 1.0}
    elif style == "dst_scaled":
        src, dst = {prv: 2.0}, {nxt: 0.25}
    else:
        src, dst = {prv: 0.5}, [nxt]
    y = bf.hierarchical_neighbor_allreduce(rank_input(RANK, shape, seed), self_weight=0.5, src_machine_weights=src,
                                           dst_machine_weights=dst, name=f"hier.explicit.{style}")
    check(y, combine(M, means, MACHINE))


def test_hierarchical_explicit_all_to_all_rank_dependent_weights():
    shape, seed = (2, 2), 8
    means = machine_means(shape, seed)

    def dst_w(i, j):
        return 0.2 + 0.1 * i + 0.03 * j

    def src_w(i, j):
        return 0.5 + 0.25 * ((i + 2 * j) % 3)

    M = np.zeros((MACHINES, MACHINES))
    for j in range(MACHINES):
        M[j, j] = 0.4
        for i in range(MACHINES):
            if i != j:
                M[i, j] = src_w(i, j) * dst_w(i, j)
    others = [m for m in range(MACHINES) if m != MACHINE]
    y = bf.hierarchical_neighbor_allreduce(rank_input(RANK, shape, seed), self_weight=0.4,
                                           src_machine_weights={i: src_w(i, MACHINE) for i in others},
                                           dst_machine_weights={j: dst_w(MACHINE, j) for j in others},
                                           name="hier.alltoall")
    check(y, combine(M, means, MACHINE))


# ---- nonblocking --------------------------------------------------------------------------------
def test_hierarchical_nonblocking_poll_then_synchronize():
    G = bf.ExponentialGraph(MACHINES)
    bf.set_machine_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape = (3,)
    handles = [bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 10 + k), name=f"hier.nb.{k}")
               for k in range(5)]
    for h in handles:
        wait_done(h)
    for k, h in enumerate(handles):
        check(bf.synchronize(h), combine(W, machine_means(shape, 10 + k), MACHINE))
    # Synchronize without polling, in reverse order, with explicit weights.
    handles = [bf.hierarchical_neighbor_allreduce_nonblocking(
        rank_input(RANK, shape, 20 + k), self_weight=1.0, src_machine_weights={m: 1.0 for m in range(MACHINES)
                                                                               if m != MACHINE},
        dst_machine_weights=[m for m in range(MACHINES) if m != MACHINE], name=f"hier.nb.sum.{k}")
        for k in range(5)]
    for k in reversed(range(5)):
        check(bf.synchronize(handles[k]), machine_means(shape, 20 + k).sum(axis=0))


def test_hierarchical_nonblocking_progresses_whatever_the_wait_order():
    """Like a single op, a nonblocking hierarchical allreduce makes progress in
    the background: ranks may wait for two of them in opposite orders, or run
    another collective first, without waiting for each other (both hung: each
    step started only when its own rank waited for that handle)."""
    G = bf.ExponentialGraph(MACHINES)
    bf.set_machine_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape = (4,)
    h1 = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 30), name="hier.order.a")
    h2 = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 31), name="hier.order.b")
    order = [(h1, 30), (h2, 31)] if RANK % 2 == 0 else [(h2, 31), (h1, 30)]
    for h, seed in order:
        check(bf.synchronize(h), combine(W, machine_means(shape, seed), MACHINE))
    h = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 32), name="hier.order.c")
    if RANK == 0:  # another collective between start and wait, on one rank only
        assert bf.allreduce(torch.ones(1), average=False, name="hier.order.mid").item() == SIZE
    check(bf.synchronize(h), combine(W, machine_means(shape, 32), MACHINE))
    if RANK != 0:
        assert bf.allreduce(torch.ones(1), average=False, name="hier.order.mid").item() == SIZE
    # an error in a step reaches the waiting caller
    bad = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, (RANK + 1,), 33), name="hier.order.bad")
    if SIZE > 1:
        with pytest.raises(ValueError, match=r"^hierarchical_neighbor_allreduce 'hier\.order\.bad': .*hier\.order\.bad\."):
            bf.synchronize(bad)
    else:
        bf.synchronize(bad)



def test_hierarchical_ops_started_in_different_orders_complete():
    """Names are keys: ranks may start hierarchical ops in different orders,
    as with any other op. (Before: the driver thread ran one composite to the
    end before looking at the next, so even ranks waited in 'a''s exchange and
    odd ranks in 'b''s; the deadlock check ended the job after 60 s.)"""
    G = bf.ExponentialGraph(MACHINES)
    bf.set_machine_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape = (4,)
    seeds = {"hier.start.a": 40, "hier.start.b": 41, "hier.start.c": 42}
    names = list(seeds) if RANK % 2 == 0 else list(reversed(seeds))
    handles = {n: bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, seeds[n]), name=n)
               for n in names}
    for n in seeds:
        check(bf.synchronize(handles[n]), combine(W, machine_means(shape, seeds[n]), MACHINE))


def test_hierarchical_in_skip_negotiate_mode_with_other_ops_in_between():
    """Skip-negotiate mode runs core ops in submission order. A nonblocking
    hierarchical op followed by another op, with rank-dependent compute in
    between: its later steps must come before that op on every rank. (Before:
    the driver submitted them whenever the previous step finished, and the
    skip-mode check failed ops at random: 'ranks disagree on the op'.)"""
    G = bf.ExponentialGraph(MACHINES)
    bf.set_machine_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape = (3,)
    bf.set_skip_negotiate_stage(True)
    try:
        for it in range(5):
            h = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 50 + it), name=f"hier.skip.{it}")
            if RANK % 2:
                time.sleep(0.01)
            s = bf.allreduce(torch.ones(2), average=False, name=f"hier.skip.mid.{it}")
            check(bf.synchronize(h), combine(W, machine_means(shape, 50 + it), MACHINE))
            assert s.tolist() == [float(SIZE)] * 2
    finally:
        bf.set_skip_negotiate_stage(False)

# ---- errors -------------------------------------------------------------------------------------
def test_partial_weight_arguments_raise_value_error():
    x = rank_input(RANK, (2,), 40)
    others = {m: 0.5 for m in range(MACHINES) if m != MACHINE}
    dst = list(others)
    for kwargs in ({"self_weight": 0.5}, {"src_machine_weights": others}, {"dst_machine_weights": dst},
                   {"self_weight": 0.5, "src_machine_weights": others},
                   {"self_weight": 0.5, "dst_machine_weights": dst},
                   {"src_machine_weights": others, "dst_machine_weights": dst}):
        with pytest.raises(ValueError):
            bf.hierarchical_neighbor_allreduce(x, **kwargs)
        with pytest.raises(ValueError):
            bf.hierarchical_neighbor_allreduce_nonblocking(x, **kwargs)


def test_other_argument_errors():
    x = rank_input(RANK, (2,), 41)
    with pytest.raises(TypeError):
        bf.hierarchical_neighbor_allreduce(x, neighbor_machine_weights={})
    with pytest.raises(TypeError):
        bf.hierarchical_neighbor_allreduce(x, send_neighbor_machines=[])
    with pytest.raises(TypeError):
        bf.hierarchical_neighbor_allreduce_nonblocking(x, neighbor_machine_weights={})
    with pytest.raises(ValueError):
        bf.hierarchical_neighbor_allreduce(torch.ones(2, dtype=torch.int64), self_weight=1.0,
                                           src_machine_weights={}, dst_machine_weights={})
    with pytest.raises(ValueError):
        bf.set_machine_topology(None)
    with pytest.raises(TypeError):
        bf.set_machine_topology(bf.ExponentialGraph(MACHINES + 1))
    with pytest.raises(TypeError):
        bf.set_machine_topology(nx.complete_graph(MACHINES))
    # Still usable afterwards.
    bf.set_machine_topology(bf.ExponentialGraph(MACHINES))
    U = uniform_matrix(weight_matrix(bf.ExponentialGraph(MACHINES)))
    check(bf.hierarchical_neighbor_allreduce(x, name="hier.after.errors"), combine(U, machine_means((2,), 41), MACHINE))


def test_machine_pattern_mismatch_raises_on_every_rank():
    # Every machine sends to the next one but receives from nobody (on one machine the
    # next one is itself, which is refused before anything is sent).
    x = rank_input(RANK, (2,), 42)
    says = "pattern mismatch" if MACHINES > 1 else "dst_machine_weights names this rank's own machine 0"
    with pytest.raises(ValueError, match=says):
        bf.hierarchical_neighbor_allreduce(x, self_weight=0.5, src_machine_weights={},
                                           dst_machine_weights={(MACHINE + 1) % MACHINES: 1.0},
                                           name="hier.mismatch")
    # The next op still works.
    bf.set_machine_topology(bf.ExponentialGraph(MACHINES))
    U = uniform_matrix(weight_matrix(bf.ExponentialGraph(MACHINES)))
    check(bf.hierarchical_neighbor_allreduce(x, name="hier.after.mismatch"),
          combine(U, machine_means((2,), 42), MACHINE))


def test_set_machine_topology_same_graph_returns_true():
    assert bf.set_machine_topology(bf.FullyConnectedGraph(MACHINES))
    G = lopsided_graph(MACHINES)  # differs from FullyConnectedGraph (even on one machine: 0.7 vs 1)
    assert bf.set_machine_topology(G, is_weighted=True)
    current = bf.load_machine_topology()
    assert current is G
    assert bf.set_machine_topology(lopsided_graph(MACHINES), is_weighted=True) is True
    assert bf.load_machine_topology() is current
    assert topology_util.IsTopologyEquivalent(bf.load_machine_topology(), G)


# ---- unnamed ops and rank-dependent progress (keep last: a failure here leaves ops in flight) ----
@pytest.mark.parametrize("hier_name", [None, "hier.progress.named"], ids=["unnamed", "named"])
def test_rank_dependent_poll_does_not_desynchronize_unnamed_names(hier_name):
    # Unnamed ops are named "<op>.noname.<handle>", which matches across ranks when every rank
    # issues the same sequence of ops. A hierarchical op is made of several core ops, started as
    # it is polled or synchronized. poll() is local, so a rank may poll when others do not; that
    # must not make the ranks disagree on the name of the hierarchical op's next step or of a
    # later unnamed op (which would deadlock: each rank waits for a name no other rank issues).
    G = bf.ExponentialGraph(MACHINES)
    bf.set_machine_topology(G)
    U = uniform_matrix(weight_matrix(G))
    shape = (3,)
    h = bf.hierarchical_neighbor_allreduce_nonblocking(rank_input(RANK, shape, 30), name=hier_name)
    if RANK == 0:
        time.sleep(0.3)
        bf.poll(h)  # the local step is done by now, so this starts the next step on rank 0 only
    g = bf.allreduce_nonblocking(rank_input(RANK, shape, 31))  # unnamed
    wait_done(h)
    wait_done(g)
    check(bf.synchronize(h), combine(U, machine_means(shape, 30), MACHINE))
    X = np.stack([rank_input(r, shape, 31).numpy() for r in range(SIZE)])
    check(bf.synchronize(g), X.mean(axis=0))
