"""Neighbor ops on every rank: neighbor_allreduce (static, weighted, explicit
and dynamic weights, nonblocking), neighbor_allgather (static and dynamic),
pair_gossip, consensus properties, argument errors and set_topology.

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py. Every rank's input
is a known function of its rank and a seed shared by all ranks (`rank_input`),
so every rank can rebuild every other rank's input and compute the expected
result with numpy from the FULL weight matrix W of the graph
(W[i][j] = weight of the edge i -> j, nx.to_numpy_array), independently of
BlueFog's own weighting code. Every test issues the same sequence of ops on
every rank (a rank with nothing to exchange still calls the op with empty
lists).
"""
import math
import time

import networkx as nx
import numpy as np
import pytest
import torch

import bluefog.torch as bf
from graph_refs import weight_matrix  # tests/parallel/graph_refs.py
from bluefog.common import topology_util

bf.init()
SIZE = bf.size()
RANK = bf.rank()
IS_POWER_OF_TWO = SIZE & (SIZE - 1) == 0


@pytest.fixture(autouse=True)
def _init():
    bf.init()  # idempotent; resets the topology to ExponentialGraph(size), unweighted
    yield


# ---- references -------------------------------------------------------------------------
GRAPHS = {
    "ExponentialTwoGraph": lambda n: bf.ExponentialTwoGraph(n),
    "ExponentialGraph": lambda n: bf.ExponentialGraph(n),
    "ExponentialGraph_base3": lambda n: bf.ExponentialGraph(n, base=3),
    "SymmetricExponentialGraph": lambda n: bf.SymmetricExponentialGraph(n),
    "MeshGrid2DGraph": lambda n: bf.MeshGrid2DGraph(n),
    "RingGraph0": lambda n: bf.RingGraph(n, connect_style=0),
    "RingGraph1": lambda n: bf.RingGraph(n, connect_style=1),
    "RingGraph2": lambda n: bf.RingGraph(n, connect_style=2),
    "StarGraph": lambda n: bf.StarGraph(n),
    "StarGraph_center_last": lambda n: bf.StarGraph(n, center_rank=n - 1),
    "FullyConnectedGraph": lambda n: bf.FullyConnectedGraph(n),
    # Weighted without self loops: the self weight is 0 when is_weighted=True.
    "ExponentialGraph_no_self_loops": lambda n: _without_self_loops(bf.ExponentialGraph(n)),
}


def _without_self_loops(G):
    G = G.copy()
    G.remove_edges_from([(i, i) for i in G.nodes])
    return G


def adjacency(W):
    """A[i][j] = 1 if i sends to j, i != j (no self loops)."""
    A = (W != 0).astype(np.float64)
    np.fill_diagonal(A, 0.0)
    return A


def uniform_matrix(W):
    """The mixing matrix of the default (unweighted) neighbor_allreduce:
    U[i][j] = 1/(indeg_j + 1) if i -> j or i == j, so y_j = sum_i U[i][j] x_i."""
    A = adjacency(W)
    indeg = A.sum(axis=0)
    return (A + np.eye(SIZE)) / (indeg + 1.0)[None, :]


def in_neighbors_from_W(W, j):
    return [i for i in range(SIZE) if i != j and W[i, j] != 0]


def rank_input(r, shape, seed, dtype=torch.float64):
    """Rank r's input: uniform in [-1, 1), the same on every rank for (r, shape, seed)."""
    rng = np.random.RandomState(seed * 1009 + r)
    return torch.from_numpy(rng.uniform(-1.0, 1.0, size=shape)).to(dtype)


def all_inputs(shape, seed, dtype=torch.float64):
    """float64 numpy array (SIZE, *shape) of every rank's input, as cast to dtype."""
    return np.stack([rank_input(r, shape, seed, dtype).to(torch.float64).numpy() for r in range(SIZE)])


def mix(M, X, j):
    """y_j = sum_i M[i][j] * x_i for the stacked inputs X."""
    return np.tensordot(M[:, j], X, axes=(0, 0))


def tolerance(dtype):
    return {torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2),
            torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12)}[dtype]


def check(actual, expected, dtype=torch.float64):
    """actual (torch) == expected (numpy float64) within dtype tolerance; same dtype and shape."""
    assert isinstance(actual, torch.Tensor)
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert tuple(actual.shape) == tuple(np.shape(expected)), (actual.shape, np.shape(expected))
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(actual.to(torch.float64).numpy(), expected, rtol=rtol, atol=atol)


def wait_done(handle, seconds=60.0):
    """Polls until the op is done; fails (instead of hanging) after `seconds`."""
    deadline = time.time() + seconds
    while not bf.poll(handle):
        assert time.time() < deadline, f"handle {handle} not done after {seconds} s"
        time.sleep(0.001)


def test_reference_sanity():
    # The reference helpers themselves: uniform columns sum to 1, and for size 4 the
    # default ExponentialGraph sends r -> r+1, r+2 with weight 1/3 (BLUEFOG_API.md 3).
    for make in GRAPHS.values():
        U = uniform_matrix(weight_matrix(make(SIZE)))
        np.testing.assert_allclose(U.sum(axis=0), np.ones(SIZE), atol=1e-12)
    if SIZE == 4:
        W = weight_matrix(bf.ExponentialGraph(4))
        np.testing.assert_allclose(W[0], [1 / 3, 1 / 3, 1 / 3, 0.0])
        assert in_neighbors_from_W(W, 0) == [2, 3]


# ---- neighbor_allreduce: static topologies ----------------------------------------------------
@pytest.mark.parametrize("graph", list(GRAPHS), ids=list(GRAPHS))
def test_neighbor_allreduce_default_uniform(graph):
    G = GRAPHS[graph](SIZE)
    assert bf.set_topology(G)
    assert not bf.is_topo_weighted()
    W = weight_matrix(G)
    assert sorted(bf.in_neighbor_ranks()) == in_neighbors_from_W(W, RANK)
    assert sorted(bf.out_neighbor_ranks()) == [j for j in range(SIZE) if j != RANK and W[RANK, j] != 0]
    shape, seed = (3, 4), 11
    x = rank_input(RANK, shape, seed)
    x_before = x.clone()
    y = bf.neighbor_allreduce(x, name=f"nar.uniform.{graph}")
    check(y, mix(uniform_matrix(W), all_inputs(shape, seed), RANK))
    assert torch.equal(x, x_before), "the input must not be modified"


@pytest.mark.parametrize("graph", list(GRAPHS), ids=list(GRAPHS))
def test_neighbor_allreduce_topology_weights(graph):
    G = GRAPHS[graph](SIZE)
    assert bf.set_topology(G, is_weighted=True)
    assert bf.is_topo_weighted()
    W = weight_matrix(G)
    shape, seed = (5,), 12
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), name=f"nar.weighted.{graph}")
    # y_j = sum_i W[i][j] x_i: column j of W, self weight W[j][j] included.
    check(y, mix(W, all_inputs(shape, seed), RANK))


