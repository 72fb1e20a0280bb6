"""bluefog.tensorflow collectives on every rank: allreduce, grouped_allreduce,
broadcast, allgather in eager mode and inside tf.function; dtypes; gradients
(against the analytic expectation and finite differences); names; errors.

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py. Each rank's input is
a known function of its rank, so expected values are computed here with numpy
from all ranks' inputs, independently of BlueFog. Every test issues the same
sequence of collective ops on every rank.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402
from bluefog.tensorflow.mpi_ops import op_name  # noqa: E402
from tf_checks import finite_difference_check, run  # noqa: E402  (tests/parallel/tf_checks.py)

bf.init()
SIZE = bf.size()
RANK = bf.rank()

SUM_DTYPES = [tf.int32, tf.int64, tf.float16, tf.bfloat16, tf.float32, tf.float64]
FLOAT_DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
MOVE_DTYPES = [tf.uint8, tf.int8, tf.int16, tf.int32, tf.int64, tf.float16, tf.float32, tf.float64, tf.bool]
SHAPES = [(), (17,), (3, 4, 5)]
MODES = ["eager", "function"]


def rank_input(r, shape, dtype=tf.float64):
    """Rank r's input: small integers, exact in every dtype (also summed over 4 ranks)."""
    n = int(np.prod(shape, dtype=np.int64))
    values = (np.arange(n) % 5 + 2 * r + 1).reshape(shape)
    if dtype == tf.bool:
        return tf.constant(values % 2 == 1)
    return tf.cast(tf.constant(values, tf.float64), dtype)


def assert_equal(actual, expected):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(tf.cast(actual, tf.float64).numpy() if actual.dtype != tf.bool else actual.numpy(),
                                  tf.cast(expected, tf.float64).numpy() if expected.dtype != tf.bool
                                  else expected.numpy())


def global_sum(x):
    """Sum over ranks, computed with an allreduce in float64 (for losses)."""
    return bf.allreduce(tf.cast(x, tf.float64), average=False)


# ---- forward values -------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", SUM_DTYPES, ids=lambda d: d.name)
def test_allreduce_sum(dtype, shape, mode):
    total = sum(rank_input(r, shape) for r in range(SIZE))
    out = run(mode, lambda x: bf.allreduce(x, average=False), rank_input(RANK, shape, dtype))
    assert_equal(out, tf.cast(total, dtype))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.name)
def test_allreduce_average(dtype, mode):
    shape = (3, 4)
    mean = sum(rank_input(r, shape) for r in range(SIZE)) / SIZE
    out = run(mode, lambda x: bf.allreduce(x), rank_input(RANK, shape, dtype))
    atol = 1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-12
    np.testing.assert_allclose(tf.cast(out, tf.float64).numpy(), mean.numpy(), atol=atol)
    assert out.dtype == dtype


@pytest.mark.parametrize("mode", MODES)
def test_repeated_allreduce_runs_in_fast_rounds(mode):
    # The same small allreduce cycle after cycle: agreed on and summed in one
    # MPI allreduce per op (BLUEFOG_FAST_ROUNDS, on by default; see
    # tests/parallel/test_fast_rounds.py for the PyTorch side).
    from bluefog.common.basics import get_basics
    before = get_basics().fast_round_counts()[1]
    for it in range(16):
        out = run(mode, lambda x: bf.allreduce(x, average=False, name="tf.fast." + mode),
                  rank_input(RANK, (17,), tf.float32) + it)
        assert_equal(out, tf.cast(sum(rank_input(r, (17,)) for r in range(SIZE)) + SIZE * it, tf.float32))
    assert get_basics().fast_round_counts()[1] - before >= 8


@pytest.mark.parametrize("mode", MODES)
def test_grouped_allreduce_mixed_dtypes(mode):
    shapes = [(2,), (3, 2), ()]
    dtypes = [tf.float32, tf.float64, tf.int32]
    inputs = [rank_input(RANK, s, d) for s, d in zip(shapes, dtypes)]
    outs = run(mode, lambda *xs: bf.grouped_allreduce(list(xs), average=False), *inputs)
    for s, d, out in zip(shapes, dtypes, outs):
        assert_equal(out, tf.cast(sum(rank_input(r, s) for r in range(SIZE)), d))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=lambda d: d.name)
