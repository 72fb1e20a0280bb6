"""Helpers shared by the TensorFlow parallel test files (import after their
importorskip of bluefog.tensorflow): running a step eagerly or as a
tf.function, and a finite-difference check of a distributed gradient."""
import numpy as np
import tensorflow as tf

import bluefog.tensorflow as bf


def run(mode, fn, *args):
    """fn(*args) eagerly ("eager") or traced by tf.function ("function")."""
    return fn(*args) if mode == "eager" else tf.function(fn)(*args)


def finite_difference_check(fn, x, c, grad, directions=2, eps=0.5):
    """Checks `grad` (this rank's block of the gradient of the global loss
    sum_ranks <c, fn(x)>) numerically: for random perturbations v of every
    rank's input, the central difference (L(x + eps v) - L(x - eps v)) / 2 eps
    must equal sum_ranks <grad, v> (exact up to rounding for linear ops)."""
    rng = np.random.RandomState(1000 + bf.rank())
    for _ in range(directions):
        v = rng.standard_normal(x.shape)
        values = []
        for sign in (1.0, -1.0):
            local = tf.reduce_sum(c * fn(x + sign * eps * tf.constant(v, x.dtype)))
            values.append(float(bf.allreduce(local, average=False).numpy()))
        predicted = float(bf.allreduce(tf.constant(np.sum(np.asarray(grad) * v)), average=False).numpy())
        np.testing.assert_allclose((values[0] - values[1]) / (2 * eps), predicted, rtol=1e-9, atol=1e-9)