def test_weighted_and_uniform_differ_where_weights_are_not_uniform():
    # MeshGrid2D uses Metropolis-Hastings weights: on 4 ranks (2x2 grid, every degree 3)
    # they coincide with 1/(indeg+1), so a custom non-uniform weighted graph is used to make
    # sure is_weighted=True really uses W and not the uniform rule.
    W = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        W[i, i] = 0.6
        W[i, (i + 1) % SIZE] += 0.4
    G = nx.from_numpy_array(W, create_using=nx.DiGraph)
    shape, seed = (4,), 13
    X = all_inputs(shape, seed)
    bf.set_topology(G, is_weighted=True)
    check(bf.neighbor_allreduce(rank_input(RANK, shape, seed), name="nar.custom.w"), mix(W, X, RANK))
    bf.set_topology(G, is_weighted=False)
    assert not bf.is_topo_weighted()
    check(bf.neighbor_allreduce(rank_input(RANK, shape, seed), name="nar.custom.u"),
          mix(uniform_matrix(W), X, RANK))
    if SIZE > 1:  # 0.6 / 0.4 vs 1/2, 1/2
        assert not np.allclose(mix(W, X, RANK), mix(uniform_matrix(W), X, RANK))


def test_in_neighbor_ranks_order_for_graph_with_unsorted_predecessors():
    # A graph whose edges are added in a non-sorted order: in_neighbor_ranks() follows
    # networkx order, and neighbor_allreduce must still weight the right ranks.
    G = nx.DiGraph()
    G.add_nodes_from(range(SIZE))
    edges = [(i, (i - k) % SIZE) for k in (2, 1) for i in range(SIZE)]
    for i, j in edges:
        if i != j:
            G.add_edge(i, j, weight=0.25 if (i - j) % SIZE == 1 else 0.15)
    for i in range(SIZE):
        G.add_edge(i, i, weight=1.0 - sum(d["weight"] for _, t, d in G.out_edges(i, data=True) if t != i))
    W = weight_matrix(G)
    assert bf.set_topology(G, is_weighted=True)
    order = bf.in_neighbor_ranks()
    assert order == [p for p in G.predecessors(RANK) if p != RANK]
    if SIZE >= 3:  # node 0's predecessors come as (2, 1): the case this test is about
        assert [p for p in G.predecessors(0) if p != 0] == [2 % SIZE, 1]
    shape, seed = (2, 3), 14
    check(bf.neighbor_allreduce(rank_input(RANK, shape, seed), name="nar.unsorted"),
          mix(W, all_inputs(shape, seed), RANK))
    # neighbor_allgather follows the same (unsorted) order.
    y = bf.neighbor_allgather(rank_input(RANK, (1, 2), seed), name="nag.unsorted")
    expected = np.concatenate([rank_input(r, (1, 2), seed).numpy() for r in order]) if order else np.zeros((0, 2))
    check(y, expected)


@pytest.mark.parametrize("graph", ["ExponentialGraph", "RingGraph2", "StarGraph"])
def test_neighbor_allreduce_explicit_static_weights(graph):
    G = GRAPHS[graph](SIZE)
    bf.set_topology(G)
    W = weight_matrix(G)
    shape, seed = (6,), 15
    X = all_inputs(shape, seed)

    # Rank-dependent, non-stochastic weights: self 0.1*(j+1), source i -> 0.05*(i+2).
    def explicit_matrix(subset):
        M = np.zeros((SIZE, SIZE))
        for j in range(SIZE):
            M[j, j] = 0.1 * (j + 1)
            nbrs = in_neighbors_from_W(W, j)
            for i in (nbrs[:1] if subset else nbrs):
                M[i, j] = 0.05 * (i + 2)
        return M

    for subset in (False, True):
        nbrs = bf.in_neighbor_ranks()
        chosen = sorted(nbrs)[:1] if subset else nbrs
        y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), self_weight=0.1 * (RANK + 1),
                                  src_weights={i: 0.05 * (i + 2) for i in chosen},
                                  name=f"nar.explicit.{graph}.{subset}")
        check(y, mix(explicit_matrix(subset), X, RANK))
    # self_weight as an int and zero weights are numbers too.
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), self_weight=1,
                              src_weights={i: 0 for i in bf.in_neighbor_ranks()}, name=f"nar.identity.{graph}")
    check(y, X[RANK])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
def test_neighbor_allreduce_dtypes(dtype, weighted):
    G = bf.MeshGrid2DGraph(SIZE)
    bf.set_topology(G, is_weighted=weighted)
    W = weight_matrix(G)
    M = W if weighted else uniform_matrix(W)
    shape, seed = (4, 5), 16
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed, dtype), name=f"nar.dtype.{dtype}.{weighted}")
    # Reference from the dtype-rounded inputs, computed in float64.
    check(y, mix(M, all_inputs(shape, seed, dtype), RANK), dtype)
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed, dtype), self_weight=0.5,
                              src_weights={i: 0.5 / max(1, len(bf.in_neighbor_ranks()))
                                           for i in bf.in_neighbor_ranks()},
                              name=f"nar.dtype.explicit.{dtype}.{weighted}")
    E = np.zeros((SIZE, SIZE))
    for j in range(SIZE):
        nbrs = in_neighbors_from_W(W, j)
        E[j, j] = 0.5
        for i in nbrs:
            E[i, j] = 0.5 / len(nbrs)
    check(y, mix(E, all_inputs(shape, seed, dtype), RANK), dtype)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3, 4), (3, 1, 2, 2), (0, 3)],
                         ids=["scalar", "one", "vector", "3d", "4d", "empty"])
def test_neighbor_allreduce_shapes(shape):
    G = bf.ExponentialGraph(SIZE)
    W = weight_matrix(G)
    seed = 17
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), name=f"nar.shape.{shape}")
    check(y, mix(uniform_matrix(W), all_inputs(shape, seed), RANK))


def test_neighbor_allreduce_noncontiguous_input():
    W = weight_matrix(bf.ExponentialGraph(SIZE))
    seed = 18
    base = rank_input(RANK, (5, 3), seed)
    x = base.t()  # (3, 5), not contiguous
    assert not x.is_contiguous()
    y = bf.neighbor_allreduce(x, name="nar.noncontig")
    ref = mix(uniform_matrix(W), all_inputs((5, 3), seed), RANK).T
    check(y, ref)


def test_neighbor_allreduce_nonblocking_poll_then_synchronize():
    G = bf.RingGraph(SIZE)
    bf.set_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape, seed = (3, 3), 19
    handle = bf.neighbor_allreduce_nonblocking(rank_input(RANK, shape, seed), name="nar.nonblocking")
    assert isinstance(handle, int)
    wait_done(handle)
    check(bf.synchronize(handle), mix(W, all_inputs(shape, seed), RANK))
    # bf.wait is an alias; an unnamed op works as well when all ranks issue the same sequence.
    handle = bf.neighbor_allreduce_nonblocking(rank_input(RANK, shape, seed + 1))
    check(bf.wait(handle), mix(W, all_inputs(shape, seed + 1), RANK))


def test_many_nonblocking_in_flight():
    G = bf.ExponentialGraph(SIZE)
    W = weight_matrix(G)
    U = uniform_matrix(W)
    shape = (4,)
    count = 50
    handles = [bf.neighbor_allreduce_nonblocking(rank_input(RANK, shape, 100 + k), name=f"nar.flight.{k}")
               for k in range(count)]
    assert len(set(handles)) == count
    for k, h in enumerate(handles):
        check(bf.synchronize(h), mix(U, all_inputs(shape, 100 + k), RANK))


