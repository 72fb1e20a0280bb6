"""Unit tests for bluefog.common.topology_util (pure numpy/networkx, no MPI)."""

import itertools

import networkx as nx
import numpy as np
import pytest

from bluefog.common import topology_util as tu

SIZES = list(range(1, 10)) + [12, 16, 17, 24, 32]

# Every constructor, as (name, factory(size)).  All of them are doubly stochastic.
CONSTRUCTORS = [
    ("ExponentialTwoGraph", tu.ExponentialTwoGraph),
    ("ExponentialGraph", tu.ExponentialGraph),
    ("ExponentialGraph-base3", lambda n: tu.ExponentialGraph(n, base=3)),
    ("SymmetricExponentialGraph", tu.SymmetricExponentialGraph),
    ("SymmetricExponentialGraph-base2", lambda n: tu.SymmetricExponentialGraph(n, base=2)),
    ("MeshGrid2DGraph", tu.MeshGrid2DGraph),
    ("StarGraph", tu.StarGraph),
    ("StarGraph-last-centre", lambda n: tu.StarGraph(n, center_rank=n - 1)),
    ("RingGraph-0", lambda n: tu.RingGraph(n, 0)),
    ("RingGraph-1", lambda n: tu.RingGraph(n, 1)),
    ("RingGraph-2", lambda n: tu.RingGraph(n, 2)),
    ("FullyConnectedGraph", tu.FullyConnectedGraph),
]
# Graphs whose W is symmetric (every edge present in both directions).
SYMMETRIC = {"SymmetricExponentialGraph", "SymmetricExponentialGraph-base2", "MeshGrid2DGraph",
             "StarGraph", "StarGraph-last-centre", "RingGraph-0", "FullyConnectedGraph"}


def W_of(topo):
    return nx.to_numpy_array(topo, nodelist=range(topo.number_of_nodes()))


def circulant(x):
    x = np.asarray(x, dtype=float)
    return np.array([np.roll(x, i) for i in range(len(x))])


# ----------------------------------------------------------------------------- common properties
@pytest.mark.parametrize("name,factory", CONSTRUCTORS, ids=[c[0] for c in CONSTRUCTORS])
@pytest.mark.parametrize("size", SIZES)
def test_constructor_common_properties(name, factory, size):
    topo = factory(size)
    assert isinstance(topo, nx.DiGraph)
    assert sorted(topo.nodes) == list(range(size))
    W = W_of(topo)
    assert W.shape == (size, size)
    assert (W >= 0).all()
    # Every constructor is row-stochastic AND column-stochastic (doubly stochastic).
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    for r in range(size):
        assert topo.has_edge(r, r), f"{name}({size}) lacks the self-loop on {r}"
        assert W[r, r] > 0
    # Edges exist exactly where W is non-zero.
    assert topo.number_of_edges() == int(np.count_nonzero(W))
    if name in SYMMETRIC:
        np.testing.assert_allclose(W, W.T, atol=1e-15)
    # Receive / send weights are the columns / rows of W.
    for r in range(size):
        self_w, recv = tu.GetRecvWeights(topo, r)
        assert self_w == pytest.approx(W[r, r])
        assert r not in recv
        assert set(recv) == set(np.nonzero(W[:, r])[0]) - {r}
        for src, w in recv.items():
            assert w == pytest.approx(W[src, r])
        self_w, send = tu.GetSendWeights(topo, r)
        assert self_w == pytest.approx(W[r, r])
        assert r not in send
        assert set(send) == set(np.nonzero(W[r])[0]) - {r}
        for dst, w in send.items():
            assert w == pytest.approx(W[r, dst])
        assert set(recv) == set(topo.predecessors(r)) - {r}
        assert set(send) == set(topo.successors(r)) - {r}
        assert self_w + sum(send.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [s for s in SIZES if s >= 2])
