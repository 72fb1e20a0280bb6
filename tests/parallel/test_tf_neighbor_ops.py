"""bluefog.tensorflow neighbor ops on every rank: neighbor_allreduce (uniform,
weighted topology, explicit and dynamic weights), neighbor_allgather (static
and dynamic, variable first dims), hierarchical_neighbor_allreduce, each in
eager mode and in tf.function, and their gradients.

Expected values come from the full mixing matrix M (y = M x over the stacked
ranks) built here from the networkx graph, independently of BlueFog's weight
code; gradients are checked against M^T c and against finite differences.
On an even number (> 1) of ranks, BLUEFOG_NODES_PER_MACHINE=2 is set before
init so the hierarchical op sees machines of 2 ranks.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    _world = os.environ.get(_key, "")
    if _world.isdigit():
        if int(_world) > 1 and int(_world) % 2 == 0:
            os.environ.setdefault("BLUEFOG_NODES_PER_MACHINE", "2")
        break

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402
from bluefog.common import topology_util  # noqa: E402
from tf_checks import finite_difference_check, run  # noqa: E402  (tests/parallel/tf_checks.py)

bf.init()
SIZE = bf.size()
RANK = bf.rank()
MODES = ["eager", "function"]
# Also: the op in a tf.compat.v1 graph run by a Session, and its forward in a
# tf.function with the tape outside it (the backward then runs as its own
# graph). Graph pruning there drops an op whose result nothing uses, so an
# exchange that only sends on some rank must still be tied to the result.
GRAPH_MODES = MODES + ["v1_graph", "outer_tape"]
SHAPE = (2, 3)


@pytest.fixture(autouse=True)
def _reset_topology():
    bf.set_topology(topology_util.ExponentialGraph(SIZE))
    yield


def rank_input(r, shape=SHAPE):
    return tf.constant(np.arange(int(np.prod(shape))).reshape(shape) + 10.0 * r + 1.0, tf.float64)


def loss_weights(r, shape=SHAPE):
    return tf.constant(np.arange(int(np.prod(shape))).reshape(shape) * 0.25 + r + 1.0, tf.float64)


def uniform_matrix(graph):
    m = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        srcs = [j for j in graph.predecessors(i) if j != i]
        for j in srcs + [i]:
            m[i, j] = 1.0 / (len(srcs) + 1)
    return m


def apply_matrix(m, inputs):
    return sum(m[RANK, j] * inputs[j] for j in range(SIZE))


def value_and_gradient(mode, fn, x, c):
    """fn(x) and the gradient of sum(c * fn(x)) wrt x, computed in `mode`."""
    if mode == "v1_graph":
        graph = tf.Graph()
        with graph.as_default():
            xg = tf.constant(x.numpy())
            y = fn(xg)
            grad = tf.gradients(tf.reduce_sum(tf.constant(c.numpy()) * y), xg)[0]
            with tf.compat.v1.Session(graph=graph) as session:
                return session.run([y, grad])
    if mode == "outer_tape":
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.function(fn)(x)
            loss = tf.reduce_sum(c * y)
        return y.numpy(), tape.gradient(loss, x).numpy()

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(c * fn(x))
        return tape.gradient(loss, x)

    return run(mode, fn, x).numpy(), run(mode, step, x).numpy()


def check_linear_op(mode, fn, m, shape=SHAPE):
    """fn's value is M x and its gradient (tape and finite differences) is M^T c."""
    xs = [rank_input(r, shape) for r in range(SIZE)]
    c = loss_weights(RANK, shape)
    value, grad = value_and_gradient(mode, fn, xs[RANK], c)
    np.testing.assert_allclose(value, apply_matrix(m, xs).numpy(), rtol=1e-12)
    expected = sum(m[i, RANK] * loss_weights(i, shape) for i in range(SIZE))
    np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-12)
    if mode == "eager":
        finite_difference_check(fn, xs[RANK], c, grad)


# ---- neighbor_allreduce -----------------------------------------------------------------
@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_neighbor_allreduce_uniform(mode):
    check_linear_op(mode, bf.neighbor_allreduce, uniform_matrix(bf.load_topology()))


