"""Data-parallel training helpers for TensorFlow: broadcast_variables,
allreduce_gradients and DistributedGradientTape."""
import zlib
from typing import Optional

import tensorflow as tf

from bluefog.tensorflow.mpi_ops import _check_device, allreduce, broadcast, grouped_allreduce, op_name


def broadcast_variables(variables, root_rank: int, name: Optional[str] = None):
    """Assigns root_rank's value to each variable (tf.Variable or Keras 3
    Variable) on every rank; every rank must pass its variables in the same
    order. Returns None eagerly and inside tf.function; in a tf.compat.v1
    graph, the op that runs the assignments."""
    variables = list(variables)
    base = op_name(name, "broadcast_variables")
    assigns = []
    for i, v in enumerate(variables):
        value = broadcast(tf.convert_to_tensor(v), root_rank, name=f"{base}.{i}")
        assigns.append(v.assign(value))
    if tf.executing_eagerly() or tf.inside_function():
        return None  # eager: done; tf.function: automatic control dependencies run them
    return tf.group(*[a for a in assigns if a is not None])


def allreduce_gradients(gradients, average: bool = True, sparse_as_dense: bool = False,
                        name: Optional[str] = None, sources=None):
    """Allreduces a (possibly nested) structure of gradients in one grouped op.

    tf.IndexedSlices are allgathered (see allreduce), or converted to dense
    tensors first with sparse_as_dense=True.

    A None gradient (a source that took no part in this rank's loss) is
    reduced as zeros when `sources` (the structure of variables the gradients
    are for) is given, so ranks whose computations differ still average each
    variable with each other; the result is then a tensor on every rank (the
    average counting that rank's contribution as 0). Without `sources`, None
    stays None, and every rank must have None in the same places: ranks whose
    None places differ submit differently named ops (never one variable's
    gradient averaged with another's), and the stall warning names them."""
    flat = tf.nest.flatten(gradients, expand_composites=False)
    missing = [i for i, g in enumerate(flat) if g is None]
    if missing and sources is not None:
        variables = tf.nest.flatten(sources, expand_composites=False)
        if len(variables) != len(flat):
            raise ValueError(f"allreduce_gradients: {len(flat)} gradients but {len(variables)} sources")
        for i in missing:
            flat[i] = tf.zeros(tuple(variables[i].shape), dtype=tf.as_dtype(variables[i].dtype))
        missing = []
    base = op_name(name, "allreduce_gradients")
    # Where this rank's gradients are None is part of the ops' names.
    tag = ("none%08x" % zlib.crc32(",".join(map(str, missing)).encode())) if missing else ""
    if tag:
        base = f"{base}.{tag}"
    dense_idx, dense = [], []
    out = list(flat)
    for i, g in enumerate(flat):
        if g is None:
            continue
        if isinstance(g, tf.IndexedSlices):
            if not sparse_as_dense:
                out[i] = allreduce(g, average=average, name=f"{base}.sparse.{i}")
                continue
            g = tf.convert_to_tensor(g)
        dense_idx.append(i)
        dense.append(g)
    if dense:
        for i, r in zip(dense_idx, grouped_allreduce(dense, average=average, name=base)):
            out[i] = r
    return tf.nest.pack_sequence_as(gradients, out, expand_composites=False)


class DistributedGradientTape(tf.GradientTape):
    """Wraps a tf.GradientTape so that gradient() returns gradients averaged
    (or summed, average=False) over all ranks.

        with tf.GradientTape() as tape:
            loss = ...
        tape = bf.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)

    It can also be entered itself: `with bf.DistributedGradientTape(tf.GradientTape()) as tape:`.
    It is a tf.GradientTape (isinstance holds, as in BlueFog 0.3); every method
    but gradient() (watch, stop_recording, reset, jacobian, ...) is the wrapped
    tape's own.
    """

    def __init__(self, gradtape: tf.GradientTape, device: str = "", *, average: bool = True,
                 sparse_as_dense: bool = False):
        # (tf.GradientTape.__init__ is not run: the wrapped tape holds the state.)
        _check_device(device, "DistributedGradientTape")  # accepted for BlueFog 0.3 scripts, ignored
        if not isinstance(gradtape, tf.GradientTape):
            raise TypeError(f"DistributedGradientTape expects a tf.GradientTape, got {type(gradtape).__name__}")
        self._bf_tape = gradtape
        self._average = average
        self._sparse_as_dense = sparse_as_dense

    def __enter__(self):
        self._bf_tape.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bf_tape.__exit__(*exc)

    def __getattr__(self, attr):
        # Only for attributes this object lacks (the tape's state, e.g. _persistent).
        if attr == "_bf_tape":  # not set yet: copy.copy and pickle build the object without __init__
            raise AttributeError(attr)
        return getattr(self._bf_tape, attr)

    def watch(self, tensor):
        return self._bf_tape.watch(tensor)

    def stop_recording(self):
        return self._bf_tape.stop_recording()

    def reset(self):
        return self._bf_tape.reset()

    def watched_variables(self):
        return self._bf_tape.watched_variables()

    def jacobian(self, *args, **kwargs):
        return self._bf_tape.jacobian(*args, **kwargs)

    def batch_jacobian(self, *args, **kwargs):
        return self._bf_tape.batch_jacobian(*args, **kwargs)

    def gradient(self, target, sources, output_gradients=None,
                 unconnected_gradients=tf.UnconnectedGradients.NONE):
        """The tape's gradients, allreduced across ranks (see allreduce_gradients:
        a source without a gradient on this rank takes part as zeros, so it
        comes back as a tensor)."""
        grads = self._bf_tape.gradient(target, sources, output_gradients=output_gradients,
                                       unconnected_gradients=unconnected_gradients)
        return allreduce_gradients(grads, average=self._average, sparse_as_dense=self._sparse_as_dense,
                                   sources=sources)