def test_exponential_graph_spectral_gap(size):
    """Consensus with W converges: second-largest eigenvalue modulus < 1."""
    for topo in (tu.ExponentialGraph(size), tu.ExponentialTwoGraph(size),
                 tu.SymmetricExponentialGraph(size), tu.RingGraph(size),
                 tu.MeshGrid2DGraph(size), tu.StarGraph(size)):
        moduli = sorted(np.abs(np.linalg.eigvals(W_of(topo))), reverse=True)
        assert moduli[0] == pytest.approx(1.0)
        assert moduli[1] < 1.0 - 1e-9
    # And iterating x <- W^T x really reaches the mean.
    W = W_of(tu.ExponentialGraph(size))
    x = np.arange(size, dtype=float)
    for _ in range(200):
        x = W.T @ x
    np.testing.assert_allclose(x, (size - 1) / 2.0, atol=1e-8)


# ----------------------------------------------------------------------------- exact weights
def test_exponential_graph_size4_exact():
    W = W_of(tu.ExponentialGraph(4))
    expected = circulant([1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(W, expected)
    for r in range(4):
        assert sorted(tu.GetSendWeights(tu.ExponentialGraph(4), r)[1]) == \
            sorted([(r + 1) % 4, (r + 2) % 4])
    np.testing.assert_allclose(W_of(tu.ExponentialTwoGraph(4)), expected)


@pytest.mark.parametrize("size", SIZES)
def test_exponential_two_equals_exponential_base2(size):
    assert tu.IsTopologyEquivalent(tu.ExponentialTwoGraph(size), tu.ExponentialGraph(size))


def test_exponential_graph_exact_rows():
    # size 8: offsets 0,1,2,4 -> 1/4 each.
    np.testing.assert_allclose(W_of(tu.ExponentialGraph(8))[0],
                               [.25, .25, .25, 0, .25, 0, 0, 0])
    # size 10 base 3: offsets 0,1,3,9 -> 1/4 each.
    np.testing.assert_allclose(W_of(tu.ExponentialGraph(10, base=3))[0],
                               [.25, .25, 0, .25, 0, 0, 0, 0, 0, .25])
    # size 12: offsets 0,1,2,4,8.
    row = np.zeros(12)
    row[[0, 1, 2, 4, 8]] = 0.2
    np.testing.assert_allclose(W_of(tu.ExponentialGraph(12))[0], row)
    np.testing.assert_allclose(W_of(tu.ExponentialGraph(1)), [[1.0]])
    np.testing.assert_allclose(W_of(tu.ExponentialGraph(2)), [[.5, .5], [.5, .5]])


def test_symmetric_exponential_graph_exact():
    # size 12, base 4: offsets 0, 1, 4 and mirrored 8, 11.
    row = np.zeros(12)
    row[[0, 1, 4, 8, 11]] = 0.2
    np.testing.assert_allclose(W_of(tu.SymmetricExponentialGraph(12)), circulant(row))
    # size 5, base 4: offsets 0, 1, 4 (mirror of 1); 2 and 3 are not powers of 4.
    np.testing.assert_allclose(W_of(tu.SymmetricExponentialGraph(5))[0], [1/3, 1/3, 0, 0, 1/3])


def test_ring_graph_exact():
    t = 1 / 3
    np.testing.assert_allclose(W_of(tu.RingGraph(4, 0)), [[t, t, 0, t], [t, t, t, 0],
                                                          [0, t, t, t], [t, 0, t, t]])
    h = 0.5
    # style 1: left, i.e. rank i sends to i-1.
    np.testing.assert_allclose(W_of(tu.RingGraph(4, 1)), [[h, 0, 0, h], [h, h, 0, 0],
                                                          [0, h, h, 0], [0, 0, h, h]])
    # style 2: right, i.e. rank i sends to i+1.
    np.testing.assert_allclose(W_of(tu.RingGraph(4, 2)), [[h, h, 0, 0], [0, h, h, 0],
                                                          [0, 0, h, h], [h, 0, 0, h]])
    assert list(tu.RingGraph(5, 1).successors(0)) == [0, 4]
    assert sorted(tu.RingGraph(5, 2).successors(0)) == [0, 1]
    for style in (0, 1, 2):
        np.testing.assert_allclose(W_of(tu.RingGraph(1, style)), [[1.0]])
        np.testing.assert_allclose(W_of(tu.RingGraph(2, style)), [[h, h], [h, h]])
    np.testing.assert_allclose(W_of(tu.RingGraph(3, 0)), np.full((3, 3), t))


def test_star_graph_exact():
    q = 0.25
    np.testing.assert_allclose(W_of(tu.StarGraph(4)), [[q, q, q, q], [q, 1 - q, 0, 0],
                                                       [q, 0, 1 - q, 0], [q, 0, 0, 1 - q]])
    W = W_of(tu.StarGraph(5, center_rank=2))
    assert W[2, 2] == pytest.approx(1 / 5)  # centre self weight is 1/size
    assert W[0, 0] == pytest.approx(4 / 5)
    np.testing.assert_allclose(W[2], 1 / 5)
    np.testing.assert_allclose(W[:, 2], 1 / 5)
    assert W[0, 1] == 0
    np.testing.assert_allclose(W_of(tu.StarGraph(1)), [[1.0]])
    np.testing.assert_allclose(W_of(tu.StarGraph(2, center_rank=1)), np.full((2, 2), .5))


def test_mesh_grid_exact():
    t = 1 / 3
    # size 4 -> 2x2 grid: every node has degree 3 (self included).
    np.testing.assert_allclose(W_of(tu.MeshGrid2DGraph(4)), [[t, t, t, 0], [t, t, 0, t],
                                                             [t, 0, t, t], [0, t, t, t]])
    # size 6 -> 2x3 grid:  0 1 2 / 3 4 5.  Degrees (with self): corners 3, middle 4.
    q = 0.25
    expected = np.array([
        [5 / 12, q, 0, t, 0, 0],
        [q, q, q, 0, q, 0],
        [0, q, 5 / 12, 0, 0, t],
        [t, 0, 0, 5 / 12, q, 0],
        [0, q, 0, q, q, q],
        [0, 0, t, 0, q, 5 / 12],
    ])
    np.testing.assert_allclose(W_of(tu.MeshGrid2DGraph(6)), expected)
    # explicit shape (3, 2): 0 1 / 2 3 / 4 5.
    W = W_of(tu.MeshGrid2DGraph(6, shape=(3, 2)))
    assert sorted(np.nonzero(W[2])[0]) == [0, 2, 3, 4]
    assert W[0, 1] == pytest.approx(1 / 3)  # max(deg 3, deg 3)
    assert W[0, 2] == pytest.approx(1 / 4)  # max(deg 3, deg 4)
    # prime size -> a line; shape (1, n).
    W = W_of(tu.MeshGrid2DGraph(5))
    np.testing.assert_allclose(W[0], [2 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_allclose(W[2], [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(W_of(tu.MeshGrid2DGraph(1)), [[1.0]])
    # default shape: nrow = largest divisor <= sqrt(size), nrow <= ncol.
    for size, (nrow, ncol) in {12: (3, 4), 16: (4, 4), 24: (4, 6), 8: (2, 4), 7: (1, 7)}.items():
        topo = tu.MeshGrid2DGraph(size)
        assert tu.IsTopologyEquivalent(topo, tu.MeshGrid2DGraph(size, shape=(nrow, ncol)))
        assert topo.number_of_edges() == size + 2 * (nrow * (ncol - 1) + ncol * (nrow - 1))
    assert tu.MeshGrid2DGraph(6, shape=[2, 3]).number_of_nodes() == 6
    assert tu.MeshGrid2DGraph(6, shape=np.array([2, 3])).number_of_nodes() == 6


def test_fully_connected_exact():
    np.testing.assert_allclose(W_of(tu.FullyConnectedGraph(5)), np.full((5, 5), 0.2))
    assert tu.FullyConnectedGraph(5).number_of_edges() == 25


def test_numpy_integer_sizes_are_accepted():
    assert tu.ExponentialGraph(np.int64(4)).number_of_nodes() == 4
    assert tu.RingGraph(np.int32(5), connect_style=np.int64(1)).number_of_nodes() == 5


# ----------------------------------------------------------------------------- queries
def test_is_topology_equivalent():
    assert tu.IsTopologyEquivalent(tu.ExponentialGraph(8), tu.ExponentialGraph(8))
    assert not tu.IsTopologyEquivalent(tu.ExponentialGraph(8), tu.RingGraph(8))
    assert not tu.IsTopologyEquivalent(tu.ExponentialGraph(8), tu.ExponentialGraph(9))
    assert not tu.IsTopologyEquivalent(tu.ExponentialGraph(8), None)
    assert not tu.IsTopologyEquivalent(None, tu.ExponentialGraph(8))
    assert not tu.IsTopologyEquivalent(None, None)
    # Same structure, different weights.
    assert not tu.IsTopologyEquivalent(tu.StarGraph(4), tu.StarGraph(4, center_rank=1))
    assert not tu.IsTopologyEquivalent(tu.RingGraph(5, 1), tu.RingGraph(5, 2))
    same_edges = tu.FullyConnectedGraph(3)
    other = tu.FullyConnectedGraph(3)
    other[0][1]["weight"] = 0.5
    assert not tu.IsTopologyEquivalent(same_edges, other)
    # Node insertion order does not matter.
    shuffled = nx.DiGraph()
    shuffled.add_nodes_from([3, 1, 0, 2])
    shuffled.add_weighted_edges_from(
        (u, v, d["weight"]) for u, v, d in tu.ExponentialGraph(4).edges(data=True))
    assert tu.IsTopologyEquivalent(shuffled, tu.ExponentialGraph(4))
    result = tu.IsTopologyEquivalent(tu.RingGraph(4), tu.RingGraph(4))
    assert result is True
    with pytest.raises(TypeError, match="IsTopologyEquivalent"):
        tu.IsTopologyEquivalent(np.eye(3), tu.RingGraph(3))


def test_get_weights_on_custom_graph():
    g = nx.DiGraph()
    g.add_weighted_edges_from([(0, 1, 0.7), (1, 0, 0.2), (2, 0, 0.1)])
    g.add_edge(1, 1)  # no weight attribute -> 1.0
    assert tu.GetRecvWeights(g, 0) == (0.0, {1: 0.2, 2: 0.1})
    assert tu.GetSendWeights(g, 0) == (0.0, {1: 0.7})
    assert tu.GetRecvWeights(g, 1) == (1.0, {0: 0.7})
    assert tu.GetSendWeights(g, 2) == (0.0, {0: 0.1})
    with pytest.raises(ValueError, match="GetRecvWeights"):
        tu.GetRecvWeights(g, 5)
    with pytest.raises(ValueError, match="GetSendWeights"):
        tu.GetSendWeights(g, -1)
    with pytest.raises(TypeError, match="GetRecvWeights"):
        tu.GetRecvWeights(None, 0)
    with pytest.raises(TypeError, match="GetSendWeights"):
        tu.GetSendWeights(np.eye(2), 0)


def test_is_regular_graph():
    for size in SIZES:
        assert tu.IsRegularGraph(tu.ExponentialGraph(size))
        assert tu.IsRegularGraph(tu.RingGraph(size))
        assert tu.IsRegularGraph(tu.FullyConnectedGraph(size))
        assert tu.IsRegularGraph(tu.SymmetricExponentialGraph(size))
    for size in range(3, 10):
        assert not tu.IsRegularGraph(tu.StarGraph(size))
    assert not tu.IsRegularGraph(tu.MeshGrid2DGraph(6))
    assert tu.IsRegularGraph(tu.MeshGrid2DGraph(4))  # 2x2 grid: every node has 2 neighbours
    assert tu.IsRegularGraph(tu.StarGraph(2))
    assert tu.IsRegularGraph(nx.DiGraph())
    with pytest.raises(TypeError, match="IsRegularGraph"):
        tu.IsRegularGraph([[1]])


def test_is_power_of():
    assert tu.isPowerOf(1, 2) and tu.isPowerOf(1, 7)
    assert [k for k in range(1, 40) if tu.isPowerOf(k, 2)] == [1, 2, 4, 8, 16, 32]
    assert [k for k in range(1, 100) if tu.isPowerOf(k, 3)] == [1, 3, 9, 27, 81]
    assert tu.isPowerOf(243, 3)  # math.log(243, 3) rounds down to 4.999...
    assert tu.isPowerOf(5 ** 20, 5) and not tu.isPowerOf(5 ** 20 + 1, 5)
    assert tu.isPowerOf(8.0, 2)
    with pytest.raises(ValueError, match="base"):
        tu.isPowerOf(4, 1)
    with pytest.raises(TypeError, match="base"):
        tu.isPowerOf(4, 2.0)
    with pytest.raises(ValueError, match="x"):
        tu.isPowerOf(0, 2)
    with pytest.raises(TypeError, match="x"):
        tu.isPowerOf("4", 2)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("func", [tu.ExponentialTwoGraph, tu.ExponentialGraph,
                                  tu.SymmetricExponentialGraph, tu.MeshGrid2DGraph, tu.StarGraph,
                                  tu.RingGraph, tu.FullyConnectedGraph])
def test_bad_sizes(func):
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"{func.__name__}.*size"):
            func(bad)
    for bad in (4.0, "4", None, True):
        with pytest.raises(TypeError, match=rf"{func.__name__}.*size"):
            func(bad)


def test_bad_arguments():
    for func in (tu.ExponentialGraph, tu.SymmetricExponentialGraph):
        for bad in (1, 0, -2):
            with pytest.raises(ValueError, match=rf"{func.__name__}.*base"):
                func(8, base=bad)
        with pytest.raises(TypeError, match=rf"{func.__name__}.*base"):
            func(8, base=2.5)
    with pytest.raises(ValueError, match="MeshGrid2DGraph.*shape"):
        tu.MeshGrid2DGraph(6, shape=(2, 2))
    with pytest.raises(ValueError, match="MeshGrid2DGraph.*shape"):
        tu.MeshGrid2DGraph(6, shape=(0, 6))
    with pytest.raises(TypeError, match="MeshGrid2DGraph.*shape"):
        tu.MeshGrid2DGraph(6, shape=(1, 2, 3))
    with pytest.raises(TypeError, match="MeshGrid2DGraph.*shape"):
        tu.MeshGrid2DGraph(6, shape=6)
    with pytest.raises(TypeError, match="MeshGrid2DGraph.*shape"):
        tu.MeshGrid2DGraph(6, shape=(2.0, 3))
    for bad in (4, -1, 100):
        with pytest.raises(ValueError, match="StarGraph.*center_rank"):
            tu.StarGraph(4, center_rank=bad)
    with pytest.raises(TypeError, match="StarGraph.*center_rank"):
        tu.StarGraph(4, center_rank=None)
    for bad in (-1, 3, 10):
        for size in (1, 2, 5):
            with pytest.raises(ValueError, match="RingGraph.*connect_style"):
                tu.RingGraph(size, connect_style=bad)
    with pytest.raises(TypeError, match="RingGraph.*connect_style"):
        tu.RingGraph(5, connect_style="left")


# ----------------------------------------------------------------------------- dynamic schedules
def take(gen, steps):
    return [next(gen) for _ in range(steps)]


def assert_consistent(schedules, world):
    """schedules[r][k] = (send, recv): r in recv(j) at step k iff j in send(r) at step k."""
    steps = len(schedules[0])
    for k in range(steps):
        for r in range(world):
            send, recv = schedules[r][k]
            assert r not in send and r not in recv, (k, r, send, recv)
            assert len(set(send)) == len(send) and len(set(recv)) == len(recv)
            assert all(0 <= x < world for x in send + recv)
            for j in range(world):
                assert (r in schedules[j][k][1]) == (j in send), (k, r, j)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6, 7, 8, 9, 12, 16])
@pytest.mark.parametrize("factory", [tu.ExponentialGraph, tu.ExponentialTwoGraph,
                                     tu.RingGraph, tu.StarGraph, tu.MeshGrid2DGraph,
                                     tu.SymmetricExponentialGraph, tu.FullyConnectedGraph,
                                     lambda n: tu.RingGraph(n, 1)])
def test_one_peer_schedule_consistent(size, factory):
    topo = factory(size)
    steps = 2 * size + 3
    schedules = [take(tu.GetDynamicOnePeerSendRecvRanks(topo, r), steps) for r in range(size)]
    assert_consistent(schedules, size)
    for r in range(size):
        out = sorted((set(topo.successors(r)) - {r}), key=lambda j: (j - r) % size)
        for k, (send, recv) in enumerate(schedules[r]):
            assert send == [out[k % len(out)]]
            assert recv == sorted(recv)


def test_one_peer_exp2_schedule_size4():
    for topo in (tu.ExponentialTwoGraph(4), tu.ExponentialGraph(4)):
        for r in range(4):
            steps = take(tu.GetDynamicOnePeerSendRecvRanks(topo, r), 4)
            assert steps == [([(r + 1) % 4], [(r - 1) % 4]), ([(r + 2) % 4], [(r + 2) % 4])] * 2


@pytest.mark.parametrize("size", [2, 4, 8, 16])
def test_one_peer_exp2_exact_average(size):
    """log2(size) steps of pairwise averaging along the one-peer exp-2 schedule give the mean."""
    topo = tu.ExponentialTwoGraph(size)
    gens = [tu.GetDynamicOnePeerSendRecvRanks(topo, r) for r in range(size)]
    x = np.arange(size, dtype=float)
    for _ in range(size.bit_length() - 1):
        plan = [next(g) for g in gens]
        new = x.copy()
        for r, (send, recv) in enumerate(plan):
            assert len(send) == 1 and len(recv) == 1
            new[r] = (x[r] + x[recv[0]]) / 2
        x = new
    np.testing.assert_allclose(x, (size - 1) / 2.0, rtol=0, atol=1e-12)


def test_one_peer_star_recv_lists():
    topo = tu.StarGraph(4)
    centre = take(tu.GetDynamicOnePeerSendRecvRanks(topo, 0), 3)
    assert centre == [([1], [1, 2, 3]), ([2], [1, 2, 3]), ([3], [1, 2, 3])]
    assert take(tu.GetDynamicOnePeerSendRecvRanks(topo, 2), 3) == [([0], [])] + \
        [([0], [0])] + [([0], [])]


def test_one_peer_errors():
    gen = tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(1), 0)  # creation is fine
    with pytest.raises(ValueError, match="GetDynamicOnePeerSendRecvRanks.*out-neighbour"):
        next(gen)
    g = nx.DiGraph()
    g.add_edges_from([(0, 0), (0, 1), (1, 1), (1, 2), (2, 2)])  # rank 2 cannot send
    for r in range(3):
        with pytest.raises(ValueError, match=r"\[2\]"):
            next(tu.GetDynamicOnePeerSendRecvRanks(g, r))
    with pytest.raises(ValueError, match="self_rank"):
        tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(4), 4)
    with pytest.raises(ValueError, match="self_rank"):
        tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(4), -1)
    with pytest.raises(TypeError, match="self_rank"):
        tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(4), 1.0)
    with pytest.raises(TypeError, match="topo"):
        tu.GetDynamicOnePeerSendRecvRanks(np.eye(4), 0)
    relabeled = nx.relabel_nodes(tu.RingGraph(3), {0: "a", 1: "b", 2: "c"})
    with pytest.raises(ValueError, match="nodes"):
        tu.GetDynamicOnePeerSendRecvRanks(relabeled, 0)