@pytest.mark.parametrize("mode", MODES)
def test_neighbor_allreduce_weighted_topology(mode):
    graph = topology_util.ExponentialGraph(SIZE)
    weighted = nx.DiGraph()
    m = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        srcs = [j for j in graph.predecessors(i) if j != i]
        for j in srcs:
            weighted.add_edge(j, i, weight=0.1 * (j + 1))
            m[i, j] = 0.1 * (j + 1)
        weighted.add_edge(i, i, weight=1.0 - m[i].sum())
        m[i, i] = 1.0 - m[i].sum()
    assert bf.set_topology(weighted, is_weighted=True)
    check_linear_op(mode, bf.neighbor_allreduce, m)


@pytest.mark.parametrize("mode", MODES)
def test_neighbor_allreduce_explicit_weights(mode):
    srcs = bf.in_neighbor_ranks()
    m = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        for j in bf.load_topology().predecessors(i):
            if j != i:
                m[i, j] = 0.2 + 0.01 * j
        m[i, i] = 0.3
    fn = lambda x: bf.neighbor_allreduce(x, self_weight=0.3, src_weights={j: 0.2 + 0.01 * j for j in srcs})  # noqa
    check_linear_op(mode, fn, m)


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_neighbor_allreduce_dynamic_weighted(mode):
    """Ring shift: rank i sends to i+1 scaled by d_i = 0.5 + 0.1 i, receives from i-1 with weight 2."""
    if SIZE == 1:
        pytest.skip("a dynamic exchange needs two ranks")
    nxt, prv = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    m = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        m[i, i] = 0.25
        m[i, (i - 1) % SIZE] += 2.0 * (0.5 + 0.1 * ((i - 1) % SIZE))
    fn = lambda x: bf.neighbor_allreduce(x, self_weight=0.25, src_weights={prv: 2.0},  # noqa: E731
                                         dst_weights={nxt: 0.5 + 0.1 * RANK})
    check_linear_op(mode, fn, m)


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_neighbor_allreduce_send_only_and_receive_only_ranks(mode):
    """Rank 0 only sends (to 1), rank 1 only receives (from 0), the others do
    neither. (Before: in a v1 graph rank 0's exchange was pruned, and with the
    tape outside a tf.function rank 1's backward one: the peer hung.)"""
    if SIZE == 1:
        pytest.skip("needs two ranks")
    m = np.eye(SIZE)
    m[1, 1] = m[1, 0] = 0.5
    weights = {0: (1.0, {}, {1: 1.0}), 1: (0.5, {0: 0.5}, {})}.get(RANK, (1.0, {}, {}))
    fn = lambda x: bf.neighbor_allreduce(x, self_weight=weights[0], src_weights=weights[1],  # noqa: E731
                                         dst_weights=weights[2], name=f"tf.send_only.{mode}")
    check_linear_op(mode, fn, m)


def test_neighbor_allreduce_float32_and_errors():
    out = bf.neighbor_allreduce(tf.cast(rank_input(RANK), tf.float32))
    xs = [rank_input(r) for r in range(SIZE)]
    np.testing.assert_allclose(out.numpy(), apply_matrix(uniform_matrix(bf.load_topology()), xs).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="floating-point"):
        bf.neighbor_allreduce(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="together"):
        bf.neighbor_allreduce(rank_input(RANK), self_weight=0.5)
    if SIZE > 1:
        # Rank 0 expects to hear from rank 1 but rank 1 does not send: every rank fails.
        src = {1: 0.5} if RANK == 0 else {}
        with pytest.raises(tf.errors.InvalidArgumentError, match="mismatch"):
            bf.neighbor_allreduce(rank_input(RANK), self_weight=0.5, src_weights=src, dst_weights={},
                                  name="tf.test.neighbor_mismatch")


