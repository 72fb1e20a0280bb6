"""bluefog.tensorflow training helpers on every rank: broadcast_variables,
DistributedGradientTape, DistributedOptimizer with a Keras 3 optimizer (custom
loop and model.fit) and with a tf.compat.v1 optimizer (eager minimize and a v1
graph in a Session).

Each rank trains on its own shard of equal size. Averaging the per-shard mean
gradients equals the full-batch mean gradient, so after a few steps every
rank's weights must equal those of a plain, non-distributed model trained here
on all the shards at once (and hence be identical across ranks).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402

bf.init()
SIZE = bf.size()
RANK = bf.rank()
ROWS = 8


def shard(r):
    """Rank r's data: a linear target with a rank-dependent input distribution."""
    rng = np.random.RandomState(100 + r)
    x = rng.standard_normal((ROWS, 3)).astype(np.float32) + r
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    return x, y


ALL_X = np.concatenate([shard(r)[0] for r in range(SIZE)])
ALL_Y = np.concatenate([shard(r)[1] for r in range(SIZE)])
X, Y = shard(RANK)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])


def assert_same_on_all_ranks(arrays):
    for a in arrays:
        gathered = bf.allgather(tf.constant(a)[None]).numpy()
        for r in range(SIZE):
            np.testing.assert_array_equal(gathered[r], a)


def assert_weights_close(model, reference, rtol=1e-5, atol=1e-6):
    for w, ref in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(w, ref, rtol=rtol, atol=atol)


# ---- broadcast_variables -------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_broadcast_variables(mode):
    root = SIZE - 1
    variables = [tf.Variable(tf.fill([2, 3], float(RANK))), tf.Variable(RANK + 10), tf.Variable([RANK % 2 == 0])]
    if mode == "eager":
        assert bf.broadcast_variables(variables, root) is None
    else:
        tf.function(lambda: bf.broadcast_variables(variables, root))()
    np.testing.assert_array_equal(variables[0].numpy(), np.full([2, 3], float(root)))
    assert int(variables[1].numpy()) == root + 10
    assert bool(variables[2].numpy()[0]) == (root % 2 == 0)


def test_broadcast_keras_variables():
    model = make_model(seed=RANK)
    bf.broadcast_variables(model.variables, 0)
    reference = make_model(seed=0)
    assert_weights_close(model, reference, rtol=0, atol=0)


# ---- DistributedGradientTape ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_distributed_gradient_tape_averages(mode):
    w = tf.Variable([[0.5], [0.25], [-1.0]])

    def grads(x, y, distributed):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.matmul(x, w) - y))
        if distributed:
            tape = bf.DistributedGradientTape(tape)
        return tape.gradient(loss, [w])[0]

    run = (lambda f, *a: f(*a)) if mode == "eager" else (lambda f, *a: tf.function(f)(*a))
    grad = run(lambda x, y: grads(x, y, True), X, Y)
    expected = np.mean([grads(*shard(r), False).numpy() for r in range(SIZE)], axis=0)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5)
    summed = bf.DistributedGradientTape(tf.GradientTape(), average=False)
    with summed as tape:
        loss = tf.reduce_sum(w)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), np.full((3, 1), float(SIZE)))


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_gradient_none_on_some_ranks_counts_as_zero(mode):
    """A variable that takes no part in one rank's loss (a branch that rank did
    not take) has a None gradient there. Each variable must still be averaged
    with itself: c's gradient is 10 everywhere, and b's is the mean of 100 on
    the ranks that used it and 0 on the others. (The gradients used to be
    paired by their place among the non-None ones: c's averaged with b's.)"""
    a, b, c = tf.Variable([1.0, 1.0]), tf.Variable([1.0, 1.0]), tf.Variable([1.0, 1.0])
    uses_b = RANK % 2 == 1

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(a) + tf.reduce_sum(c * 10.0)
            if uses_b:  # decided per rank, at trace time too
                loss += tf.reduce_sum(b * 100.0)
        return bf.DistributedGradientTape(tape).gradient(loss, [a, b, c])

    ga, gb, gc = grads() if mode == "eager" else tf.function(grads)()
    users = sum(1 for r in range(SIZE) if r % 2 == 1)
    np.testing.assert_allclose(ga.numpy(), [1.0, 1.0])
    np.testing.assert_allclose(gb.numpy(), [100.0 * users / SIZE] * 2)
    np.testing.assert_allclose(gc.numpy(), [10.0, 10.0])