def test_one_peer_graph_without_self_loops():
    topo = tu.RingGraph(5)
    topo.remove_edges_from([(r, r) for r in range(5)])
    schedules = [take(tu.GetDynamicOnePeerSendRecvRanks(topo, r), 4) for r in range(5)]
    assert_consistent(schedules, 5)
    assert [s for s, _ in schedules[0]] == [[1], [4], [1], [4]]


@pytest.mark.parametrize("world,local", [(8, 4), (12, 4), (8, 1), (6, 2), (10, 2), (20, 4),
                                         (36, 4), (9, 3)])
def test_exp2_machine_schedule(world, local):
    machines = world // local
    period = (machines - 1).bit_length()  # floor(log2(M-1)) + 1
    steps = 3 * period + 1
    per_rank = [take(tu.GetExp2DynamicSendRecvMachineRanks(world, local, r, r % local), steps)
                for r in range(world)]
    for r in range(world):
        m = r // local
        assert per_rank[r] == per_rank[m * local]  # every rank of a machine agrees
        for k, (send, recv) in enumerate(per_rank[r]):
            d = 2 ** (k % period)
            assert d < machines
            assert send == [(m + d) % machines] and recv == [(m - d) % machines]
    # consistent matching between machines
    assert_consistent([per_rank[m * local] for m in range(machines)], machines)