def test_broadcast(dtype, mode):
    for root in range(SIZE):
        out = run(mode, lambda x: bf.broadcast(x, root), rank_input(RANK, (3, 2), dtype))
        assert_equal(out, rank_input(root, (3, 2), dtype))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", MOVE_DTYPES, ids=lambda d: d.name)
def test_allgather_variable_first_dim(dtype, mode):
    shapes = [(r + 1, 2) for r in range(SIZE)]
    out = run(mode, bf.allgather, rank_input(RANK, shapes[RANK], dtype))
    assert_equal(out, tf.concat([rank_input(r, shapes[r], dtype) for r in range(SIZE)], 0))


def test_allgather_in_function_has_unknown_first_dim():
    f = tf.function(bf.allgather).get_concrete_function(tf.TensorSpec([2, 3], tf.float32))
    assert f.structured_outputs.shape.as_list() == [None, 3]


def test_several_unnamed_ops_in_one_function():
    """Unnamed ops in a graph take their node names, which are unique and agree across ranks."""
    @tf.function
    def f(x):
        return bf.allreduce(x, average=False) + bf.allreduce(2 * x, average=False) + bf.broadcast(x, 0)

    x = rank_input(RANK, (4,))
    total = sum(rank_input(r, (4,)) for r in range(SIZE))
    for _ in range(2):
        np.testing.assert_array_equal(f(x).numpy(), (3 * total + rank_input(0, (4,))).numpy())


def test_eager_names_count_up():
    a, b = op_name(None, "allreduce"), op_name(None, "allreduce")
    assert a.startswith("tf.allreduce.") and b.startswith("tf.allreduce.")
    assert int(b.rsplit(".", 1)[1]) == int(a.rsplit(".", 1)[1]) + 1
    assert op_name("mine", "allreduce") == "mine"
    with pytest.raises(ValueError):
        op_name(3, "allreduce")


def test_explicit_names():
    x = rank_input(RANK, (5,))
    total = sum(rank_input(r, (5,)) for r in range(SIZE))
    np.testing.assert_array_equal(bf.allreduce(x, average=False, name="tf.test.explicit").numpy(), total.numpy())
    np.testing.assert_array_equal(bf.allreduce(x, average=False, name="tf.test.explicit").numpy(), total.numpy())


# ---- gradients ------------------------------------------------------------------------
def tape_gradient(mode, fn, x, c):
    """d/dx of the global loss sum_ranks <c, fn(x)> on this rank, through the tape
    (mode "outer_tape": the forward in a tf.function, the tape outside it, so the
    backward runs as a graph of its own, where unused ops are pruned)."""
    if mode == "outer_tape":
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.function(lambda t: tf.reduce_sum(c * fn(t)))(x)
        return tape.gradient(loss, x)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(c * fn(x))
        return tape.gradient(loss, x)
    return run(mode, step, x)


def loss_weights(r, shape):
    return tf.constant(np.arange(int(np.prod(shape))).reshape(shape) * 0.5 + r + 1.0, tf.float64)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("average", [True, False])
def test_allreduce_gradient(average, mode):
    shape = (2, 3)
    c = loss_weights(RANK, shape)
    grad = tape_gradient(mode, lambda x: bf.allreduce(x, average=average), rank_input(RANK, shape), c)
    expected = sum(loss_weights(r, shape) for r in range(SIZE)) / (SIZE if average else 1)
    np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=1e-12)
    finite_difference_check(lambda x: bf.allreduce(x, average=average), rank_input(RANK, shape), c, grad)


@pytest.mark.parametrize("mode", MODES)
def test_grouped_allreduce_gradient(mode):
    c1, c2 = loss_weights(RANK, (3,)), loss_weights(RANK, (2, 2))

    def step(x1, x2):
        with tf.GradientTape() as tape:
            tape.watch([x1, x2])
            y1, y2 = bf.grouped_allreduce([x1, x2], average=True)
            loss = tf.reduce_sum(c1 * y1) + tf.reduce_sum(c2 * y2)
        return tape.gradient(loss, [x1, x2])

    g1, g2 = run(mode, step, rank_input(RANK, (3,)), rank_input(RANK, (2, 2)))
    np.testing.assert_allclose(g1.numpy(), (sum(loss_weights(r, (3,)) for r in range(SIZE)) / SIZE).numpy())
    np.testing.assert_allclose(g2.numpy(), (sum(loss_weights(r, (2, 2)) for r in range(SIZE)) / SIZE).numpy())


