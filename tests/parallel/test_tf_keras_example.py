"""examples/keras_digits.py on every rank: model.fit on scikit-learn's digits,
each rank its own shard, with BlueFog's DistributedOptimizer and callbacks,
reaches >= 0.95 test accuracy with a fixed seed, and every rank ends with the
same model and the same (rank-averaged) metrics."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
import tensorflow as tf  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "examples"))
import keras_digits  # noqa: E402


def test_keras_digits_reaches_accuracy():
    accuracy, history = keras_digits.train(epochs=10, seed=42)
    assert accuracy >= 0.95, accuracy
    size = bf.size()
    everyone = bf.allgather(tf.constant([accuracy, history.history["loss"][-1]], tf.float64)[None]).numpy()
    for r in range(size):
        np.testing.assert_allclose(everyone[r], everyone[0], rtol=1e-12)
    # Warmup: from lr/size to lr over 2 epochs, then constant.
    lrs = history.history["lr"]
    np.testing.assert_allclose(lrs[1:], [0.0005 * size] * (len(lrs) - 1), rtol=1e-6)


def test_shards_of_unequal_length_do_not_hang():
    """The training set does not split evenly over the ranks; with a batch size at
    which the longer shards would need one more step, every rank must still take
    the same number of steps (a rank with an extra step waited in its gradient
    allreduce forever)."""
    size = bf.size()
    n = len(keras_digits.load_digits_split(42)[0])
    lens = [len(range(r, n, size)) for r in range(size)]
    batch = next((b for b in range(2, max(lens) + 1) if -(-max(lens) // b) != -(-min(lens) // b)), 64)
    accuracy, history = keras_digits.train(epochs=1, batch_size=batch, seed=42)
    assert 0.0 <= accuracy <= 1.0 and len(history.history["loss"]) == 1