def test_exp2_machine_schedule_examples():
    assert take(tu.GetExp2DynamicSendRecvMachineRanks(8, 4, 5, 1), 3) == [([0], [0])] * 3
    assert take(tu.GetExp2DynamicSendRecvMachineRanks(20, 4, 0, 0), 4) == \
        [([1], [4]), ([2], [3]), ([4], [1]), ([1], [4])]


def test_exp2_machine_schedule_errors():
    f = tu.GetExp2DynamicSendRecvMachineRanks
    name = "GetExp2DynamicSendRecvMachineRanks"
    with pytest.raises(ValueError, match=rf"{name}.*homogeneous"):
        f(10, 4, 0, 0)
    with pytest.raises(ValueError, match=rf"{name}.*local_rank"):
        f(8, 4, 5, 2)
    with pytest.raises(ValueError, match=rf"{name}.*self_rank"):
        f(8, 4, 8, 0)
    with pytest.raises(ValueError, match=rf"{name}.*world_size"):
        f(0, 4, 0, 0)
    with pytest.raises(ValueError, match=rf"{name}.*local_size"):
        f(8, 0, 0, 0)
    with pytest.raises(TypeError, match=rf"{name}.*local_size"):
        f(8, 4.0, 0, 0)
    gen = f(4, 4, 1, 1)  # a single machine: created fine, fails when advanced
    with pytest.raises(ValueError, match=rf"{name}.*more than one machine"):
        next(gen)
    with pytest.raises(ValueError, match="more than one machine"):
        next(f(1, 1, 0, 0))