@pytest.mark.parametrize("mode", MODES + ["outer_tape"])
def test_broadcast_gradient(mode):
    shape = (4,)
    root = SIZE - 1
    c = loss_weights(RANK, shape)
    grad = tape_gradient(mode, lambda x: bf.broadcast(x, root), rank_input(RANK, shape), c)
    expected = sum(loss_weights(r, shape) for r in range(SIZE)) if RANK == root else tf.zeros(shape, tf.float64)
    np.testing.assert_allclose(grad.numpy(), expected.numpy())
    finite_difference_check(lambda x: bf.broadcast(x, root), rank_input(RANK, shape), c, grad)


def test_gradient_names_in_graphs_are_the_forward_name_plus_grad():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant([1.0])
        y = bf.allreduce(x, name="tf.named")
        grad_op = tf.gradients(y, x)[0].op
    names = [tf.get_static_value(op.inputs[-1]) for op in graph.get_operations() if op.type == "BluefogAllreduce"]
    names = [n.item() if hasattr(n, "item") else n for n in names]
    assert sorted(n.decode() if isinstance(n, bytes) else n for n in names) == ["tf.named", "tf.named.grad"], names
    assert grad_op is not None


@pytest.mark.parametrize("mode", MODES + ["outer_tape"])
def test_allgather_gradient(mode):
    rows = [r % 3 + 1 for r in range(SIZE)]
    total_rows = sum(rows)
    c = tf.constant(np.arange(total_rows * 2).reshape(total_rows, 2) + 10.0 * RANK, tf.float64)
    x = rank_input(RANK, (rows[RANK], 2))
    grad = tape_gradient(mode, bf.allgather, x, c)
    c_sum = sum(np.arange(total_rows * 2).reshape(total_rows, 2) + 10.0 * r for r in range(SIZE))
    start = sum(rows[:RANK])
    np.testing.assert_allclose(grad.numpy(), c_sum[start:start + rows[RANK]])
    finite_difference_check(bf.allgather, x, c, grad.numpy())


# ---- sparse gradients -----------------------------------------------------------------
def test_an_op_run_twice_in_one_function_run_is_refused_unless_named_per_call():
    """A tf.function holding an unnamed op, called twice inside another, runs
    one op name twice per step: other ranks could pair the two runs the other
    way round (swapped results, e.g. gradients). It raises on every rank; with
    a name per call it works. A loop's iterations are runs of their own."""
    @tf.function
    def inner(t, name=None):
        return bf.allreduce(t, average=False, name=name)

    def outer_fn(names):
        @tf.function
        def outer(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = tf.reduce_sum(inner(t, names[0]) * 2.0) + tf.reduce_sum(inner(t * 3.0, names[1]))
            return y, tape.gradient(y, t)
        return outer

    x = tf.constant([1.0, 2.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="ran a second time in one run of a tf.function"):
        outer_fn([None, None])(x)
    y, g = outer_fn(["tf.test.twice.a", "tf.test.twice.b"])(x)
    assert float(y.numpy()) == pytest.approx(5.0 * 3.0 * SIZE)  # (2 + 3) * sum(x) summed over ranks
    np.testing.assert_allclose(g.numpy(), [5.0 * SIZE] * 2)  # d/dx of the sum of every rank's y

    @tf.function
    def loop(t):
        return tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, bf.allreduce(v, average=False, name="tf.lp")),
                             (0, t))[1]
    assert float(loop(tf.constant([1.0])).numpy()[0]) == SIZE ** 3


def test_allreduce_indexed_slices():
    values = tf.constant([[1.0, 2.0]]) * (RANK + 1)
    slices = tf.IndexedSlices(values, tf.constant([RANK % 3]), dense_shape=tf.constant([3, 2]))
    out = bf.allreduce(slices, average=True)
    assert isinstance(out, tf.IndexedSlices)
    expected = np.zeros((3, 2))
    for r in range(SIZE):
        expected[r % 3] += np.array([1.0, 2.0]) * (r + 1) / SIZE
    np.testing.assert_allclose(tf.convert_to_tensor(out).numpy(), expected, rtol=1e-6)