def test_allreduce_gradients_none_places_differ_never_mixes_variables():
    """Without the sources, None stays None; ranks whose None places differ
    submit differently named ops rather than averaging one variable's
    gradient with another's (checked on the names: matching ops would hang)."""
    grads = [tf.ones([2]), None, tf.ones([2]) * 10.0]
    out = bf.allreduce_gradients(grads, name="tf.nones.same")
    assert out[1] is None
    np.testing.assert_allclose(out[2].numpy(), [10.0, 10.0])
    seen = []
    real = bf.mpi_ops.grouped_allreduce

    def spy(tensors, average=True, name=None):
        seen.append(name)
        return list(tensors)

    bf.training.grouped_allreduce = spy
    try:
        bf.allreduce_gradients([tf.ones([2]), None, tf.ones([2])], name="tf.nones")
        bf.allreduce_gradients([tf.ones([2]), tf.ones([2]), None], name="tf.nones")
        bf.allreduce_gradients([tf.ones([2])] * 3, name="tf.nones")
    finally:
        bf.training.grouped_allreduce = real
    assert len(set(seen)) == 3 and seen[2] == "tf.nones", seen


def test_device_argument_of_bluefog_0_3_is_accepted():
    """BlueFog 0.3 signatures: allreduce(tensor, average, name, device),
    DistributedOptimizer(optimizer, name, use_locking, device),
    DistributedGradientTape(gradtape, device). A positional device must not
    be taken for another option (it used to turn averaging off)."""
    out = bf.allreduce(tf.constant([1.0]), True, "tf.dev.ar", "")
    np.testing.assert_allclose(out.numpy(), [1.0])
    w = tf.Variable([1.0])
    opt = bf.DistributedOptimizer(tf.compat.v1.train.GradientDescentOptimizer(1.0), "dev", False, "")
    opt.minimize(lambda: tf.reduce_sum(w * float(RANK + 1)), var_list=[w])
    np.testing.assert_allclose(w.numpy(), [1.0 - (SIZE + 1) / 2.0], rtol=1e-6)  # averaged, not summed
    with bf.DistributedGradientTape(tf.GradientTape(), "") as tape:
        loss = tf.reduce_sum(w * float(RANK + 1))
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), [(SIZE + 1) / 2.0], rtol=1e-6)
    kopt = bf.DistributedOptimizer(keras.optimizers.SGD(0.1), device="/cpu:0")
    assert isinstance(kopt, keras.optimizers.SGD)
    with pytest.raises(TypeError):
        bf.DistributedGradientTape(tf.GradientTape(), False)  # average is keyword-only now


def test_distributed_gradient_tape_type_check_and_copy():
    with pytest.raises(TypeError):
        bf.DistributedGradientTape(object())
    import copy  # pylint: disable=import-outside-toplevel
    w = tf.Variable([1.0])
    with tf.GradientTape(persistent=True) as inner:
        loss = tf.reduce_sum(w * float(RANK + 1))
    tape = copy.copy(bf.DistributedGradientTape(inner))  # (looked for _tape through __getattr__ for good)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), [(SIZE + 1) / 2.0], rtol=1e-6)


def test_distributed_gradient_tape_is_a_tape():
    """A tf.GradientTape, as in 0.3 (isinstance checks in user code hold), whose
    other methods are the wrapped tape's: watch, stop_recording, jacobian,
    watched_variables, reset."""
    x = tf.constant([1.0, 2.0])
    v = tf.Variable([3.0])
    with bf.DistributedGradientTape(tf.GradientTape(persistent=True)) as tape:
        assert isinstance(tape, tf.GradientTape)
        tape.watch(x)
        y = x * x * float(RANK + 1) + v
        with tape.stop_recording():
            z = x * v  # not recorded
    assert [u.name for u in tape.watched_variables()] == [v.name]
    np.testing.assert_allclose(tape.jacobian(y, x).numpy(), np.diag(2 * x.numpy() * (RANK + 1)))  # local
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), 2 * x.numpy() * (SIZE + 1) / 2.0, rtol=1e-6)
    # z was not recorded: no gradient on any rank, so zeros (a recorded z would give sum(x) = 3)
    np.testing.assert_array_equal(tape.gradient(z, v).numpy(), [0.0])
    with tape:
        tape.reset()  # (inside the recording block, as TensorFlow requires)
        assert not tape.watched_variables()
        y2 = tf.reduce_sum(v * float(RANK + 1))
    np.testing.assert_allclose(tape.gradient(y2, v).numpy(), [(SIZE + 1) / 2.0], rtol=1e-6)