INNER_OUTER = [tu.GetInnerOuterRingDynamicSendRecvRanks, tu.GetInnerOuterExpo2DynamicSendRecvRanks]


@pytest.mark.parametrize("func", INNER_OUTER)
@pytest.mark.parametrize("world,local", [(8, 4), (12, 4), (6, 3), (9, 3), (16, 8), (10, 5),
                                         (24, 6), (20, 4), (15, 5), (32, 8)])
def test_inner_outer_schedules_consistent(func, world, local):
    steps = 4 * local + 3
    schedules = [take(func(world, local, r), steps) for r in range(world)]
    assert_consistent(schedules, world)
    for k in range(steps):
        outside = k % local
        for r in range(world):
            (send,), (recv,) = schedules[r][k]
            if r % local == outside:  # goes to another machine, same local rank
                assert send // local != r // local and send % local == outside
                assert recv // local != r // local and recv % local == outside
            else:  # stays inside the machine and avoids the outside rank
                assert send // local == r // local and recv // local == r // local
                assert send % local != outside and recv % local != outside


def test_inner_outer_ring_exact():
    gen = tu.GetInnerOuterRingDynamicSendRecvRanks(8, 4, 0)
    # step 0: rank 0 is outside -> machine 1; steps 1..3: inner ring of machine 0 skipping k.
    assert take(gen, 5) == [([4], [4]), ([2], [3]), ([1], [3]), ([1], [2]), ([4], [4])]
    gen = tu.GetInnerOuterRingDynamicSendRecvRanks(12, 4, 5)
    assert take(gen, 4) == [([6], [7]), ([9], [1]), ([7], [4]), ([6], [4])]