def test_many_nonblocking_in_flight_mixed_weights_and_reverse_sync():
    G = bf.SymmetricExponentialGraph(SIZE)
    bf.set_topology(G, is_weighted=True)
    W = weight_matrix(G)
    shape = (2, 2)
    count = 20
    handles = []
    for k in range(count):
        if k % 2:
            handles.append(bf.neighbor_allreduce_nonblocking(rank_input(RANK, shape, 200 + k),
                                                             name=f"nar.mixed.{k}"))
        else:
            handles.append(bf.neighbor_allreduce_nonblocking(
                rank_input(RANK, shape, 200 + k), self_weight=1.0,
                src_weights={i: 1.0 for i in bf.in_neighbor_ranks()}, name=f"nar.mixed.{k}"))
    S = adjacency(W) + np.eye(SIZE)  # plain sum over self and in-neighbors
    for k in reversed(range(count)):
        check(bf.synchronize(handles[k]), mix(W if k % 2 else S, all_inputs(shape, 200 + k), RANK))



def test_fused_batch_of_large_tensors_mixed_shapes_dtypes_and_send_scales():
    # Tensors too large to travel inside the negotiation (BLUEFOG_INLINE_BYTES),
    # started back to back so that the core fuses them into one exchange per
    # dtype: the fused path receives into one buffer that every op's result is
    # read from (the rows of each op are a stride apart there). Shapes include
    # a 0-d, an empty and a 3-d tensor; a dynamic exchange scales what it sends.
    bf.set_topology(bf.ExponentialGraph(SIZE))
    W = uniform_matrix(weight_matrix(bf.ExponentialGraph(SIZE)))
    shapes = [(20000,), (), (0,), (40, 30, 17), (1,), (9000, 3), (5, 0), (33333,)]
    dtypes = [torch.float64, torch.float32]
    ops = []
    for k, shape in enumerate(shapes * 2):
        dtype = dtypes[k % 2]
        ops.append((shape, dtype, 700 + k, bf.neighbor_allreduce_nonblocking(
            rank_input(RANK, shape, 700 + k, dtype), name=f"nar.fused.big.{k}")))
    for shape, dtype, seed, h in reversed(ops):
        check(bf.synchronize(h), mix(W, all_inputs(shape, seed, dtype), RANK), dtype)
    if SIZE == 1:
        return
    # One peer each way, sent scaled by 0.5 (the scaled copy sits beside the packed input).
    dst, src = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    ops = [(shape, 800 + k, bf.neighbor_allreduce_nonblocking(
        rank_input(RANK, shape, 800 + k), self_weight=0.25, src_weights={src: 1.5}, dst_weights={dst: 0.5},
        name=f"nar.fused.dyn.{k}")) for k, shape in enumerate(shapes)]
    for shape, seed, h in ops:
        X = all_inputs(shape, seed)
        check(bf.synchronize(h), 0.25 * X[RANK] + 1.5 * 0.5 * X[src])

# ---- neighbor_allreduce: dynamic --------------------------------------------------------------
def one_peer_schedules(G):
    """Every rank's GetDynamicOnePeerSendRecvRanks generator (rank r at index r)."""
    return [bf.GetDynamicOnePeerSendRecvRanks(G, r) for r in range(SIZE)]


def test_dynamic_one_peer_size_one_has_no_schedule():
    if SIZE > 1:
        # Every rank has an out-neighbour in ExponentialTwoGraph(size > 1).
        send, recv = next(bf.GetDynamicOnePeerSendRecvRanks(bf.ExponentialTwoGraph(SIZE), RANK))
        assert len(send) == 1 and send[0] != RANK
        return
    gen = bf.GetDynamicOnePeerSendRecvRanks(bf.ExponentialTwoGraph(SIZE), RANK)
    with pytest.raises(ValueError):
        next(gen)
    # A dynamic exchange with nobody still works on one rank.
    x = rank_input(RANK, (3,), 20)
    y = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={}, dst_weights={}, name="dyn.alone")
    check(y, 0.5 * x.numpy())


@pytest.mark.parametrize("weights", ["half", "dst_scaled", "dst_list"])
def test_dynamic_one_peer_average_consensus(weights):
    if SIZE == 1:
        pytest.skip("no one-peer schedule on one rank (covered by test_dynamic_one_peer_size_one_has_no_schedule)")
    G = bf.ExponentialTwoGraph(SIZE)
    gens = one_peer_schedules(G)
    mine = bf.GetDynamicOnePeerSendRecvRanks(G, RANK)
    x = torch.tensor([float(RANK)], dtype=torch.float64)
    X = np.arange(SIZE, dtype=np.float64)  # reference: every rank's value
    iterations = max(1, int(math.ceil(math.log2(SIZE))))
    for k in range(iterations):
        steps = [next(g) for g in gens]
        send, recv = next(mine)
        assert (send, recv) == steps[RANK]
        # Reference built from every rank's send list only (recv lists derived here).
        M = 0.5 * np.eye(SIZE)
        for i, (dst, _) in enumerate(steps):
            for j in dst:
                M[i, j] += 0.5
        X = M.T @ X
        assert sorted(recv) == sorted(i for i, (dst, _) in enumerate(steps) if RANK in dst)
        if weights == "half":
            x = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={r: 0.5 for r in recv},
                                      dst_weights={r: 1.0 for r in send}, name=f"dyn.half.{k}")
        elif weights == "dst_scaled":
            x = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={r: 1.0 for r in recv},
                                      dst_weights={r: 0.5 for r in send}, name=f"dyn.scaled.{k}")
        else:  # a list of destinations means weight 1
            x = bf.neighbor_allreduce(x, self_weight=0.5, src_weights={r: 0.5 for r in recv},
                                      dst_weights=list(send), name=f"dyn.list.{k}")
        check(x, X[RANK:RANK + 1])
    if IS_POWER_OF_TWO:
        # log2(size) one-peer exponential-2 steps reach the exact average.
        assert abs(x.item() - (SIZE - 1) / 2.0) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_dynamic_neighbor_allreduce_rank_dependent_dst_weights(dtype):
    # Each rank sends to every other rank (or nobody on one rank), scaled by a weight that
    # depends on sender and receiver: y_j = s_j x_j + sum_i src_j[i] * d_i[j] * x_i.
    shape, seed = (3,), 21
    X = all_inputs(shape, seed, dtype)

    def dst_w(i, j):
        return 0.1 + 0.2 * i + 0.05 * j

    def src_w(i, j):
        return 1.0 + 0.5 * ((i + j) % 2)

    M = np.zeros((SIZE, SIZE))
    for j in range(SIZE):
        M[j, j] = 0.25
        for i in range(SIZE):
            if i != j:
                M[i, j] = src_w(i, j) * dst_w(i, j)
    others = [r for r in range(SIZE) if r != RANK]
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed, dtype), self_weight=0.25,
                              src_weights={i: src_w(i, RANK) for i in others},
                              dst_weights={j: dst_w(RANK, j) for j in others}, name=f"dyn.full.{dtype}")
    check(y, mix(M, X, RANK), dtype)