# ---- Keras 3 optimizers ------------------------------------------------------------------
def test_keras_optimizer_wrapper_keeps_class_and_config():
    opt = bf.DistributedOptimizer(keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8))
    assert isinstance(opt, keras.optimizers.Adam)
    assert opt.get_config()["beta_1"] == pytest.approx(0.8)
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.01)
    with pytest.raises(TypeError):
        bf.DistributedOptimizer("sgd")


def test_wrapping_a_distributed_optimizer_again_reduces_once():
    """(Before: a wrapper of the wrapper allreduced twice; with average=False
    the gradients came out size**2 times the local ones.)"""
    v = tf.Variable([1.0, 1.0])
    opt = bf.DistributedOptimizer(bf.DistributedOptimizer(keras.optimizers.SGD(1.0), average=False), average=False)
    assert type(opt).__name__ == "DistributedSGD"
    opt.apply([tf.constant([float(RANK + 1), 0.0])], [v])
    np.testing.assert_allclose(v.numpy(), [1.0 - SIZE * (SIZE + 1) / 2, 1.0])
    legacy = bf.DistributedOptimizer(bf.DistributedOptimizer(tf.compat.v1.train.GradientDescentOptimizer(1.0)))
    assert not isinstance(legacy._optimizer, type(legacy))  # pylint: disable=protected-access


def test_keras_custom_loop_matches_full_batch():
    model, reference = make_model(), make_model()
    opt = bf.DistributedOptimizer(keras.optimizers.SGD(learning_rate=0.1, momentum=0.5))
    ref_opt = keras.optimizers.SGD(learning_rate=0.1, momentum=0.5)
    loss_fn = keras.losses.MeanSquaredError()

    def make_step(m, o):
        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, m(x))
            o.apply_gradients(zip(tape.gradient(loss, m.trainable_variables), m.trainable_variables))
        return step

    step, ref_step = make_step(model, opt), make_step(reference, ref_opt)
    for _ in range(3):
        step(X, Y)
        ref_step(ALL_X, ALL_Y)
    assert_weights_close(model, reference)
    assert_same_on_all_ranks(model.get_weights())


@pytest.mark.parametrize("make_opt", [lambda: keras.optimizers.Adam(0.05), lambda: keras.optimizers.SGD(0.1)],
                         ids=["adam", "sgd"])
def test_keras_model_fit_matches_full_batch(make_opt):
    model, reference = make_model(), make_model()
    model.compile(optimizer=bf.DistributedOptimizer(make_opt()), loss="mse")
    reference.compile(optimizer=make_opt(), loss="mse")
    model.fit(X, Y, batch_size=ROWS, epochs=3, shuffle=False, verbose=0)
    reference.fit(ALL_X, ALL_Y, batch_size=ROWS * SIZE, epochs=3, shuffle=False, verbose=0)
    assert_weights_close(model, reference)
    assert_same_on_all_ranks(model.get_weights())


