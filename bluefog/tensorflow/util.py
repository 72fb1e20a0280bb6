"""Private helpers kept for BlueFog 0.3 scripts that imported them
(bluefog.tensorflow.util._executing_eagerly / _has_eager)."""
import tensorflow as tf

# TensorFlow 2 always has eager execution (0.3 checked the TensorFlow version).
_has_eager = True


def _executing_eagerly() -> bool:
    """Whether TensorFlow runs ops eagerly here (not while building a graph or
    tracing a tf.function)."""
    return tf.executing_eagerly()