def test_dynamic_only_some_ranks_exchange():
    # Only rank 0 receives (from everybody); the other ranks pass an empty source list and
    # rank 0 an empty destination list.
    shape, seed = (2,), 22
    X = all_inputs(shape, seed)
    if RANK == 0:
        src, dst = {i: 1.0 / SIZE for i in range(1, SIZE)}, {}
        sw = 1.0 / SIZE
    else:
        src, dst = {}, {0: 1.0}
        sw = 1.0
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), self_weight=sw, src_weights=src, dst_weights=dst,
                              name="dyn.gather")
    expected = X.mean(axis=0) if RANK == 0 else X[RANK]
    check(y, expected)


# ---- consensus on a static graph --------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_float_averages_are_accumulated_in_double_and_rounded_once(dtype):
    # self 1.0 plus (SIZE - 1) neighbors weighted 2^-25: in float32, adding one
    # term at a time would round each partial sum back to 1.0; the result must
    # be the double-precision sum rounded once (1 + 2^-23 on 4 ranks).
    others = [r for r in range(SIZE) if r != RANK]
    x = torch.ones(1000, dtype=dtype)
    out = bf.neighbor_allreduce(x, self_weight=1.0, src_weights={r: 2.0 ** -25 for r in others},
                                dst_weights=others, name=f"nar.rounded_once.{dtype}")
    expected = torch.full((1000,), 1.0 + (SIZE - 1) * 2.0 ** -25, dtype=torch.float64).to(dtype)
    assert torch.equal(out, expected), (out[0].item(), expected[0].item())
    # The same with each number of sources from 1 to SIZE - 1 (the combine has
    # a loop per source count), and with one source weighted 0: that source's
    # values (NaN here) are ignored entirely, as the unfused ATen path does.
    for m in range(1, SIZE):
        src = [(RANK + d) % SIZE for d in range(1, m + 1)]
        dst = [(RANK - d) % SIZE for d in range(1, m + 1)]
        out = bf.neighbor_allreduce(x, self_weight=1.0, src_weights={r: 2.0 ** -25 for r in src},
                                    dst_weights=dst, name=f"nar.rounded_once.{dtype}.{m}")
        expected = torch.full((1000,), 1.0 + m * 2.0 ** -25, dtype=torch.float64).to(dtype)
        assert torch.equal(out, expected), (m, out[0].item(), expected[0].item())
        poisoned = x * float("nan") if RANK == 0 else x
        weights = {r: (0.0 if r == 0 else 2.0 ** -25) for r in src}
        out = bf.neighbor_allreduce(poisoned, self_weight=1.0, src_weights=weights,
                                    dst_weights=dst, name=f"nar.zero_weight.{dtype}.{m}")
        if RANK == 0:
            assert torch.isnan(out).all()  # its own NaN, weighted 1
        else:
            n = sum(1 for r in src if r != 0)
            expected = torch.full((1000,), 1.0 + n * 2.0 ** -25, dtype=torch.float64).to(dtype)
            assert torch.equal(out, expected), (m, out[0].item(), expected[0].item())


def test_static_exponential_consensus_rate():
    G = bf.ExponentialGraph(SIZE)
    bf.set_topology(G)
    U = uniform_matrix(weight_matrix(G))
    eig = np.sort(np.abs(np.linalg.eigvals(U)))[::-1]
    assert abs(eig[0] - 1.0) < 1e-9
    lam2 = eig[1] if SIZE > 1 else 0.0
    assert lam2 < 1.0 - 1e-9 or SIZE == 1  # connected: it does converge
    shape, seed = (3,), 23
    X = all_inputs(shape, seed)
    mean = X.mean(axis=0)
    x = rank_input(RANK, shape, seed)

    def global_error(t):
        gathered = bf.allgather(t.unsqueeze(0), name=f"consensus.gather.{k}").numpy()
        return float(np.linalg.norm(gathered - mean)), gathered

    k = 0
    err0, _ = global_error(x)
    assert err0 > 0 or SIZE == 1
    for k in range(1, 11):
        x = bf.neighbor_allreduce(x, name=f"consensus.{k}")
        X = U.T @ X
        check(x, X[RANK])
        err, gathered = global_error(x)
        np.testing.assert_allclose(gathered.mean(axis=0), mean, atol=1e-12)  # doubly stochastic
        assert err <= err0 * lam2 ** k * (1 + 1e-6) + 1e-12, (k, err, err0, lam2)


# ---- neighbor_allgather -----------------------------------------------------------------------
def rows_input(r, dtype, cols=3):
    """Rank r's allgather input: r+1 rows (variable first dimension), exact in every dtype."""
    values = torch.arange((r + 1) * cols, dtype=torch.float64) % 7 + 10 * r
    return values.reshape(r + 1, cols).to(dtype)


GATHER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.float16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", GATHER_DTYPES, ids=str)
@pytest.mark.parametrize("graph", ["ExponentialGraph", "RingGraph1", "StarGraph", "MeshGrid2DGraph"])
def test_neighbor_allgather_static(graph, dtype):
    G = GRAPHS[graph](SIZE)
    bf.set_topology(G)
    W = weight_matrix(G)
    order = bf.in_neighbor_ranks()
    assert sorted(order) == in_neighbors_from_W(W, RANK)
    y = bf.neighbor_allgather(rows_input(RANK, dtype), name=f"nag.{graph}.{dtype}")
    if order:
        expected = torch.cat([rows_input(r, dtype) for r in order])
    else:
        expected = torch.empty((0, 3), dtype=dtype)
    assert y.dtype == dtype
    assert tuple(y.shape) == (sum(r + 1 for r in order), 3)
    assert torch.equal(y, expected)


def test_neighbor_allgather_some_ranks_send_zero_rows():
    # Rank r sends r rows: rank 0 sends an empty (0, 2) tensor.
    G = bf.FullyConnectedGraph(SIZE)
    bf.set_topology(G)
    order = bf.in_neighbor_ranks()
    assert sorted(order) == [r for r in range(SIZE) if r != RANK]

    def inp(r):
        return torch.arange(2 * r, dtype=torch.int64).reshape(r, 2) + 100 * r

    y = bf.neighbor_allgather(inp(RANK), name="nag.zero.rows")
    expected = torch.cat([inp(r) for r in order]) if order else torch.empty((0, 2), dtype=torch.int64)
    assert tuple(y.shape) == (sum(order), 2)
    assert torch.equal(y, expected)


