"""TensorFlow collective ops on the BlueFog core: allreduce, grouped_allreduce,
broadcast, allgather, with their gradients.

Each op works eagerly and inside tf.function (or a tf.compat.v1 graph). Ops are
named, and a name must mean the same op on every rank:

* an explicit `name` is used as given;
* eagerly, `name=None` gives "tf.<op>.<n>" from one per-process counter, which
  agrees across ranks when every rank issues the same sequence of unnamed ops;
* in a graph (tracing a tf.function), `name=None` takes a name unique in that
  graph, "[<name scope>/]bluefog.<op>[_<n>]", which is deterministic when every
  rank builds the same graph. It is fixed when the op is built, so an input
  refused on one rank while tracing is reported under it to the other ranks
  (whose op then fails instead of waiting).

Failures surface as tf.errors exceptions carrying the core's message:
InvalidArgumentError (bad input, ranks disagree), FailedPreconditionError (not
initialized), AbortedError (communication failed / shut down).
"""
import itertools
import os
from typing import Optional

import tensorflow as tf

from bluefog.common.basics import get_basics
from bluefog.common.neighbor_weights import check_root
from bluefog.common.native import find_library

_basics = get_basics()
_LIB_PATH = find_library(os.path.dirname(os.path.abspath(__file__)), "_ops")
_ops = tf.load_op_library(_LIB_PATH)

_counter = itertools.count()


try:  # (TensorFlow-internal: without it, XLA's own error about the missing kernel stands)
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla
except ImportError:  # pragma: no cover
    def _in_xla(graph):  # pylint: disable=unused-argument
        return False


def _check_not_xla(op: str):
    """ValueError when the op is being built into an XLA-compiled function:
    BlueFog's ops run on its own background thread, which XLA cannot call."""
    if not tf.executing_eagerly() and _in_xla(tf.compat.v1.get_default_graph()):
        raise ValueError(
            f"{op}: BlueFog ops cannot be compiled with XLA (a tf.function with jit_compile=True, or a Keras "
            "model compiled with jit_compile=True, which is Keras's default 'auto' on a machine with a GPU): "
            "use jit_compile=False, e.g. model.compile(..., jit_compile=False)")


def op_name(name: Optional[str], op: str) -> str:
    """The name an op is submitted under (see the module docstring). Raises
    ValueError inside an XLA-compiled function."""
    _check_not_xla(op)
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{op}: name must be a non-empty str or None, got {name!r}")
        return name
    if tf.executing_eagerly():
        return f"tf.{op}.{next(_counter)}"
    return tf.compat.v1.get_default_graph().unique_name(f"bluefog.{op}")


def sub_name(name: str, suffix: str) -> str:
    """Name of a step derived from a gradient op's name: '<name><suffix>', or ''
    (node names) for '' (see grad_name; op_name never gives '')."""
    return name + suffix if name else ""


def grad_name(op) -> str:
    """The gradient op's name: '<forward name>.grad', or '' if the forward op
    used its node name (then the gradient op uses its own node name)."""
    value = tf.get_static_value(op.inputs[-1])
    if value is None:
        return ""
    if hasattr(value, "item"):  # a graph constant comes back as a 0-d numpy array
        value = value.item()
    value = value.decode() if isinstance(value, bytes) else str(value)
    return value + ".grad" if value else ""


_TYPES = (tf.uint8, tf.int8, tf.int16, tf.int32, tf.int64, tf.float16, tf.float32, tf.float64, tf.bfloat16, tf.bool)


def refusal(op: str, name: str):
    """Context for an op's local checks: a ValueError or TypeError raised in it
    (bad input on this rank) is first reported to the other ranks under the
    op's name, so that their op fails with it instead of waiting for this rank
    (`op` is the core's kind, e.g. "allreduce"; `name` from op_name)."""
    return _basics.refusal_reported(op, name)


def as_tensor(tensor, op: str):
    """tf.convert_to_tensor, with a ValueError naming the op for a dtype the
    core does not take (instead of TensorFlow's error at op construction)."""
    t = tf.convert_to_tensor(tensor)
    if t.dtype not in _TYPES:
        raise ValueError(f"{op}: unsupported dtype {t.dtype.name}; expected one of "
                         f"{', '.join(d.name for d in _TYPES)}")
    return t


def _check_device(device, op: str):
    if not isinstance(device, str):
        raise TypeError(f"{op}: device must be a str (it is accepted and ignored), got {device!r}")


