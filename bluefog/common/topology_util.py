"""Virtual topologies (weighted ``nx.DiGraph``) and dynamic neighbour schedules.

Pure Python (numpy + networkx >= 3); no MPI.  Conventions shared by every static constructor:

* the graph is built from a weight matrix ``W`` with ``nx.from_numpy_array(W,
  create_using=nx.DiGraph)``; nodes are the ranks ``0..size-1``;
* ``W[i][j]`` is the weight of the edge ``i -> j`` (rank i sends to rank j), self-loops included;
* the in-neighbours of ``j`` are its predecessors and the receive weights of ``j`` are column
  ``j`` of ``W`` (see :func:`GetRecvWeights`); the send weights of ``i`` are row ``i``.

Every matrix produced here is row-stochastic, and in fact doubly stochastic: the exponential,
ring and fully connected graphs are circulant, while the star and mesh-grid graphs are symmetric.
"""

import math
import numbers
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

__all__ = [
    "ExponentialTwoGraph", "ExponentialGraph", "SymmetricExponentialGraph", "MeshGrid2DGraph",
    "StarGraph", "RingGraph", "FullyConnectedGraph", "IsTopologyEquivalent", "GetRecvWeights",
    "GetSendWeights", "IsRegularGraph", "isPowerOf", "GetDynamicOnePeerSendRecvRanks",
    "GetExp2DynamicSendRecvMachineRanks", "GetInnerOuterRingDynamicSendRecvRanks",
    "GetInnerOuterExpo2DynamicSendRecvRanks",
]

SendRecvRanks = Tuple[List[int], List[int]]


