"""bluefog.tensorflow.keras callbacks on every rank, each checked by its effect
in model.fit: BroadcastGlobalVariablesCallback (built and lazily built
models), MetricAverageCallback, LearningRateWarmupCallback and
LearningRateScheduleCallback (staircase and per batch).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402
from bluefog.tensorflow.keras import callbacks as bfc  # noqa: E402

bf.init()
SIZE = bf.size()
RANK = bf.rank()
ROWS, BATCH = 12, 4
STEPS = ROWS // BATCH


def shard(r):
    rng = np.random.RandomState(7 + r)
    x = rng.standard_normal((ROWS, 3)).astype(np.float32) * (r + 1)
    return x, (x.sum(axis=1, keepdims=True) + r).astype(np.float32)


def make_model(seed, with_input=True, dropout=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.layers.Dense(3, activation="tanh")] + ([keras.layers.Dropout(0.3)] if dropout else []) + \
        [keras.layers.Dense(1)]
    return keras.Sequential(([keras.Input((3,))] if with_input else []) + layers)


class Recorder(keras.callbacks.Callback):
    """Records the learning rate seen by every batch and the epoch logs."""

    def __init__(self):
        super().__init__()
        self.batch_lr, self.epoch_logs = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_lr.append(float(self.model.optimizer.learning_rate.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append(dict(logs))


def fit(model, callbacks, epochs=1, lr=0.0, optimizer=None):
    model.compile(optimizer=optimizer or bf.DistributedOptimizer(keras.optimizers.SGD(lr)), loss="mse")
    x, y = shard(RANK)
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def gathered(a):
    return bf.allgather(tf.constant(a)[None]).numpy()


@pytest.mark.parametrize("with_input, dropout", [(True, False), (False, False), (False, True)],
                         ids=["built", "lazy", "lazy-dropout"])
def test_broadcast_global_variables(with_input, dropout):
    """A lazily built model with a Dropout layer has a variable (its seed state)
    before its first step: the weights must still be broadcast (after the first
    batch), not just that variable."""
    root = SIZE - 1
    model = make_model(seed=RANK, with_input=with_input, dropout=dropout)
    fit(model, [bfc.BroadcastGlobalVariablesCallback(root)], lr=0.0 if with_input else 0.01)
    for w in model.get_weights():
        g = gathered(w)
        for r in range(SIZE):
            np.testing.assert_array_equal(g[r], w)
    if with_input:  # lr 0: everyone holds root's initial weights
        for w, ref in zip(model.get_weights(), make_model(seed=root).get_weights()):
            np.testing.assert_array_equal(w, ref)


def test_broadcast_when_only_the_root_built_the_model_before_fit():
    """A lazily built model that the root alone builds before fit (to restore
    weights, say): every rank must broadcast at the same moment (after the
    first batch). Before, the root broadcast at train begin while the others
    waited in their first step's gradient allreduce: a hang until the stall
    check aborted the job."""
    root = 0
    model = make_model(seed=RANK, with_input=False)
    if RANK == root:
        model(tf.zeros((1, 3)))
    fit(model, [bfc.BroadcastGlobalVariablesCallback(root)], lr=0.01)
    for w in model.get_weights():
        g = gathered(w)
        for r in range(SIZE):
            np.testing.assert_array_equal(g[r], w)


def test_resume_with_optimizer_state_restored_on_root_only(tmp_path):
    """Horovod's resume recipe: the root loads a checkpoint (its optimizer is
    built, with state), the others start fresh. Every rank must end with the
    root's model and optimizer state (this used to hang: the ranks broadcast
    different variable lists)."""
    root = 0
    path = os.path.join(str(tmp_path), "ckpt.keras")
    shared = bf.broadcast(tf.constant(np.frombuffer(path.encode().ljust(512), np.uint8)), root).numpy()
    path = bytes(shared).decode().strip()
    if RANK == root:  # a checkpoint with optimizer state (as if trained for STEPS steps)
        saved = make_model(seed=99)
        saved.compile(optimizer=bf.DistributedOptimizer(keras.optimizers.Adam(0.05)), loss="mse")
        saved.optimizer.build(saved.trainable_variables)
        saved.optimizer.iterations.assign(STEPS)
        for i, v in enumerate(saved.optimizer.variables[1:]):
            v.assign(tf.fill(v.shape, tf.cast(0.01 * (i + 1), v.dtype)))
        saved.save(path)
    bf.barrier()
    if RANK == root:
        model = keras.models.load_model(path)
        assert model.optimizer.built and int(model.optimizer.iterations.numpy()) == STEPS
        assert model.optimizer.variables[0] is model.optimizer.iterations
    else:
        model = make_model(seed=RANK)
        model.compile(optimizer=bf.DistributedOptimizer(keras.optimizers.Adam(0.05)), loss="mse")
    captured = {}

    class Capture(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:  # right after the broadcast, before any step
                captured["w"] = [w.copy() for w in self.model.get_weights()]
                captured["opt"] = [np.asarray(v.numpy()) for v in self.model.optimizer.variables]

    x, y = shard(RANK)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
              callbacks=[bfc.BroadcastGlobalVariablesCallback(root), Capture()])
    for a in captured["w"] + captured["opt"]:
        g = gathered(np.asarray(a))
        for r in range(SIZE):
            np.testing.assert_array_equal(g[r], g[root])
    assert int(np.asarray(captured["opt"][0])) == STEPS  # the root's state reached everyone
    for w in model.get_weights():
        g = gathered(w)
        for r in range(SIZE):
            np.testing.assert_array_equal(g[r], w)


def test_without_broadcast_ranks_differ():
    """The control for the test above: different seeds do give different weights."""
    if SIZE == 1:
        pytest.skip("one rank")
    model = make_model(seed=RANK)
    fit(model, [])
    g = gathered(model.get_weights()[0])
    assert not np.array_equal(g[0], g[1])


def test_metric_average():
    model = make_model(seed=0)
    recorder = Recorder()
    fit(model, [bfc.MetricAverageCallback(), recorder], lr=0.0)
    # lr 0: weights never change, so each rank's epoch loss is its shard's loss.
    local = [float(np.mean((model(shard(r)[0]).numpy() - shard(r)[1]) ** 2)) for r in range(SIZE)]
    assert recorder.epoch_logs[0]["loss"] == pytest.approx(np.mean(local), rel=1e-5)
    if SIZE > 1:
        assert abs(local[0] - local[1]) > 1e-3  # a real average of different values


def test_learning_rate_warmup():
    initial, warmup = 0.08, 2
    recorder = Recorder()
    hist = fit(make_model(seed=0), [bfc.LearningRateWarmupCallback(initial, warmup_epochs=warmup), recorder],
               epochs=3, lr=1.0)
    expected = []
    for epoch in range(3):
        for batch in range(STEPS):
            e = epoch + batch / STEPS
            expected.append(initial / SIZE * (e * (SIZE - 1) / warmup + 1) if e < warmup else initial)
    # After warmup the learning rate is initial_lr.
    expected[warmup * STEPS:] = [initial] * (3 - warmup) * STEPS
    np.testing.assert_allclose(recorder.batch_lr, expected, rtol=1e-6)
    np.testing.assert_allclose(hist.history["lr"][-1], initial, rtol=1e-6)


def test_learning_rate_schedule_staircase():
    recorder = Recorder()
    schedule = bfc.LearningRateScheduleCallback(0.1, multiplier=lambda epoch: 0.5 ** epoch, start_epoch=1,
                                                end_epoch=3)
    fit(make_model(seed=0), [schedule, recorder], epochs=4, lr=0.1)
    per_epoch = [recorder.batch_lr[e * STEPS] for e in range(4)]
    # Epoch 0 is before start_epoch (the compiled 0.1); epoch 3 keeps epoch 2's value.
    np.testing.assert_allclose(per_epoch, [0.1, 0.05, 0.025, 0.025], rtol=1e-6)
    assert all(len(set(recorder.batch_lr[e * STEPS:(e + 1) * STEPS])) == 1 for e in range(4))


def test_learning_rate_schedule_per_batch_constant_multiplier():
    recorder = Recorder()
    schedule = bfc.LearningRateScheduleCallback(0.2, multiplier=0.25, start_epoch=0, end_epoch=1, staircase=False)
    fit(make_model(seed=0), [schedule, recorder], epochs=2, lr=0.9)
    np.testing.assert_allclose(recorder.batch_lr, [0.05] * (2 * STEPS), rtol=1e-6)


def test_learning_rate_callbacks_reject_schedules():
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.9)
    opt = bf.DistributedOptimizer(keras.optimizers.SGD(sched))
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        fit(make_model(seed=0), [bfc.LearningRateScheduleCallback(0.1, 0.5)], optimizer=opt)