def test_inner_outer_expo2_exact():
    # 3 machines of 5 ranks: outer distances 1, 2 (floor(log2 2) = 1); the inner ring has 4
    # ranks, distances 1, 2 (floor(log2 3) = 1).  Rank 6 = machine 1, local rank 1.
    assert take(tu.GetInnerOuterExpo2DynamicSendRecvRanks(15, 5, 6), 5) == [
        ([7], [9]),   # k=0 outside 0, d=1: inner ring (1,2,3,4): send 2, recv 4
        ([1], [11]),  # k=1 outside 1 (me), d=2: send machine 0, recv machine 2
        ([8], [5]),   # k=2 outside 2, d=1: inner ring (0,1,3,4): send 3, recv 0
        ([9], [9]),   # k=3 outside 3, d=2: inner ring (0,1,2,4): +2 -> 4, -2 -> 4
        ([7], [5]),   # k=4 outside 4, d=1: inner ring (0,1,2,3): send 2, recv 0
    ]
    # 4 machines of 4 ranks: outer distances 1, 2; the inner ring has 3 ranks, distances 1, 2.
    assert take(tu.GetInnerOuterExpo2DynamicSendRecvRanks(16, 4, 5), 6) == [
        ([6], [7]),    # k=0 outside 0, d=1: inner ring (1,2,3): send 2, recv 3
        ([13], [13]),  # k=1 outside 1 (me), d=2: machine 3 both ways
        ([7], [4]),    # k=2 outside 2, d=1: inner ring (0,1,3): send 3, recv 0
        ([4], [6]),    # k=3 outside 3, d=2: inner ring (0,1,2): +2 -> 0, -2 -> 2
        ([6], [7]),    # k=4 outside 0, d=1
        ([13], [13]),  # k=5 outside 1 (me), d=2
    ]