# ----------------------------------------------------------------------------- validation helpers
def _check_int(value, name: str, func: str, minimum: Optional[int] = None) -> int:
    """Return ``value`` as a Python int, or raise TypeError/ValueError naming ``func``/``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{func}: {name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{func}: {name} must be an int >= {minimum}, got {value}")
    return value


def _check_rank(rank, size: int, name: str, func: str) -> int:
    rank = _check_int(rank, name, func, 0)
    if rank >= size:
        raise ValueError(f"{func}: {name} must be in [0, {size}), got {rank}")
    return rank


def _check_digraph(topo, func: str) -> None:
    if not isinstance(topo, nx.DiGraph):
        raise TypeError(f"{func}: topo must be a networkx.DiGraph, got {type(topo).__name__}")


def _floor_log2(n: int) -> int:
    """Exact ``floor(log2(n))`` for an int ``n >= 1``."""
    return n.bit_length() - 1


# ----------------------------------------------------------------------------- matrix helpers
def _to_graph(W: np.ndarray) -> nx.DiGraph:
    return nx.from_numpy_array(W, create_using=nx.DiGraph)


def _circulant_graph(x: Sequence[float]) -> nx.DiGraph:
    """Normalise ``x`` to sum 1 and build the circulant graph whose row ``i`` is roll(x, i)."""
    x = np.asarray(x, dtype=float) / np.sum(x)
    return _to_graph(np.array([np.roll(x, i) for i in range(len(x))]))


# ----------------------------------------------------------------------------- static topologies
def isPowerOf(x: int, base: int) -> bool:
    """Whether ``x`` is an integer power of ``base`` (``base ** 0 == 1`` counts).

    Computed with exact integer arithmetic (the original used ``math.log``, which misclassified
    e.g. 243 = 3**5 because of rounding).

    Args:
        x: a positive int (an integral float is accepted).
        base: an int >= 2.
    Returns:
        True if ``x == base ** k`` for some int ``k >= 0``.
    Raises:
        TypeError: if ``x`` or ``base`` is not an int.
        ValueError: if ``x < 1`` or ``base < 2``.
    """
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    x = _check_int(x, "x", "isPowerOf", 1)
    base = _check_int(base, "base", "isPowerOf", 2)
    while x % base == 0:
        x //= base
    return x == 1


def ExponentialTwoGraph(size: int) -> nx.DiGraph:
    """Exponential-2 graph: rank ``i`` sends to ``i + 2**k (mod size)`` and to itself.

    ``x[k] = 1`` if ``k`` is 0 or a power of 2, normalised; circulant (``W[i] = roll(x, i)``),
    hence doubly stochastic with equal weights ``1 / (1 + #powers of 2 below size)``.

    Args:
        size: number of ranks (int >= 1).
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError, ValueError: if ``size`` is not an int, or is < 1.
    """
    size = _check_int(size, "size", "ExponentialTwoGraph", 1)
    return _circulant_graph([1.0 if k & (k - 1) == 0 else 0.0 for k in range(size)])


def ExponentialGraph(size: int, base: int = 2) -> nx.DiGraph:
    """Exponential graph (the default topology): rank ``i`` sends to ``i + base**k (mod size)``.

    ``x[0] = 1`` and ``x[k] = 1`` if ``k`` is a power of ``base``; normalised and circulant, hence
    doubly stochastic.  For size 4 (base 2) rank r sends to r+1 and r+2, every weight being 1/3.

    Args:
        size: number of ranks (int >= 1).
        base: int >= 2.
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError: if ``size`` or ``base`` is not an int.
        ValueError: if ``size < 1`` or ``base < 2``.
    """
    size = _check_int(size, "size", "ExponentialGraph", 1)
    base = _check_int(base, "base", "ExponentialGraph", 2)
    return _circulant_graph([1.0] + [1.0 if isPowerOf(k, base) else 0.0
                                     for k in range(1, size)])


def SymmetricExponentialGraph(size: int, base: int = 4) -> nx.DiGraph:
    """Undirected exponential graph: offsets ``k`` with ``min(k, size-k)`` a power of ``base``.

    The first half of the offsets follows :func:`ExponentialGraph` and the second half mirrors
    it, so ``W`` is circulant and symmetric (doubly stochastic).

    Args:
        size: number of ranks (int >= 1).
        base: int >= 2 (default 4).
    Returns:
        nx.DiGraph with ``size`` nodes, self-loops, and every edge present in both directions.
    Raises:
        TypeError: if ``size`` or ``base`` is not an int.
        ValueError: if ``size < 1`` or ``base < 2``.
    """
    size = _check_int(size, "size", "SymmetricExponentialGraph", 1)
    base = _check_int(base, "base", "SymmetricExponentialGraph", 2)
    x = [1.0]
    for k in range(1, size):
        index = k if k <= size // 2 else size - k
        x.append(1.0 if isPowerOf(index, base) else 0.0)
    return _circulant_graph(x)


def MeshGrid2DGraph(size: int, shape: Optional[Tuple[int, int]] = None) -> nx.DiGraph:
    """2-D mesh grid (no wrap-around) with Metropolis-Hastings weights.

    Rank ``i`` sits at row ``i // ncol``, column ``i % ncol`` and is linked both ways with its
    left/right/up/down neighbours.  Without ``shape``, ``nrow`` is the largest divisor of ``size``
    not above ``sqrt(size)`` (so ``nrow <= ncol``; a prime size gives a 1 x size line).
    Off-diagonal weights are ``1 / max(deg_i, deg_j)`` with degrees counting the node itself, and
    ``W[i][i] = 2 - row sum`` computed while the row still holds the provisional self weight 1, as
    the original does (mathematically ``1 - sum_{j != i} W[i][j]``, but rounded like the original,
    so that graphs built by either compare equal).  The result is symmetric and doubly stochastic.

    Args:
        size: number of ranks (int >= 1).
        shape: optional ``(nrow, ncol)`` of positive ints with ``nrow * ncol == size``.
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError: if ``size`` or an entry of ``shape`` is not an int, or ``shape`` is not a pair.
        ValueError: if ``size < 1`` or ``shape`` does not match ``size``.
    """
    func = "MeshGrid2DGraph"
    size = _check_int(size, "size", func, 1)
    if shape is None:
        nrow = math.isqrt(size)
        while size % nrow != 0:
            nrow -= 1
        ncol = size // nrow
    else:
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
            raise TypeError(f"{func}: shape must be a pair (nrow, ncol), got {shape!r}")
        nrow = _check_int(shape[0], "shape[0] (nrow)", func, 1)
        ncol = _check_int(shape[1], "shape[1] (ncol)", func, 1)
        if nrow * ncol != size:
            raise ValueError(f"{func}: shape {tuple(shape)} does not match size {size} "
                             f"({nrow} * {ncol} = {nrow * ncol})")
    adjacency = np.eye(size)
    for i in range(size):
        if (i + 1) % ncol != 0:  # right neighbour in the same row
            adjacency[i, i + 1] = adjacency[i + 1, i] = 1.0
        if i + ncol < size:  # neighbour below
            adjacency[i, i + ncol] = adjacency[i + ncol, i] = 1.0
    degree = adjacency.sum(axis=1)  # counts the node itself
    W = np.eye(size)
    for i in range(size):
        for j in np.nonzero(adjacency[i])[0]:
            if j != i:
                W[i, j] = 1.0 / max(degree[i], degree[j])
        W[i, i] = 2.0 - W[i].sum()  # the row still holds the provisional 1: bit for bit the original's
    return _to_graph(W)


def StarGraph(size: int, center_rank: int = 0) -> nx.DiGraph:
    """Star: every rank is linked both ways with ``center_rank``.

    ``W[i][i] = 1 - 1/size`` for the leaves, and the centre's row and column are ``1/size``,
    including the centre's own self weight (the original's loop overwrites it with ``1/size``
    last; that is what makes the centre row sum to 1).  Symmetric, doubly stochastic.

    Args:
        size: number of ranks (int >= 1).
        center_rank: the hub, an int in ``[0, size)``.
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError: if ``size`` or ``center_rank`` is not an int.
        ValueError: if ``size < 1`` or ``center_rank`` is out of range.
    """
    size = _check_int(size, "size", "StarGraph", 1)
    center_rank = _check_rank(center_rank, size, "center_rank", "StarGraph")
    W = np.zeros((size, size))
    np.fill_diagonal(W, 1.0 - 1.0 / size)
    W[center_rank, :] = 1.0 / size
    W[:, center_rank] = 1.0 / size
    return _to_graph(W)


def RingGraph(size: int, connect_style: int = 0) -> nx.DiGraph:
    """Ring.  ``connect_style`` 0: both directions, weights 1/3 (self, left, right);
    1: each rank sends to its left neighbour ``i-1`` only; 2: to its right neighbour ``i+1``
    only (self and neighbour 1/2 each).

    Size 1 gives ``[[1]]`` and size 2 gives 0.5 everywhere, whatever the style.  Circulant,
    doubly stochastic.

    Args:
        size: number of ranks (int >= 1).
        connect_style: 0, 1 or 2.
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError: if ``size`` or ``connect_style`` is not an int.
        ValueError: if ``size < 1`` or ``connect_style`` is not in {0, 1, 2}.
    """
    size = _check_int(size, "size", "RingGraph", 1)
    connect_style = _check_int(connect_style, "connect_style", "RingGraph")
    if connect_style not in (0, 1, 2):
        raise ValueError("RingGraph: connect_style must be 0 (both directions), 1 (left) or "
                         f"2 (right), got {connect_style}")
    if size <= 2:
        return _to_graph(np.full((size, size), 1.0 / size))
    x = np.zeros(size)
    x[0] = 1.0
    if connect_style in (0, 1):
        x[-1] = 1.0
    if connect_style in (0, 2):
        x[1] = 1.0
    return _circulant_graph(x)


def FullyConnectedGraph(size: int) -> nx.DiGraph:
    """Complete graph with every weight (self included) equal to ``1/size``.

    Args:
        size: number of ranks (int >= 1).
    Returns:
        nx.DiGraph with ``size`` nodes and self-loops.
    Raises:
        TypeError, ValueError: if ``size`` is not an int, or is < 1.
    """
    size = _check_int(size, "size", "FullyConnectedGraph", 1)
    return _to_graph(np.full((size, size), 1.0 / size))


# ----------------------------------------------------------------------------- graph queries
def IsTopologyEquivalent(topo1: Optional[nx.DiGraph], topo2: Optional[nx.DiGraph]) -> bool:
    """Whether two topologies have the same weighted adjacency matrix (not an isomorphism test).

    Args:
        topo1: a networkx graph or None.
        topo2: a networkx graph or None.
    Returns:
        False if either is None; otherwise True iff both have the same nodes, the same number of
        edges and element-wise equal weight matrices (missing ``weight`` counts as 1).
    Raises:
        TypeError: if an argument is neither None nor a networkx graph.
    """
    if topo1 is None or topo2 is None:
        return False
    for name, topo in (("topo1", topo1), ("topo2", topo2)):
        if not isinstance(topo, nx.Graph):
            raise TypeError(f"IsTopologyEquivalent: {name} must be a networkx graph or None, "
                            f"got {type(topo).__name__}")
    if (topo1.number_of_nodes() != topo2.number_of_nodes()
            or topo1.number_of_edges() != topo2.number_of_edges()
            or set(topo1.nodes) != set(topo2.nodes)):
        return False
    try:
        nodelist = sorted(topo1.nodes)
    except TypeError:  # unorderable labels
        nodelist = list(topo1.nodes)
    return bool(np.array_equal(nx.to_numpy_array(topo1, nodelist=nodelist),
                               nx.to_numpy_array(topo2, nodelist=nodelist)))


def _weights(topo: nx.DiGraph, rank, func: str, outgoing: bool) -> Tuple[float, Dict[int, float]]:
    _check_digraph(topo, func)
    if rank not in topo:
        raise ValueError(f"{func}: rank {rank!r} is not a node of the topology "
                         f"({topo.number_of_nodes()} nodes)")
    self_weight, neighbor_weights = 0.0, {}
    for other in (topo.successors(rank) if outgoing else topo.predecessors(rank)):
        edge = topo[rank][other] if outgoing else topo[other][rank]
        if other == rank:
            self_weight = float(edge.get("weight", 1.0))
        else:
            neighbor_weights[other] = float(edge.get("weight", 1.0))
    return self_weight, neighbor_weights


def GetRecvWeights(topo: nx.DiGraph, rank: int) -> Tuple[float, Dict[int, float]]:
    """Receive weights of ``rank``: column ``rank`` of ``W`` over its predecessors.

    Args:
        topo: the topology.
        rank: a node of ``topo``.
    Returns:
        ``(self_weight, {src_rank: weight})``; ``self_weight`` is 0.0 without a self-loop and the
        dict (self excluded) follows networkx predecessor order.
    Raises:
        TypeError: if ``topo`` is not an nx.DiGraph.
        ValueError: if ``rank`` is not a node of ``topo``.
    """
    return _weights(topo, rank, "GetRecvWeights", outgoing=False)


def GetSendWeights(topo: nx.DiGraph, rank: int) -> Tuple[float, Dict[int, float]]:
    """Send weights of ``rank``: row ``rank`` of ``W`` over its successors.

    Args:
        topo: the topology.
        rank: a node of ``topo``.
    Returns:
        ``(self_weight, {dst_rank: weight})``; ``self_weight`` is 0.0 without a self-loop and the
        dict (self excluded) follows networkx successor order.
    Raises:
        TypeError: if ``topo`` is not an nx.DiGraph.
        ValueError: if ``rank`` is not a node of ``topo``.
    """
    return _weights(topo, rank, "GetSendWeights", outgoing=True)


def IsRegularGraph(topo: nx.DiGraph) -> bool:
    """Whether every node has the same ``degree`` (in + out for a DiGraph; a self-loop counts 2).

    Args:
        topo: a networkx graph.
    Returns:
        True if all degrees are equal (an empty graph is regular).
    Raises:
        TypeError: if ``topo`` is not a networkx graph.
    """
    if not isinstance(topo, nx.Graph):
        raise TypeError(f"IsRegularGraph: topo must be a networkx graph, got {type(topo).__name__}")
    return len({d for _, d in topo.degree()}) <= 1


# ----------------------------------------------------------------------------- dynamic schedules
# Each public generator function below is a plain function: it validates its arguments at call
# time and returns an infinite generator.  The only error deferred to the first next() is "this
# world is too small for the schedule" (a size-1 world, a rank with no out-neighbour, a single
# machine): scripts commonly create the generator unconditionally and advance it only on some
# code paths (e.g. examples/pytorch_mnist.py with --dist-optimizer=allreduce), and those scripts
# must keep working when launched with one process, as they did with the original.
def GetDynamicOnePeerSendRecvRanks(topo: nx.DiGraph, self_rank: int) -> Iterator[SendRecvRanks]:
    """One-peer dynamic schedule drawn from a static topology.

    Each rank's out-neighbours (self removed) are sorted clockwise, i.e. by
    ``(r - rank) mod size``.  At step ``k`` every rank sends to its ``(k mod outdeg)``-th
    neighbour; ``self_rank`` receives from every rank whose step-``k`` target is ``self_rank``.
    With ExponentialGraph(size) this is the one-peer exp-2 schedule (step k: send to
    ``rank + 2**(k mod log2 size)`` for a power-of-2 size).

    Args:
        topo: an nx.DiGraph whose nodes are ``0..size-1``.
        self_rank: this rank.
    Returns:
        An infinite generator yielding ``([send_rank], sorted recv_ranks)`` per step.
    Raises:
        TypeError: if ``topo`` is not an nx.DiGraph or ``self_rank`` is not an int (at call).
        ValueError: if the nodes are not ``0..size-1`` or ``self_rank`` is out of range (at
            call); if some rank has no out-neighbour other than itself, e.g. a size-1 world
            (at the first next()).
    """
    func = "GetDynamicOnePeerSendRecvRanks"
    _check_digraph(topo, func)
    size = topo.number_of_nodes()
    if set(topo.nodes) != set(range(size)):
        raise ValueError(f"{func}: the topology's nodes must be the ranks 0..{size - 1}")
    self_rank = _check_rank(self_rank, size, "self_rank", func)
    sorted_send_ranks = [
        sorted((r for r in topo.successors(rank) if r != rank),
               key=lambda r, rk=rank: (r - rk) % size)
        for rank in range(size)]
    return _one_peer_schedule(sorted_send_ranks, self_rank, func)


def _one_peer_schedule(sorted_send_ranks: List[List[int]], self_rank: int,
                       func: str) -> Iterator[SendRecvRanks]:
    lonely = [r for r, targets in enumerate(sorted_send_ranks) if not targets]
    if lonely:
        raise ValueError(
            f"{func}: rank(s) {lonely} have no out-neighbour other than themselves "
            f"(world size {len(sorted_send_ranks)}), so there is no one-peer schedule; "
            "a size-1 world has no peers at all")
    index = 0
    while True:
        targets = [t[index % len(t)] for t in sorted_send_ranks]
        recv_ranks = [r for r, t in enumerate(targets) if t == self_rank and r != self_rank]
        yield [targets[self_rank]], recv_ranks
        index += 1


def _check_machines(world_size, local_size, self_rank, func: str) -> Tuple[int, int, int]:
    """Validate a homogeneous layout; return (num_machines, machine_id, local_rank)."""
    world_size = _check_int(world_size, "world_size", func, 1)
    local_size = _check_int(local_size, "local_size", func, 1)
    if world_size % local_size != 0:
        raise ValueError(f"{func}: needs a homogeneous cluster, but local_size {local_size} "
                         f"does not divide world_size {world_size}")
    self_rank = _check_rank(self_rank, world_size, "self_rank", func)
    return world_size // local_size, self_rank // local_size, self_rank % local_size


def _require_machines(num_machines: int, func: str) -> None:
    if num_machines < 2:
        raise ValueError(f"{func}: needs more than one machine (world_size > local_size), "
                         f"got {num_machines} machine")


def GetExp2DynamicSendRecvMachineRanks(world_size: int, local_size: int, self_rank: int,
                                       local_rank: int) -> Iterator[SendRecvRanks]:
    """One-peer exponential-2 schedule between machines (machine ids, not ranks).

    With ``M`` machines and ``d = 2**(k mod (floor(log2(M-1)) + 1))``, machine ``m`` sends to
    ``(m + d) mod M`` and receives from ``(m - d) mod M`` at step ``k``.

    Args:
        world_size: total number of ranks.
        local_size: ranks per machine (must divide ``world_size``).
        self_rank: this rank; its machine is ``self_rank // local_size``.
        local_rank: this rank's local rank; must equal ``self_rank % local_size``.
    Returns:
        An infinite generator yielding ``([send_machine_id], [recv_machine_id])``.
    Raises:
        TypeError: if an argument is not an int (at call).
        ValueError: for a non-homogeneous layout or an out-of-range rank (at call); for a
            single machine (at the first next()).
    """
    func = "GetExp2DynamicSendRecvMachineRanks"
    num_machines, machine_id, expected_local = _check_machines(
        world_size, local_size, self_rank, func)
    local_rank = _check_int(local_rank, "local_rank", func, 0)
    if local_rank != expected_local:
        raise ValueError(f"{func}: needs a homogeneous cluster, but rank {self_rank} has "
                         f"local_rank {local_rank} instead of {expected_local} "
                         f"(= self_rank % local_size)")
    return _exp2_machine_schedule(num_machines, machine_id, func)


def _exp2_machine_schedule(num_machines: int, machine_id: int,
                           func: str) -> Iterator[SendRecvRanks]:
    _require_machines(num_machines, func)
    period = _floor_log2(num_machines - 1) + 1
    index = 0
    while True:
        dist = 2 ** (index % period)
        yield [(machine_id + dist) % num_machines], [(machine_id - dist) % num_machines]
        index += 1


def _skip_outside(local: int, dist: int, outside: int, local_size: int, sign: int) -> int:
    """The local rank ``dist`` steps from ``local`` in direction ``sign`` on the inner ring,
    which is the machine's ranks with ``outside`` left out."""
    gap = (sign * (outside - local)) % local_size  # steps from local to outside
    if dist >= gap:
        dist += 1
    return (local + sign * dist) % local_size