def test_distributed_tape_with_embedding_gradient():
    table = tf.Variable(tf.ones([4, 2]))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [RANK % 4]) * (RANK + 1.0))
    grad = bf.DistributedGradientTape(tape).gradient(loss, table)
    assert isinstance(grad, tf.IndexedSlices)
    expected = np.zeros((4, 2))
    for r in range(SIZE):
        expected[r % 4] += (r + 1.0) / SIZE
    np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(), expected, rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [RANK % 4]) * (RANK + 1.0))
    dense = bf.DistributedGradientTape(tape, sparse_as_dense=True).gradient(loss, table)
    assert isinstance(dense, tf.Tensor)
    np.testing.assert_allclose(dense.numpy(), expected, rtol=1e-6)


# ---- errors ---------------------------------------------------------------------------
def test_bool_allreduce_is_invalid():
    with pytest.raises(tf.errors.InvalidArgumentError, match="bool"):
        bf.allreduce(tf.constant([True, False]), average=False)


def test_integer_average_is_invalid():
    with pytest.raises(tf.errors.InvalidArgumentError, match="average"):
        bf.allreduce(tf.constant([1, 2]), average=True)


def test_unsupported_dtype_is_rejected():
    with pytest.raises(ValueError, match="allreduce: unsupported dtype complex128"):
        bf.allreduce(tf.constant([1 + 2j]), average=False)


REFUSED = {
    "neighbor_allreduce": ("needs a floating-point tensor", lambda bad, name: bf.neighbor_allreduce(
        tf.constant([1, 2]) if bad else tf.constant([1.0, 2.0]), name=name)),
    "allgather": ("at least one dimension", lambda bad, name: bf.allgather(
        tf.constant(1.0) if bad else tf.constant([1.0]), name=name)),
    "broadcast": ("unsupported dtype complex128", lambda bad, name: bf.broadcast(
        tf.constant([1 + 1j]) if bad else tf.constant([1.0]), 0, name=name)),
    "allreduce.unnamed": ("unsupported dtype complex128", lambda bad, name: bf.allreduce(
        tf.constant([1 + 1j]) if bad else tf.constant([1.0]))),
    "grouped_allreduce": ("grouped_allreduce: unsupported dtype complex128", lambda bad, name: bf.grouped_allreduce(
        [tf.constant([1.0]), tf.constant([1 + 1j]) if bad else tf.constant([2.0]), tf.constant([3], tf.int32)],
        name=name)),
    "grouped_allreduce.unnamed": ("unsupported dtype string", lambda bad, name: bf.grouped_allreduce(
        [tf.constant(["x"]) if bad else tf.constant([1.0]), tf.constant([2.0])])),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(REFUSED))
def test_input_refused_on_one_rank_fails_the_op_everywhere(case, mode):
    """Rank 0's input is refused by its own checks before anything reaches the
    core; the other ranks' op must fail too (naming rank 0 and why) instead of
    waiting for rank 0, and the next op works. An unnamed op keeps the
    automatic names aligned (the name is taken before the checks)."""
    if SIZE == 1:
        pytest.skip("needs a rank whose input is good")
    says, op = REFUSED[case]
    name = None if case.endswith("unnamed") else f"tf.refused.{case}.{mode}"
    # in a tf.function rank 0 refuses while tracing; the others' traced op runs
    call = (lambda bad: op(bad, name)) if mode == "eager" else tf.function(lambda bad: op(bad, name))
    if RANK == 0:
        with pytest.raises(ValueError, match=says):
            call(True)
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"refused on rank 0: ValueError: .*{says}"):
            call(False)
    assert int(bf.allreduce(tf.constant(1), average=False).numpy()) == SIZE  # unnamed: counters agree


GROUP_COUNTS = {
    "rank0_more": lambda r: 3 if r == 0 else 2,
    "even_ranks_more": lambda r: 3 if r % 2 == 0 else 2,
    "all_differ": lambda r: r + 1,
}


@pytest.mark.parametrize("mixed", [False, True], ids=["one_dtype", "two_dtypes"])
@pytest.mark.parametrize("counts", list(GROUP_COUNTS))
def test_grouped_allreduce_count_mismatch_fails_every_rank(counts, mixed):
    """Ranks that pass different numbers of tensors to one grouped_allreduce:
    every rank's op fails naming who passed how many; the members that only
    the ranks with more tensors submit fail too (before: those waited forever
    for the others). The same name then works with agreeing counts."""
    if SIZE == 1:
        pytest.skip("needs two ranks to disagree")
    name = f"tf.group_count.{counts}.{mixed}"
    n = GROUP_COUNTS[counts](RANK)
    dtypes = [tf.float32 if i % 2 == 0 or not mixed else tf.float64 for i in range(n)]
    tensors = [tf.ones([2], d) for d in dtypes]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"ranks disagree on the number of tensors in the grouped allreduce: ranks? \[.*\] ha(s|ve) "):
        bf.grouped_allreduce(tensors, average=False, name=name)
    outs = bf.grouped_allreduce([tf.ones([2]), tf.ones([2], tf.float64 if mixed else tf.float32)], average=False,
                                name=name)
    for out in outs:
        np.testing.assert_array_equal(out.numpy(), [SIZE, SIZE])
    assert int(bf.allreduce(tf.constant(1), average=False).numpy()) == SIZE


