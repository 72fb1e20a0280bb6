"""Data-parallel training helpers for TensorFlow: broadcast_variables,
allreduce_gradients and DistributedGradientTape."""
from typing import Optional

import tensorflow as tf

from bluefog.tensorflow.mpi_ops import allreduce, broadcast, grouped_allreduce, op_name, sub_name


def broadcast_variables(variables, root_rank: int, name: Optional[str] = None):
    """Assigns root_rank's value to each variable (tf.Variable or Keras 3
    Variable) on every rank; every rank must pass its variables in the same
    order. Returns None eagerly and inside tf.function; in a tf.compat.v1
    graph, the op that runs the assignments."""
    variables = list(variables)
    base = op_name(name, "broadcast_variables")
    assigns = []
    for i, v in enumerate(variables):
        value = broadcast(tf.convert_to_tensor(v), root_rank, name=sub_name(base, f".{i}") or None)
        assigns.append(v.assign(value))
    if tf.executing_eagerly() or tf.inside_function():
        return None  # eager: done; tf.function: automatic control dependencies run them
    return tf.group(*[a for a in assigns if a is not None])


def allreduce_gradients(gradients, average: bool = True, sparse_as_dense: bool = False,
                        name: Optional[str] = None):
    """Allreduces a (possibly nested) structure of gradients in one grouped op.

    None stays None. tf.IndexedSlices are allgathered (see allreduce), or
    converted to dense tensors first with sparse_as_dense=True."""
    flat = tf.nest.flatten(gradients, expand_composites=False)
    base = op_name(name, "allreduce_gradients")
    dense_idx, dense = [], []
    out = list(flat)
    for i, g in enumerate(flat):
        if g is None:
            continue
        if isinstance(g, tf.IndexedSlices):
            if not sparse_as_dense:
                out[i] = allreduce(g, average=average, name=sub_name(base, f".sparse.{i}") or None)
                continue
            g = tf.convert_to_tensor(g)
        dense_idx.append(i)
        dense.append(g)
    if dense:
        for i, r in zip(dense_idx, grouped_allreduce(dense, average=average, name=base or None)):
            out[i] = r
    return tf.nest.pack_sequence_as(gradients, out, expand_composites=False)


class DistributedGradientTape:
    """Wraps a tf.GradientTape so that gradient() returns gradients averaged
    (or summed, average=False) over all ranks.

        with tf.GradientTape() as tape:
            loss = ...
        tape = bf.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)

    It can also be entered itself: `with bf.DistributedGradientTape(tf.GradientTape()) as tape:`.
    Every other attribute (watch, stop_recording, jacobian, ...) is the tape's.
    """

    def __init__(self, gradtape: tf.GradientTape, average: bool = True, sparse_as_dense: bool = False):
        if not isinstance(gradtape, tf.GradientTape):
            raise TypeError(f"DistributedGradientTape expects a tf.GradientTape, got {type(gradtape).__name__}")
        self._tape = gradtape
        self._average = average
        self._sparse_as_dense = sparse_as_dense

    def __enter__(self):
        self._tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._tape.__exit__(*exc)

    def __getattr__(self, attr):
        return getattr(self._tape, attr)

    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        """The tape's gradients, allreduced across ranks (see allreduce_gradients)."""
        grads = self._tape.gradient(target, sources, output_gradients=output_gradients,
                                    unconnected_gradients=unconnected_gradients)
        return allreduce_gradients(grads, average=self._average, sparse_as_dense=self._sparse_as_dense)