@pytest.mark.parametrize("func", INNER_OUTER)
def test_inner_outer_errors(func):
    name = func.__name__
    with pytest.raises(ValueError, match=rf"{name}.*local_size > 2"):
        func(8, 2, 0)
    with pytest.raises(ValueError, match=rf"{name}.*local_size > 2"):
        func(4, 1, 0)
    with pytest.raises(ValueError, match=rf"{name}.*homogeneous"):
        func(10, 4, 0)
    with pytest.raises(ValueError, match=rf"{name}.*self_rank"):
        func(8, 4, 8)
    with pytest.raises(ValueError, match=rf"{name}.*self_rank"):
        func(8, 4, -1)
    with pytest.raises(TypeError, match=rf"{name}.*world_size"):
        func("8", 4, 0)
    with pytest.raises(ValueError, match=rf"{name}.*world_size"):
        func(0, 4, 0)
    gen = func(4, 4, 0)  # one machine: created fine, fails when advanced
    with pytest.raises(ValueError, match=rf"{name}.*more than one machine"):
        next(gen)


def test_generators_are_infinite_and_independent():
    a = tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(8), 3)
    b = tu.GetDynamicOnePeerSendRecvRanks(tu.ExponentialGraph(8), 3)
    first = list(itertools.islice(a, 1000))
    assert len(first) == 1000
    assert next(b) == first[0]
    assert first[3] == first[0]  # period 3 for size 8 (offsets 1, 2, 4)