def test_neighbor_allgather_multidim_and_nonblocking():
    G = bf.ExponentialTwoGraph(SIZE)
    bf.set_topology(G)
    order = bf.in_neighbor_ranks()

    def inp(r):
        return rank_input(r, (r + 1, 2, 3), 24, torch.float32)

    handle = bf.neighbor_allgather_nonblocking(inp(RANK), name="nag.nonblocking")
    wait_done(handle)
    y = bf.synchronize(handle)
    expected = torch.cat([inp(r) for r in order]) if order else torch.empty((0, 2, 3))
    assert tuple(y.shape) == tuple(expected.shape)
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32, torch.float64], ids=str)
def test_neighbor_allgather_dynamic(dtype):
    # Rank r sends to r+1 and r+3 (mod size, self and duplicates excluded) and lists its
    # sources in DESCENDING order: the output follows src_ranks order, not rank order.
    def dsts(r):
        return sorted({(r + 1) % SIZE, (r + 3) % SIZE} - {r})

    src = sorted((i for i in range(SIZE) if RANK in dsts(i)), reverse=True)
    y = bf.neighbor_allgather(rows_input(RANK, dtype), src_ranks=src, dst_ranks=dsts(RANK),
                              name=f"nag.dyn.{dtype}")
    expected = torch.cat([rows_input(r, dtype) for r in src]) if src else torch.empty((0, 3), dtype=dtype)
    assert y.dtype == dtype
    assert torch.equal(y, expected)
    # A gather to rank 0 only: the other ranks receive nothing (empty source lists).
    src = list(range(SIZE - 1, 0, -1)) if RANK == 0 else []
    dst = [] if RANK == 0 else [0]
    y = bf.neighbor_allgather(rows_input(RANK, dtype), src_ranks=src, dst_ranks=dst, name=f"nag.to0.{dtype}")
    expected = torch.cat([rows_input(r, dtype) for r in src]) if src else torch.empty((0, 3), dtype=dtype)
    assert tuple(y.shape) == tuple(expected.shape)
    assert torch.equal(y, expected)


# ---- pair_gossip ------------------------------------------------------------------------------
def partner(r):
    """(0,1), (2,3), ...; an odd last rank pairs with itself."""
    p = r ^ 1
    return p if p < SIZE else r


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_pair_gossip_default_average(dtype):
    shape, seed = (3, 2), 25
    X = all_inputs(shape, seed, dtype)
    y = bf.pair_gossip(rank_input(RANK, shape, seed, dtype), partner(RANK), name=f"gossip.{dtype}")
    check(y, 0.5 * (X[RANK] + X[partner(RANK)]), dtype)


def test_pair_gossip_custom_weights_and_nonblocking():
    shape, seed = (4,), 26
    X = all_inputs(shape, seed)
    # Weights that sum to 1, so that a rank paired with itself gets x back either way.
    for sw, pw in ((0.3, 0.7), (0.8, 0.2)):
        y = bf.pair_gossip(rank_input(RANK, shape, seed), partner(RANK), self_weight=sw, pair_weight=pw,
                           name=f"gossip.custom.{sw}")
        p = partner(RANK)
        check(y, X[RANK] if p == RANK else sw * X[RANK] + pw * X[p])
    handle = bf.pair_gossip_nonblocking(rank_input(RANK, shape, seed), partner(RANK), name="gossip.nonblocking")
    wait_done(handle)
    check(bf.synchronize(handle), 0.5 * (X[RANK] + X[partner(RANK)]))


def test_pair_gossip_argument_errors():
    x = rank_input(RANK, (2,), 27)
    with pytest.raises(ValueError):
        bf.pair_gossip(x, partner(RANK), self_weight=0.5)
    with pytest.raises(ValueError):
        bf.pair_gossip(x, partner(RANK), pair_weight=0.5)
    with pytest.raises(ValueError):
        bf.pair_gossip(torch.ones(2, dtype=torch.int32), partner(RANK))
    # Still usable afterwards.
    X = all_inputs((2,), 27)
    check(bf.pair_gossip(x, partner(RANK), name="gossip.after"), 0.5 * (X[RANK] + X[partner(RANK)]))


@pytest.mark.parametrize("blocking", [True, False])
def test_pair_gossip_mismatch_errors_name_pair_gossip(blocking):
    """A cross-rank mismatch found by the core (which runs pair_gossip as a
    neighbor_allreduce) names pair_gossip and the op's name on every rank."""
    if SIZE % 2 == 1:  # (skipped on every rank: the paired ranks would wait for the unpaired one)
        pytest.skip("needs a partner for every rank (an even number of ranks)")
    x = rank_input(RANK, (2,), 27, torch.float32 if RANK % 2 == 0 else torch.float64)
    name = f"gossip.mismatch.{blocking}"
    with pytest.raises(ValueError, match=rf"^pair_gossip '{name}' .*ranks disagree on dtype"):
        if blocking:
            bf.pair_gossip(x, partner(RANK), name=name)
        else:
            bf.synchronize(bf.pair_gossip_nonblocking(x, partner(RANK), name=name))
    X = all_inputs((2,), 27)
    check(bf.pair_gossip(rank_input(RANK, (2,), 27), partner(RANK), name=f"{name}.after"),
          0.5 * (X[RANK] + X[partner(RANK)]))


# ---- errors -----------------------------------------------------------------------------------
def expect_default_still_works(tag):
    W = weight_matrix(bf.load_topology())
    shape, seed = (3,), 28
    y = bf.neighbor_allreduce(rank_input(RANK, shape, seed), name=f"after.{tag}")
    check(y, mix(uniform_matrix(W), all_inputs(shape, seed), RANK))


def test_static_weights_for_non_neighbor_raise():
    bf.set_topology(bf.RingGraph(SIZE, connect_style=2))  # r receives from r-1 only
    x = rank_input(RANK, (3,), 29)
    bad_keys = [RANK, SIZE]  # self, out of range
    if SIZE >= 3:
        bad_keys.append((RANK + 1) % SIZE)  # a real rank that is not an in-neighbour
    for bad in bad_keys:
        with pytest.raises(ValueError, match="in-neighbor"):
            bf.neighbor_allreduce(x, self_weight=0.5, src_weights={bad: 0.5}, name=f"bad.static.{bad}")
        with pytest.raises(ValueError, match="in-neighbor"):
            bf.neighbor_allreduce_nonblocking(x, self_weight=0.5, src_weights={bad: 0.5}, name=f"bad.nb.{bad}")
    expect_default_still_works("static")


def test_dynamic_pattern_mismatch_raises_on_every_rank():
    x = rank_input(RANK, (3,), 30)
    # Every rank sends to r+1 but receives from nobody (on one rank: sends to itself).
    with pytest.raises(ValueError, match="pattern mismatch"):
        bf.neighbor_allreduce(x, self_weight=0.5, src_weights={}, dst_weights={(RANK + 1) % SIZE: 1.0},
                              name="mismatch.1")
    expect_default_still_works("mismatch.1")
    if SIZE > 2:
        # Every rank sends to r+1 but lists r+1 (not r-1) as its source.
        with pytest.raises(ValueError, match="pattern mismatch"):
            bf.neighbor_allreduce(x, self_weight=0.5, src_weights={(RANK + 1) % SIZE: 0.5},
                                  dst_weights={(RANK + 1) % SIZE: 1.0}, name="mismatch.2")
    else:
        # Receiving from a rank that sends nothing.
        src = {(RANK + 1) % SIZE: 0.5} if SIZE > 1 else {RANK: 0.5}
        with pytest.raises(ValueError, match="pattern mismatch"):
            bf.neighbor_allreduce(x, self_weight=0.5, src_weights=src, dst_weights={}, name="mismatch.2")
    # Nonblocking: the error surfaces at synchronize.
    handle = bf.neighbor_allreduce_nonblocking(x, self_weight=0.5, src_weights={},
                                               dst_weights={(RANK + 1) % SIZE: 1.0}, name="mismatch.3")
    with pytest.raises(ValueError, match="pattern mismatch"):
        bf.synchronize(handle)
    # neighbor_allgather checks the same way.
    with pytest.raises(ValueError, match="pattern mismatch"):
        bf.neighbor_allgather(x, src_ranks=[], dst_ranks=[(RANK + 1) % SIZE], name="mismatch.gather")
    expect_default_still_works("mismatch.3")
    # The same name can be reused after a failed op.
    with pytest.raises(ValueError, match="pattern mismatch"):
        bf.neighbor_allreduce(x, self_weight=0.5, src_weights={}, dst_weights={(RANK + 1) % SIZE: 1.0},
                              name="mismatch.1")