def test_keras_model_with_distributed_optimizer_saves_and_loads(tmp_path_factory):
    """A model compiled with a DistributedOptimizer saves and loads again with
    keras.models.load_model (it used to fail: the optimizer class was not
    found), keeping its distribution settings, and trains on as before."""
    path = str(tmp_path_factory.mktemp(f"rank{RANK}") / "model.keras")
    model = make_model()
    model.compile(optimizer=bf.DistributedOptimizer(keras.optimizers.Adam(0.05), average=False), loss="mse")
    model.fit(X, Y, batch_size=ROWS, epochs=1, shuffle=False, verbose=0)
    model.save(path)
    loaded = keras.models.load_model(path)
    opt = loaded.optimizer
    assert type(opt).__name__ == "DistributedAdam" and isinstance(opt, keras.optimizers.Adam)
    assert opt.get_config()["bluefog_average"] is False
    assert_weights_close(loaded, model, rtol=0, atol=0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config()["bluefog_average"] is False
    # Both go on training in step: the loaded optimizer still sums the gradients over the ranks.
    model.fit(X, Y, batch_size=ROWS, epochs=1, shuffle=False, verbose=0)
    loaded.fit(X, Y, batch_size=ROWS, epochs=1, shuffle=False, verbose=0)
    assert_weights_close(loaded, model)
    assert_same_on_all_ranks(loaded.get_weights())


def test_mixed_precision_overflow_on_one_rank_does_not_hang():
    """Under mixed_float16, compile puts the optimizer in a LossScaleOptimizer
    that skips a step whose gradients are not finite. When only rank 0's batch
    overflows, every rank must skip that step together (rank 0 used to skip the
    allreduce the others were waiting in: a hang)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1, dtype="float32")])
        x, y = shard(RANK)
        x = x.copy()
        if RANK == 0:
            x[0] = 1e4  # overflows float16 in the first batch on rank 0 only
        model.compile(optimizer=bf.DistributedOptimizer(keras.optimizers.SGD(0.001)), loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        scale = float(model.optimizer.dynamic_scale.numpy())
        assert_same_on_all_ranks([np.array([scale], np.float32)] + model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(policy)


@pytest.mark.parametrize("how", ["policy_after_wrapping", "loss_scale_outside"])
def test_loss_scale_optimizer_outside_the_wrapper_is_refused(how):
    """A LossScaleOptimizer around the distributed wrapper checks each rank's own
    gradients: a rank whose batch overflowed would skip the allreduce the others
    wait in (a hang). It is refused on every rank with a ValueError that says
    how to set it up instead."""
    policy = keras.mixed_precision.global_policy()
    try:
        if how == "policy_after_wrapping":
            opt = bf.DistributedOptimizer(keras.optimizers.SGD(0.001))
            keras.mixed_precision.set_global_policy("mixed_float16")  # compile then wraps opt
        else:
            keras.mixed_precision.set_global_policy("mixed_float16")
            opt = keras.optimizers.LossScaleOptimizer(bf.DistributedOptimizer(keras.optimizers.SGD(0.001)))
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1, dtype="float32")])
        x, y = shard(RANK)
        x = x.copy()
        if RANK == 0:
            x[0] = 1e4
        model.compile(optimizer=opt, loss="mse")
        with pytest.raises(ValueError, match="inner optimizer of a LossScaleOptimizer.*set_global_policy"):
            model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    # the job goes on
    assert int(bf.allreduce(tf.constant(1), average=False).numpy()) == SIZE


# ---- tf.compat.v1 optimizers -------------------------------------------------------------
def linear_loss(w, b, x, y):
    return tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))


# (atol: float32 sums taken in another order differ by ~1e-8 near zero)
def test_legacy_optimizer_eager_minimize():
    w0 = np.array([[0.1], [0.2], [0.3]], np.float32)
    w, b = tf.Variable(w0), tf.Variable([0.0])
    ref_w, ref_b = tf.Variable(w0), tf.Variable([0.0])
    opt = bf.DistributedOptimizer(tf.compat.v1.train.MomentumOptimizer(0.05, momentum=0.9))
    assert isinstance(opt, tf.compat.v1.train.Optimizer)
    ref = tf.compat.v1.train.MomentumOptimizer(0.05, momentum=0.9)
    for _ in range(3):
        opt.minimize(lambda: linear_loss(w, b, X, Y), var_list=[w, b])
        ref.minimize(lambda: linear_loss(ref_w, ref_b, ALL_X, ALL_Y), var_list=[ref_w, ref_b])
    np.testing.assert_allclose(w.numpy(), ref_w.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), ref_b.numpy(), rtol=1e-5, atol=1e-6)
    assert_same_on_all_ranks([w.numpy(), b.numpy()])


def test_legacy_optimizer_in_v1_graph_session():
    """A tf.compat.v1 graph: unnamed ops take graph-unique names when built."""
    graph = tf.Graph()
    with graph.as_default():
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([[0.1], [0.2], [0.3]]), use_resource=True)
        b = tf.compat.v1.get_variable("b", initializer=tf.constant([0.0]), use_resource=True)
        x, y = tf.constant(X), tf.constant(Y)
        opt = bf.DistributedOptimizer(tf.compat.v1.train.GradientDescentOptimizer(0.05))
        train = opt.minimize(linear_loss(w, b, x, y), var_list=[w, b])
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(init)
            for _ in range(3):
                sess.run(train)
            w_val, b_val = sess.run([w, b])
    ref_w, ref_b = tf.Variable([[0.1], [0.2], [0.3]]), tf.Variable([0.0])
    ref = tf.compat.v1.train.GradientDescentOptimizer(0.05)
    for _ in range(3):
        ref.minimize(lambda: linear_loss(ref_w, ref_b, ALL_X, ALL_Y), var_list=[ref_w, ref_b])
    np.testing.assert_allclose(w_val, ref_w.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_val, ref_b.numpy(), rtol=1e-5, atol=1e-6)
    assert_same_on_all_ranks([w_val, b_val])