# ---- allreduce ----------------------------------------------------------------
def allreduce(tensor, average: bool = True, name: Optional[str] = None, device: str = "", *,
              is_hierarchical_local: bool = False):
    """Sum (or mean, the default) of `tensor` over all ranks (with
    is_hierarchical_local: over this machine's ranks). `device` is accepted
    for BlueFog 0.3 scripts and ignored (the op runs where TensorFlow puts it).

    uint8/int8/int16/int32/int64/float16/bfloat16/float32/float64 (average needs a float type).
    A tf.IndexedSlices (a sparse gradient) is allgathered instead: the result is
    an IndexedSlices holding every rank's values (divided by size() when
    averaging) and indices, which sums to the allreduced dense tensor.
    Gradient: the allreduce of the gradient with the same `average`.
    """
    _check_device(device, "allreduce")
    if isinstance(tensor, tf.IndexedSlices):
        if is_hierarchical_local:
            raise ValueError("allreduce: is_hierarchical_local is not supported for tf.IndexedSlices")
        return _allreduce_sparse(tensor, average, name)
    full_name = op_name(name, "allreduce")
    with refusal("allreduce", full_name):
        tensor = as_tensor(tensor, "allreduce")
    return _ops.bluefog_allreduce(tensor, full_name, average=bool(average),
                                  hierarchical_local=bool(is_hierarchical_local))


def _allreduce_sparse(slices: tf.IndexedSlices, average: bool, name: Optional[str]):
    base = op_name(name, "allreduce")
    values = allgather(slices.values, name=base + ".values")
    indices = allgather(slices.indices, name=base + ".indices")
    if average:
        values = values / tf.cast(_basics.size(), values.dtype)
    return tf.IndexedSlices(values, indices, dense_shape=slices.dense_shape)


@tf.RegisterGradient("BluefogAllreduce")
def _allreduce_grad(op, grad):
    return [_ops.bluefog_allreduce(grad, grad_name(op), average=op.get_attr("average"),
                                   hierarchical_local=op.get_attr("hierarchical_local")), None]


def grouped_allreduce(tensors, average: bool = True, name: Optional[str] = None):
    """Allreduces a list of tensors submitted together, so the core can fuse
    them into few messages (what the optimizer wrappers use). The i-th tensor
    is named '<name>.<i>'; the tensors may have different dtypes. Returns a
    list in the input order. Gradient: the grouped allreduce of the
    gradients. Ranks that pass different numbers of tensors under one name
    fail the whole group, on every rank, with an error that says who passed
    how many."""
    tensors = list(tensors)
    if not tensors:
        return []
    base = op_name(name, "grouped_allreduce")
    try:
        tensors = [as_tensor(t, "grouped_allreduce") for t in tensors]
    except Exception as err:  # bad input, or a failed GPU staging copy: tell the other ranks
        for i in range(len(tensors)):  # the other ranks' ops fail with it instead of waiting for this rank
            _basics.report_refusal("allreduce", f"{base}.{i}", err)
        raise
    return list(_ops.bluefog_grouped_allreduce(tensors, base, average=bool(average)))


@tf.RegisterGradient("BluefogGroupedAllreduce")
def _grouped_allreduce_grad(op, *grads):
    grads = [tf.zeros_like(x) if g is None else g for g, x in zip(grads, op.inputs[:-1])]
    return list(_ops.bluefog_grouped_allreduce(grads, grad_name(op), average=op.get_attr("average"))) + [None]


# ---- broadcast ----------------------------------------------------------------
def broadcast(tensor, root_rank: int, name: Optional[str] = None):
    """root_rank's `tensor` on every rank (any supported dtype, bool included).
    Gradient: the sum of the gradients over ranks on the root, zero elsewhere."""
    full_name = op_name(name, "broadcast")
    with refusal("broadcast", full_name):
        root_rank = check_root(root_rank, "broadcast")
        tensor = as_tensor(tensor, "broadcast")
    return _ops.bluefog_broadcast(tensor, full_name, root_rank=root_rank)


@tf.RegisterGradient("BluefogBroadcast")
def _broadcast_grad(op, grad):
    reduced = _ops.bluefog_allreduce(grad, grad_name(op), average=False, hierarchical_local=False)
    if _basics.rank() != op.get_attr("root_rank"):
        # Zeros here, but the allreduce must still run on this rank for the
        # root's sake: a value depending only on its shape would let graph
        # pruning drop it (a hang on the root).
        with tf.control_dependencies([reduced]):
            reduced = tf.zeros_like(grad)
    return [reduced, None]


# ---- allgather ----------------------------------------------------------------
def allgather(tensor, name: Optional[str] = None):
    """Every rank's `tensor` concatenated along dim 0 in rank order. The first
    dimension may differ between ranks; the others must match. Gradient: the
    sum of the gradients over ranks, of which each rank takes its own slice."""
    full_name = op_name(name, "allgather")
    with refusal("allgather", full_name):
        tensor = as_tensor(tensor, "allgather")
        if tensor.shape.rank == 0:
            raise ValueError("allgather: needs a tensor with at least one dimension (got a scalar)")
    return _ops.bluefog_allgather(tensor, full_name)


@tf.RegisterGradient("BluefogAllgather")
def _allgather_grad(op, grad):
    name = grad_name(op)
    x = op.inputs[0]
    sizes = _ops.bluefog_allgather(tf.shape(x, out_type=tf.int64)[:1], sub_name(name, ".sizes"))
    reduced = _ops.bluefog_allreduce(grad, name, average=False, hierarchical_local=False)
    rank = _basics.rank()
    start = tf.reduce_sum(sizes[:rank])
    return [reduced[start:start + sizes[rank]], None]


def barrier():
    """Blocks until every rank has reached the barrier."""
    _basics.barrier()