def test_skip_negotiate_mode_checks_the_pattern_and_gives_exact_results():
    """Skip-negotiate mode with enable_topo_check=True: a send/receive pattern
    that does not mirror fails on every rank (checked inside the op's
    agreement allreduce on up to BLUEFOG_SKIP_PATTERN_MATRIX_RANKS ranks, by
    gathering the lists above; the suites run this file with 0 too), and
    static, dynamic, nonblocking (fused) and gather ops give exact results."""
    shape, seed = (3,), 31
    X = all_inputs(shape, seed)
    x = rank_input(RANK, shape, seed)
    others = [r for r in range(SIZE) if r != RANK]
    U = uniform_matrix(weight_matrix(bf.load_topology()))
    # No try/finally: a rank that fails here must not switch modes (a collective the others
    # are not in: a hang); with -x it leaves, and the launcher ends the job.
    bf.set_skip_negotiate_stage(True)
    # Static topology, blocking and a batch of nonblocking ones.
    check(bf.neighbor_allreduce(x, name="skip.static"), mix(U, X, RANK))
    handles = [bf.neighbor_allreduce_nonblocking(x * (i + 1), name=f"skip.static.nb.{i}") for i in range(8)]
    for i, h in enumerate(handles):
        check(bf.synchronize(h), (i + 1) * mix(U, X, RANK))
    # Dynamic: every rank sends to every other one.
    M = np.full((SIZE, SIZE), 1.0 / SIZE)
    check(bf.neighbor_allreduce(x, self_weight=1.0 / SIZE, src_weights={r: 1.0 / SIZE for r in others},
                                dst_weights=others, name="skip.dyn"), mix(M, X, RANK))
    gathered = bf.neighbor_allgather(x.reshape(1, 3), src_ranks=others, dst_ranks=others, name="skip.gather")
    check(gathered, X[others].reshape(len(others), 3))
    if SIZE > 1:
        # Every rank sends to r+1 but receives from nobody: refused on every rank.
        with pytest.raises(ValueError, match="pattern mismatch") as info:
            bf.neighbor_allreduce(x, self_weight=0.5, src_weights={}, dst_weights={(RANK + 1) % SIZE: 1.0},
                                  name="skip.mismatch")
        assert "'skip.mismatch'" in str(info.value)
        assert f"rank {RANK} sends to rank {(RANK + 1) % SIZE}" in str(info.value) or SIZE > 4
        with pytest.raises(ValueError, match="pattern mismatch"):
            bf.synchronize(bf.neighbor_allgather_nonblocking(x.reshape(1, 3), src_ranks=[],
                                                             dst_ranks=[(RANK + 1) % SIZE],
                                                             name="skip.mismatch.gather"))
    check(bf.neighbor_allreduce(x, name="skip.after"), mix(U, X, RANK))
    bf.set_skip_negotiate_stage(False)


def test_skip_negotiate_mode_fuses_ops_queued_together(monkeypatch):
    """Skip-negotiate mode runs a run of small ops that every rank has queued
    as one fused batch, after one agreement on the whole run (here the ops are
    submitted while the loop is suspended, so each rank's loop finds all of
    them at once). The results are exact. An op that rank 0 submits under
    another name in the middle of a run fails on every rank, naming it, and
    the ops before and after it complete."""
    from bluefog.common.basics import get_basics
    basics = get_basics()
    monkeypatch.setattr(type(basics), "_in_ipython", staticmethod(lambda: True))
    shape, seed = (3,), 33
    X = all_inputs(shape, seed)
    x = rank_input(RANK, shape, seed)
    U = uniform_matrix(weight_matrix(bf.load_topology()))

    def submit_suspended(names):
        bf.barrier()
        counts = basics.skip_mode_counts()
        bf.suspend()
        try:
            return counts, [bf.neighbor_allreduce_nonblocking(x * (i + 1), name=n) for i, n in enumerate(names)]
        finally:
            bf.resume()

    # No try/finally: a rank that fails here must not switch modes (a collective the others
    # are not in: a hang); with -x it leaves, and the launcher ends the job.
    bf.set_skip_negotiate_stage(True)
    before, handles = submit_suspended([f"skip.fuse.{i}" for i in range(8)])
    for i, h in enumerate(handles):
        check(bf.synchronize(h), (i + 1) * mix(U, X, RANK))
    batches, fused = (a - b for a, b in zip(basics.skip_mode_counts(), before))
    assert (batches, fused) == (1, 8), "the 8 ops did not run as one fused batch"
    # Runs of different kinds stay apart: 3 float64 neighbor_allreduce, 2 float32 ones,
    # 2 without the topology check, then 3 averaging allreduce.
    bf.barrier()
    before = basics.skip_mode_counts()
    bf.suspend()
    try:
        handles = [bf.neighbor_allreduce_nonblocking(x * (i + 1), name=f"skip.kinds.64.{i}") for i in range(3)]
        handles += [bf.neighbor_allreduce_nonblocking(x.float() * (i + 1), name=f"skip.kinds.32.{i}")
                    for i in range(2)]
        handles += [bf.neighbor_allreduce_nonblocking(x * (i + 1), name=f"skip.kinds.nocheck.{i}",
                                                      enable_topo_check=False) for i in range(2)]
        handles += [bf.allreduce_nonblocking(x * (i + 1), name=f"skip.kinds.ar.{i}") for i in range(3)]
    finally:
        bf.resume()
    results = [bf.synchronize(h) for h in handles]
    for i in range(3):
        check(results[i], (i + 1) * mix(U, X, RANK))
    for i in range(2):
        check(results[3 + i], (i + 1) * mix(U, X.astype(np.float32), RANK), torch.float32)
        check(results[5 + i], (i + 1) * mix(U, X, RANK))
    for i in range(3):
        check(results[7 + i], (i + 1) * X.mean(axis=0))
    batches, fused = (a - b for a, b in zip(basics.skip_mode_counts(), before))
    assert (batches, fused) == (4, 10), (batches, fused)
    if SIZE > 1:
        names = [f"skip.fuse.odd.{i}" + (".rank0" if i == 3 and RANK == 0 else "") for i in range(8)]
        _, handles = submit_suspended(names)
        for i, h in enumerate(handles):
            if i == 3:
                with pytest.raises(ValueError, match=r"skip\.fuse\.odd\.3\.rank0.*skip\.fuse\.odd\.3'") as info:
                    bf.synchronize(h)
                assert "same order" in str(info.value)
            else:
                check(bf.synchronize(h), (i + 1) * mix(U, X, RANK))
    bf.set_skip_negotiate_stage(False)