def _inner_outer_schedule(world_size: int, local_size: int, self_rank: int, func: str,
                          exponential: bool) -> Iterator[SendRecvRanks]:
    num_machines, machine_id, local_rank = _check_machines(
        world_size, local_size, self_rank, func)
    if local_size <= 2:
        raise ValueError(f"{func}: needs local_size > 2, got {local_size}; consider "
                         "hierarchical_neighbor_allreduce or GetDynamicOnePeerSendRecvRanks")

    def schedule() -> Iterator[SendRecvRanks]:
        _require_machines(num_machines, func)
        out_period = _floor_log2(num_machines - 1) + 1 if exponential else 1
        in_period = _floor_log2(local_size - 2) + 1 if exponential else 1
        base = machine_id * local_size
        index = 0
        while True:
            outside = index % local_size  # the local rank talking to another machine
            if local_rank == outside:
                dist = 2 ** (index % out_period)
                send = ((machine_id + dist) % num_machines) * local_size + local_rank
                recv = ((machine_id - dist) % num_machines) * local_size + local_rank
            else:
                dist = 2 ** (index % in_period)
                send = base + _skip_outside(local_rank, dist, outside, local_size, +1)
                recv = base + _skip_outside(local_rank, dist, outside, local_size, -1)
            yield [send], [recv]
            index += 1

    return schedule()