# ---- neighbor_allgather -----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_neighbor_allgather_static(mode):
    rows = [r % 2 + 1 for r in range(SIZE)]
    srcs = bf.in_neighbor_ranks()
    xs = [rank_input(r, (rows[r], 3)) for r in range(SIZE)]
    out = run(mode, bf.neighbor_allgather, xs[RANK])
    expected = tf.concat([xs[j] for j in srcs], 0) if srcs else tf.zeros([0, 3], tf.float64)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())

    total = sum(rows[j] for j in srcs)
    c = tf.constant(np.arange(total * 3).reshape(total, 3) + 5.0 * RANK, tf.float64)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(c * bf.neighbor_allgather(x))
        return tape.gradient(loss, x)

    grad = run(mode, step, xs[RANK]).numpy()
    # Rank RANK's tensor sits in each destination i's output at its position among i's sources.
    expected_grad = np.zeros((rows[RANK], 3))
    graph = bf.load_topology()
    for i in range(SIZE):
        i_srcs = [j for j in graph.predecessors(i) if j != i]
        if RANK in i_srcs:
            start = sum(rows[j] for j in i_srcs[:i_srcs.index(RANK)])
            i_total = sum(rows[j] for j in i_srcs)
            c_i = np.arange(i_total * 3).reshape(i_total, 3) + 5.0 * i
            expected_grad += c_i[start:start + rows[RANK]]
    np.testing.assert_allclose(grad, expected_grad)
    if mode == "eager":
        finite_difference_check(bf.neighbor_allgather, xs[RANK], c, grad)


@pytest.mark.parametrize("mode", MODES)
def test_neighbor_allgather_dynamic(mode):
    if SIZE == 1:
        pytest.skip("a dynamic exchange needs two ranks")
    nxt, prv = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    xs = [rank_input(r, (r + 1, 2)) for r in range(SIZE)]
    fn = lambda x: bf.neighbor_allgather(x, src_ranks=[prv], dst_ranks=[nxt])  # noqa: E731
    np.testing.assert_array_equal(run(mode, fn, xs[RANK]).numpy(), xs[prv].numpy())
    c = loss_weights(RANK, (prv + 1, 2))

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(c * fn(x))
        return tape.gradient(loss, x)

    np.testing.assert_allclose(run(mode, step, xs[RANK]).numpy(), loss_weights(nxt, (RANK + 1, 2)).numpy())


def test_neighbor_allgather_errors():
    with pytest.raises(ValueError, match="together"):
        bf.neighbor_allgather(rank_input(RANK), src_ranks=[])
    with pytest.raises(ValueError, match="at least one dimension"):
        bf.neighbor_allgather(tf.constant(1.0))


# ---- hierarchical_neighbor_allreduce ------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_hierarchical_keeps_inf(mode):
    """inf stays inf: ranks that are not their machine's leader add zeros,
    not 0 * inf = nan (and the gradient still flows through every rank)."""
    assert bf.set_machine_topology(topology_util.RingGraph(bf.machine_size()))
    x = tf.constant([float("inf"), 1.0])
    f = (lambda t: bf.hierarchical_neighbor_allreduce(t, name=f"tf.hier.inf.{mode}"))
    y = (f(x) if mode == "eager" else tf.function(f)(x)).numpy()
    assert np.isposinf(y[0]) and np.isfinite(y[1]), y



@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_hierarchical_neighbor_allreduce(mode):
    machines, local = bf.machine_size(), bf.local_size()
    assert machines * local == SIZE
    assert bf.set_machine_topology(topology_util.RingGraph(machines))
    machine_graph = bf.load_machine_topology()
    mm = np.zeros((machines, machines))
    for a in range(machines):
        srcs = [b for b in machine_graph.predecessors(a) if b != a]
        for b in srcs + [a]:
            mm[a, b] = 1.0 / (len(srcs) + 1)
    # rank i (machine i // local) gets sum_b mm[m_i, b] * mean of machine b's inputs.
    m = np.zeros((SIZE, SIZE))
    for i in range(SIZE):
        for j in range(SIZE):
            m[i, j] = mm[i // local, j // local] / local
    check_linear_op(mode, bf.hierarchical_neighbor_allreduce, m)