def test_skip_negotiate_mode_random_mixed_queues_give_exact_results():
    """Skip-negotiate mode, about 160 ops of mixed kinds, shapes and dtypes (the same
    sequence on every rank), submitted nonblocking in chunks whose sizes and
    pauses differ by rank: each rank's queue holds a different part of the
    sequence when the ranks agree, so fused runs start and end at different
    places. Every result must be exact and nothing may hang (a run fused
    differently on two ranks would exchange mismatched messages)."""
    import random
    plan = random.Random(4242)  # the same op sequence everywhere
    local = random.Random(RANK)  # this rank's own chunking and pauses
    U = uniform_matrix(weight_matrix(bf.load_topology()))
    ops = []
    while len(ops) < 160:  # runs of one kind and dtype (fusible), of random lengths
        kind = plan.choice(["nar", "nar", "nar", "dyn", "ar", "ar_sum", "ag", "bc"])
        dtype = plan.choice([torch.float32, torch.float64])
        k = plan.randint(1, max(1, SIZE - 1))
        for _ in range(plan.randint(1, 12)):
            ops.append((len(ops), kind, dtype, plan.randint(1, 300), k, plan.randrange(SIZE)))

    def start(i, kind, dtype, n, k, root):
        name = f"skip.random.{i}"
        x = rank_input(RANK, (n,), 2000 + i, dtype)
        if kind == "nar":
            return bf.neighbor_allreduce_nonblocking(x, name=name)
        if kind == "dyn":
            if SIZE == 1:
                return bf.neighbor_allreduce_nonblocking(x, self_weight=1.0, src_weights={}, dst_weights={},
                                                         name=name)
            return bf.neighbor_allreduce_nonblocking(x, self_weight=0.5, src_weights={(RANK - k) % SIZE: 0.5},
                                                     dst_weights={(RANK + k) % SIZE: 1.0}, name=name)
        if kind == "ar":
            return bf.allreduce_nonblocking(x, name=name)
        if kind == "ar_sum":
            return bf.allreduce_nonblocking(x, average=False, name=name)
        if kind == "ag":
            return bf.allgather_nonblocking(rank_input(RANK, (RANK + 1, n), 2000 + i, dtype), name=name)
        return bf.broadcast_nonblocking(x, root, name=name)

    def expected(i, kind, dtype, n, k, root):
        X = all_inputs((n,), 2000 + i, dtype)
        if kind == "nar":
            return mix(U, X, RANK)
        if kind == "dyn":
            return X[RANK] if SIZE == 1 else 0.5 * X[RANK] + 0.5 * X[(RANK - k) % SIZE]
        if kind == "ar":
            return X.mean(axis=0)
        if kind == "ar_sum":
            return X.sum(axis=0)
        if kind == "ag":
            return np.concatenate([all_inputs((r + 1, n), 2000 + i, dtype)[r] for r in range(SIZE)])
        return X[root]

    # No try/finally: a rank that fails here must not switch modes (a collective the others
    # are not in: a hang); with -x it leaves, and the launcher ends the job.
    bf.set_skip_negotiate_stage(True)
    handles, pos = [], 0
    while pos < len(ops):
        chunk = local.randint(1, 24)
        handles += [(op, start(*op)) for op in ops[pos:pos + chunk]]
        pos += chunk
        time.sleep(local.choice([0, 0, 0.0005, 0.002]))
    for op, h in handles:
        wait_done(h)
        out = bf.synchronize(h)
        try:
            check(out, expected(*op), op[2])
        except AssertionError as e:
            raise AssertionError(f"op {op}: {e}") from None
    bf.set_skip_negotiate_stage(False)


def test_pair_gossip_non_mutual_targets_raise_on_every_rank():
    # Every rank targets r+1: mutual on 2 ranks (legal), not on more (r+1 targets r+2).
    x = rank_input(RANK, (2,), 35)
    target = (RANK + 1) % SIZE
    if SIZE > 2:
        with pytest.raises(ValueError, match="pattern mismatch"):
            bf.pair_gossip(x, target, name="gossip.mismatch")
    else:
        X = all_inputs((2,), 35)
        check(bf.pair_gossip(x, target, name="gossip.mismatch"), 0.5 * (X[RANK] + X[target]))
    expect_default_still_works("gossip.mismatch")


def test_shape_disagreement_raises_on_every_rank():
    # neighbor_allreduce needs the same shape on every rank (only allgather's first dim may vary).
    x = rank_input(RANK, (RANK + 1,), 36)
    if SIZE > 1:
        with pytest.raises(ValueError):
            bf.neighbor_allreduce(x, name="shape.mismatch")
        with pytest.raises(ValueError):
            bf.neighbor_allgather(rank_input(RANK, (1, RANK + 1), 36), name="shape.mismatch.gather")
    else:
        check(bf.neighbor_allreduce(x, name="shape.mismatch"), x.numpy())
    expect_default_still_works("shape")


def test_old_kwargs_raise_type_error():
    x = rank_input(RANK, (2,), 31)
    with pytest.raises(TypeError):
        bf.neighbor_allreduce(x, self_weight=0.5, neighbor_weights={})
    with pytest.raises(TypeError):
        bf.neighbor_allreduce(x, send_neighbors=[])
    with pytest.raises(TypeError):
        bf.neighbor_allreduce_nonblocking(x, neighbor_weights={})
    with pytest.raises(TypeError):
        bf.neighbor_allreduce_nonblocking(x, send_neighbors=[])
    with pytest.raises(TypeError):
        bf.neighbor_allreduce(x, 0.5, {})  # weights are keyword-only
    expect_default_still_works("kwargs")


def test_argument_value_errors():
    x = rank_input(RANK, (2,), 32)
    nbrs = bf.in_neighbor_ranks()
    with pytest.raises(ValueError):  # src_ranks without dst_ranks
        bf.neighbor_allgather(x, src_ranks=[])
    with pytest.raises(ValueError):  # dst_ranks without src_ranks
        bf.neighbor_allgather(x, dst_ranks=[])
    with pytest.raises(ValueError):
        bf.neighbor_allgather_nonblocking(x, src_ranks=nbrs)
    for dtype in (torch.int32, torch.int64, torch.uint8):
        with pytest.raises(ValueError):
            bf.neighbor_allreduce(torch.ones(2, dtype=dtype))
        with pytest.raises(ValueError):
            bf.neighbor_allreduce_nonblocking(torch.ones(2, dtype=dtype))
    with pytest.raises(ValueError):  # self_weight without src_weights
        bf.neighbor_allreduce(x, self_weight=0.5)
    with pytest.raises(ValueError):  # src_weights without self_weight
        bf.neighbor_allreduce(x, src_weights={r: 0.5 for r in nbrs})
    with pytest.raises(ValueError):  # dst_weights needs self_weight and src_weights
        bf.neighbor_allreduce(x, dst_weights={})
    with pytest.raises(ValueError):
        bf.neighbor_allreduce(x, self_weight=0.5, dst_weights={})
    with pytest.raises(ValueError):  # self_weight must be a number
        bf.neighbor_allreduce(x, self_weight="0.5", src_weights={r: 0.5 for r in nbrs})
    with pytest.raises(ValueError):  # src_weights must be a dict
        bf.neighbor_allreduce(x, self_weight=0.5, src_weights=list(nbrs))
    expect_default_still_works("values")