def GetInnerOuterRingDynamicSendRecvRanks(world_size: int, local_size: int,
                                          self_rank: int) -> Iterator[SendRecvRanks]:
    """Inner-ring / outer-ring one-peer schedule for a homogeneous cluster.

    At step ``k`` local rank ``k mod local_size`` of every machine is the "outside" rank: it
    sends to the same local rank on the next machine and receives from the previous machine.
    The other ranks of the machine form a ring that skips the outside rank: each sends to the
    next one and receives from the previous one.

    Args:
        world_size: total number of ranks.
        local_size: ranks per machine (must divide ``world_size`` and be > 2).
        self_rank: this rank.
    Returns:
        An infinite generator yielding ``([send_rank], [recv_rank])``.
    Raises:
        TypeError: if an argument is not an int (at call).
        ValueError: for a non-homogeneous layout, ``local_size <= 2`` or an out-of-range rank
            (at call); for a single machine (at the first next()).
    """
    return _inner_outer_schedule(world_size, local_size, self_rank,
                                 "GetInnerOuterRingDynamicSendRecvRanks", exponential=False)


def GetInnerOuterExpo2DynamicSendRecvRanks(world_size: int, local_size: int,
                                           self_rank: int) -> Iterator[SendRecvRanks]:
    """Inner / outer exponential-2 one-peer schedule for a homogeneous cluster.

    Like :func:`GetInnerOuterRingDynamicSendRecvRanks`, but at step ``k`` the outside rank
    talks to the machines at distance ``+-2**(k mod (floor(log2(M-1)) + 1))`` and the inner
    ranks to the ranks at distance ``+-2**(k mod (floor(log2(local_size-2)) + 1))`` on the inner
    ring (the machine's ranks without the outside rank).

    Args:
        world_size: total number of ranks.
        local_size: ranks per machine (must divide ``world_size`` and be > 2).
        self_rank: this rank.
    Returns:
        An infinite generator yielding ``([send_rank], [recv_rank])``.
    Raises:
        TypeError: if an argument is not an int (at call).
        ValueError: for a non-homogeneous layout, ``local_size <= 2`` or an out-of-range rank
            (at call); for a single machine (at the first next()).
    """
    return _inner_outer_schedule(world_size, local_size, self_rank,
                                 "GetInnerOuterExpo2DynamicSendRecvRanks", exponential=True)