def test_public_names():
    for name in ["ExponentialTwoGraph", "ExponentialGraph", "SymmetricExponentialGraph",
                 "MeshGrid2DGraph", "StarGraph", "RingGraph", "FullyConnectedGraph",
                 "IsTopologyEquivalent", "GetRecvWeights", "GetSendWeights", "IsRegularGraph",
                 "isPowerOf", "GetDynamicOnePeerSendRecvRanks",
                 "GetExp2DynamicSendRecvMachineRanks", "GetInnerOuterRingDynamicSendRecvRanks",
                 "GetInnerOuterExpo2DynamicSendRecvRanks"]:
        assert callable(getattr(tu, name)) and name in tu.__all__
        assert getattr(tu, name).__doc__


@pytest.mark.parametrize("size", list(range(1, 40)))
def test_mesh_grid_bit_identical_to_the_contract_formula(size):
    """W[i][i] = 2 - row sum, taken while the row still holds the provisional
    self weight 1 (BlueFog 0.3's rounding): graphs built by 0.3 code compare
    equal to ours (1 - sum of the others differs in the last bit for some sizes)."""
    W = W_of(tu.MeshGrid2DGraph(size))
    ref = W.copy()
    for i in range(size):
        ref[i, i] = 1.0
        ref[i, i] = 2.0 - ref[i].sum()
    assert np.array_equal(W, ref)