# ---- set_topology -----------------------------------------------------------------------------
def test_set_topology_validation():
    with pytest.raises(TypeError):
        bf.set_topology(bf.ExponentialGraph(SIZE + 1))
    with pytest.raises(TypeError):
        bf.set_topology(nx.complete_graph(SIZE))  # an undirected nx.Graph
    with pytest.raises(TypeError):
        bf.set_topology(np.eye(SIZE))
    with pytest.raises(TypeError, match="nodes must be the ranks"):  # nodes 1..size, not 0..size-1
        bf.set_topology(nx.relabel_nodes(bf.RingGraph(SIZE), {i: i + 1 for i in range(SIZE)}))
    with pytest.raises(TypeError, match="nodes must be the ranks"):
        bf.set_topology(nx.relabel_nodes(bf.RingGraph(SIZE), {i: str(i) for i in range(SIZE)}))
    # The topology is unchanged by the failed calls.
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), bf.ExponentialGraph(SIZE))
    expect_default_still_works("settopo")


@pytest.mark.parametrize("op", [lambda x: bf.neighbor_allreduce(x, name="nt.nar"),
                                lambda x: bf.pair_gossip(x, RANK, name="nt.pg"),
                                lambda x: bf.neighbor_allgather(x, name="nt.nag")], ids=["nar", "pg", "nag"])
@pytest.mark.parametrize("value", [[1.0, 2.0], np.ones(2)], ids=["list", "numpy"])
def test_non_tensor_input_is_a_clear_error(op, value):
    with pytest.raises(ValueError, match="expected a torch.Tensor"):
        op(value)
    expect_default_still_works("nontensor")


def test_set_topology_same_graph_returns_true():
    G = bf.RingGraph(SIZE)
    assert bf.set_topology(G) is True
    current = bf.load_topology()
    assert topology_util.IsTopologyEquivalent(current, G)
    G2 = bf.RingGraph(SIZE)  # an equivalent graph: nothing changes, the object is kept
    assert G2 is not G
    assert bf.set_topology(G2) is True
    assert bf.load_topology() is current
    # A graph that differs is taken (a self loop with another weight differs even on one rank).
    G3 = nx.DiGraph()
    G3.add_nodes_from(range(SIZE))
    G3.add_weighted_edges_from([(i, i, 0.5) for i in range(SIZE)])
    assert bf.set_topology(G3) is True
    assert bf.load_topology() is G3
    assert bf.in_neighbor_ranks() == [] and bf.out_neighbor_ranks() == []
    # No neighbours: uniform weight 1/(0+1) gives x back; weighted gives 0.5 x.
    x = rank_input(RANK, (3,), 34)
    check(bf.neighbor_allreduce(x, name="same.alone"), x.numpy())
    bf.set_topology(G3, is_weighted=True)
    check(bf.neighbor_allreduce(x, name="same.alone.w"), 0.5 * x.numpy())
    assert bf.neighbor_allgather(x.reshape(1, 3), name="same.alone.gather").shape == (0, 3)
    # None means ExponentialGraph(size).
    assert bf.set_topology(None) is True
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), bf.ExponentialGraph(SIZE))
    expect_default_still_works("same")


def test_set_topology_again_after_editing_the_graph_in_place():
    """load_topology() returns the graph that was set; edits to it in place take
    effect when it is set again (they used to be ignored: the edited graph
    compared equal to itself, so nothing was derived again)."""
    if SIZE < 3:
        pytest.skip("needs a ring with two distinct neighbors")
    G = bf.RingGraph(SIZE)
    assert bf.set_topology(G, is_weighted=True) is True
    x = rank_input(RANK, (3,), 35)
    check(bf.neighbor_allreduce(x, name="edit.before"), mix(weight_matrix(G), all_inputs((3,), 35), RANK))
    # Weights: every rank keeps only itself (neighbors' weights 0).
    edited = bf.load_topology()
    assert edited is G
    for u, v in edited.edges:
        edited[u][v]["weight"] = 1.0 if u == v else 0.0
    assert bf.set_topology(edited, is_weighted=True) is True
    check(bf.neighbor_allreduce(x, name="edit.weights"), x.numpy())
    # Edges: drop every edge into this rank from its right neighbor, on every rank.
    for r in range(SIZE):
        edited.remove_edge((r + 1) % SIZE, r)
    assert bf.set_topology(edited) is True
    assert bf.in_neighbor_ranks() == [(RANK - 1) % SIZE]
    gathered = bf.neighbor_allgather(torch.tensor([float(RANK)]), name="edit.edges")
    assert gathered.tolist() == [float((RANK - 1) % SIZE)]
    bf.set_topology(None)
    expect_default_still_works("edit")


def test_init_with_a_bad_topology_keeps_the_old_one():
    bf.set_topology(bf.RingGraph(SIZE))
    before = bf.in_neighbor_ranks()
    with pytest.raises(TypeError, match="nodes"):
        bf.init(topology_fn=lambda n: bf.RingGraph(n + 1))
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), bf.RingGraph(SIZE))
    assert bf.in_neighbor_ranks() == before
    bf.init()
    expect_default_still_works("badinit")


def test_init_resets_topology():
    bf.set_topology(bf.StarGraph(SIZE), is_weighted=True)
    assert bf.is_topo_weighted()
    bf.init()
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), bf.ExponentialGraph(SIZE))
    assert not bf.is_topo_weighted()
    W = weight_matrix(bf.ExponentialGraph(SIZE))
    assert sorted(bf.in_neighbor_ranks()) == in_neighbors_from_W(W, RANK)
    expect_default_still_works("init")
    # init with a topology function and weights.
    bf.init(topology_fn=lambda n: bf.RingGraph(n, connect_style=1), is_weighted=True)
    assert topology_util.IsTopologyEquivalent(bf.load_topology(), bf.RingGraph(SIZE, connect_style=1))
    assert bf.is_topo_weighted()
    W = weight_matrix(bf.RingGraph(SIZE, connect_style=1))
    shape, seed = (3,), 33
    check(bf.neighbor_allreduce(rank_input(RANK, shape, seed), name="init.fn"), mix(W, all_inputs(shape, seed), RANK))


def test_mpi_ops_module_has_the_names_of_0_3():
    """BlueFog 0.3 scripts reach some names only through bluefog.torch.mpi_ops
    (is_topo_weighted, pair_gossip are not re-exported there)."""
    from bluefog.torch.mpi_ops import (is_topo_weighted, is_machine_topo_weighted, pair_gossip,  # noqa: F401
                                       neighbor_allreduce, in_neighbor_ranks, set_topology, load_topology)
    bf.set_topology(bf.RingGraph(SIZE), is_weighted=True)
    assert bf.mpi_ops.is_topo_weighted() is True and is_topo_weighted() is True
    assert in_neighbor_ranks() == bf.in_neighbor_ranks()
    x = rank_input(RANK, (3,), 36)
    check(neighbor_allreduce(x, name="mpiops.nar"), bf.neighbor_allreduce(x, name="mpiops.nar2").numpy())
    assert bf.mpi_ops.pair_gossip is bf.pair_gossip
    with pytest.raises(AttributeError):
        bf.mpi_ops.no_such_name
    bf.set_topology(None)
    expect_default_still_works("mpiops")