def test_bad_root_rank():
    with pytest.raises(tf.errors.InvalidArgumentError, match="root_rank"):
        bf.broadcast(tf.constant([1.0]), SIZE + 3)
    with pytest.raises(ValueError):
        bf.broadcast(tf.constant([1.0]), "0")


def test_numpy_integer_root():
    """A numpy integer root (e.g. from np.argmax) works, as in BlueFog 0.3."""
    root = np.int64(SIZE - 1)
    out = bf.broadcast(rank_input(RANK, (2,), tf.float32), root, name="tf.test.np_root")
    assert_equal(out, rank_input(SIZE - 1, (2,), tf.float32))


@pytest.mark.parametrize("mode", MODES)
def test_shape_mismatch_raises_on_every_rank(mode):
    if SIZE == 1:
        pytest.skip("needs two ranks to disagree")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"tf\.test\.mismatch.*shape"):
        run(mode, lambda x: bf.allreduce(x, name=f"tf.test.mismatch.{mode}"), tf.ones([RANK + 1]))
    # The queue is still healthy afterwards.
    assert int(bf.allreduce(tf.constant(1), average=False).numpy()) == SIZE


def test_root_and_dtype_mismatch():
    if SIZE == 1:
        pytest.skip("needs two ranks to disagree")
    with pytest.raises(tf.errors.InvalidArgumentError, match="root_rank"):
        bf.broadcast(tf.constant([1.0]), RANK, name="tf.test.root_mismatch")
    dtype = tf.float32 if RANK == 0 else tf.float64
    with pytest.raises(tf.errors.InvalidArgumentError, match="dtype"):
        bf.allgather(tf.ones([1], dtype), name="tf.test.dtype_mismatch")


@pytest.mark.parametrize("build", ["allreduce", "neighbor_allreduce", "keras_fit"])
def test_xla_compiled_ops_are_refused_with_the_remedy(build):
    # BlueFog's kernels have no XLA form. Keras compiles the train step with
    # XLA by default on a machine with a GPU (jit_compile="auto").
    if build == "keras_fit":
        import keras  # pylint: disable=import-outside-toplevel
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=bf.DistributedOptimizer(keras.optimizers.SGD(0.1)), loss="mse", jit_compile=True)
        x = np.ones((4, 2), np.float32)

        def call():
            model.fit(x, x[:, :1], epochs=1, batch_size=4, verbose=0)
    else:
        op = getattr(bf, build)
        call = tf.function(lambda t: op(t), jit_compile=True)  # pylint: disable=unnecessary-lambda
        call = (lambda f: lambda: f(tf.ones([2])))(call)
    with pytest.raises(ValueError, match="cannot be compiled with XLA .*jit_compile=False"):
        call()
    # Refused while tracing, on every rank alike: nothing was submitted, the next op works.
    assert float(bf.allreduce(tf.constant(1.0), average=False, name="tf.test.after_xla").numpy()) == SIZE


def test_0_3_util_helpers_exist():
    from bluefog.tensorflow import util  # pylint: disable=import-outside-toplevel
    assert util._has_eager is True  # pylint: disable=protected-access
    assert util._executing_eagerly() is True  # pylint: disable=protected-access
    assert not bool(tf.function(util._executing_eagerly)())  # (False while tracing)  # pylint: disable=protected-access


def test_not_initialized_raises_then_reinit():
    """Runs last: shuts BlueFog down on every rank, checks the error, starts again."""
    bf.shutdown()
    with pytest.raises(tf.errors.FailedPreconditionError, match="init"):
        bf.allreduce(tf.constant([1.0]))
    bf.init()
    assert float(bf.allreduce(tf.constant(2.0), average=False).numpy()) == 2.0 * SIZE
