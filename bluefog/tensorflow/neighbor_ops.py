"""Neighbor ops over the virtual topology for TensorFlow: neighbor_allreduce,
neighbor_allgather, hierarchical_neighbor_allreduce (eager and tf.function),
each with a gradient.

The core only exchanges tensors (a rank receives what its sources sent, each
scaled by the sender's weight for it); the weighting lives here. Every rank
must call each op (a rank with nothing to exchange passes empty lists); the
core checks that the send/receive lists of all ranks mirror each other, and a
mismatch raises tf.errors.InvalidArgumentError on every rank.

Gradients are the transposed exchanges. For neighbor_allreduce,
y_i = s_i x_i + sum_{j in src(i)} w_ij d_ji x_j, so
dL/dx_j = s_j g_j + sum_{i in dst(j)} d_ji w_ij g_i: every rank sends its
upstream gradient g_i, scaled by w_ij, to each of its sources j, and each rank
combines what it receives from its destinations with its own send weights
d_ji (1 for the static topology). This holds for static, weighted and dynamic
exchanges alike.
"""
from typing import Dict, List, Optional, Union

import tensorflow as tf

from bluefog.common.basics import get_basics
from bluefog.common import neighbor_weights
from bluefog.tensorflow.mpi_ops import _ops, allreduce, as_tensor, op_name, refusal

_basics = get_basics()
_FLOAT_TYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

Weights = Union[Dict[int, float], List[int], None]


def _check_float(tensor, op: str):
    if tensor.dtype not in _FLOAT_TYPES:
        raise ValueError(f"{op}: needs a floating-point tensor (float16, bfloat16, float32, float64), "
                         f"got {tensor.dtype.name}")


def _exchange(tensor, src_ranks, dst_ranks, dst_weights, gather: bool, name: str):
    return _ops.bluefog_neighbor_exchange(
        tensor, tf.constant(src_ranks, tf.int32, shape=[len(src_ranks)]),
        tf.constant(dst_ranks, tf.int32, shape=[len(dst_ranks)]),
        tf.constant(dst_weights, tf.float64, shape=[len(dst_weights)]), name, gather=gather)


def _combine(x, received, self_weight: float, weights: List[float]):
    """self_weight * x + sum_k weights[k] * received[k] (float32 math for 16-bit types)."""
    compute = tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype
    result = tf.cast(x, compute) * tf.constant(self_weight, compute)
    if weights:
        result += tf.tensordot(tf.constant(weights, dtype=compute), tf.cast(received, compute), axes=1)
    else:
        # Nothing received, but this rank's sends are part of the exchange:
        # without a dependency on it, graph pruning would drop it here (and
        # the receivers would wait forever).
        with tf.control_dependencies([received]):
            result = tf.identity(result)
    return tf.cast(result, x.dtype)


def weighted_exchange(tensor, ex: neighbor_weights.Exchange, name: str):
    """The combine of a resolved exchange, differentiable (see module docstring)."""

    @tf.custom_gradient
    def forward(x):
        received = _exchange(x, ex.src_ranks, ex.dst_ranks, ex.dst_weights, False, name)
        y = _combine(x, received, ex.self_weight, ex.src_weights)

        def backward(dy):
            back = _exchange(dy, ex.dst_ranks, ex.src_ranks, ex.src_weights, False, name + ".grad")
            send_weights = ex.dst_weights or [1.0] * len(ex.dst_ranks)
            return _combine(dy, back, ex.self_weight, send_weights)

        return y, backward

    return forward(tensor)


def neighbor_allreduce(tensor, *, self_weight: Optional[float] = None,
                       src_weights: Optional[Dict[int, float]] = None, dst_weights: Weights = None,
                       enable_topo_check: bool = True, name: Optional[str] = None):
    """Weighted average with neighbors: self_weight * x + sum_j src_weights[j] * x_j.

    Without weights: the topology's receive weights if it is weighted, else
    1/(in-degree + 1) for self and each in-neighbor. With dst_weights (a dict
    rank -> weight, or a list meaning weight 1) the exchange is dynamic: this
    rank sends only to those ranks, scaled by the weight, and receives from the
    keys of src_weights (self_weight and src_weights are then required).
    float16/bfloat16/float32/float64. The send/receive lists of all ranks are
    always checked (enable_topo_check is accepted for compatibility).
    Weights are resolved when the op is built (traced, in a tf.function).
    """
    full_name = op_name(name, "neighbor_allreduce")
    with refusal("neighbor_allreduce", full_name):
        tensor = as_tensor(tensor, "neighbor_allreduce")
        _check_float(tensor, "neighbor_allreduce")
        ex = neighbor_weights.resolve(_basics, "neighbor_allreduce", self_weight, src_weights, dst_weights)
    return weighted_exchange(tensor, ex, full_name)


def neighbor_allgather(tensor, *, src_ranks: Optional[List[int]] = None, dst_ranks: Optional[List[int]] = None,
                       enable_topo_check: bool = True, name: Optional[str] = None):
    """Concatenation along dim 0 of the in-neighbors' tensors (self excluded), in
    in_neighbor_ranks() order, or in src_ranks order for a dynamic exchange
    (src_ranks and dst_ranks given together). First dimensions may differ.

    Gradient: each source gets back, summed over its destinations, the slice of
    their upstream gradient that holds its tensor (three transposed exchanges:
    sizes, offsets, gradients)."""
    op = "neighbor_allgather"
    name = op_name(name, op)
    _basics.require_initialized(op, name)
    with refusal(op, name):
        if (src_ranks is None) != (dst_ranks is None):
            raise ValueError(f"{op}: give src_ranks and dst_ranks together (or neither, for the topology)")
        if src_ranks is None:
            src_ranks, dst_ranks = _basics.in_neighbor_ranks(), _basics.out_neighbor_ranks()
        src = neighbor_weights.check_ranks(src_ranks, "src_ranks", op)
        dst = neighbor_weights.check_ranks(dst_ranks, "dst_ranks", op)
        tensor = as_tensor(tensor, op)
        if tensor.shape.rank == 0:
            raise ValueError(f"{op}: needs a tensor with at least one dimension")
    size, rank = _basics.size(), _basics.rank()

    @tf.custom_gradient
    def forward(x):
        y = _exchange(x, src, dst, [], True, name)

        def backward(dy):
            # 1. the first dims of my sources, 2. where each source's slice
            #    starts in my dy (a vector indexed by rank, plus my total),
            #    sent back to my sources, 3. my dy, sent back to my sources.
            sizes = _exchange(tf.shape(x, out_type=tf.int64)[:1], src, dst, [], True, name + ".grad.sizes")
            offsets = tf.cumsum(sizes, exclusive=True)
            meta = tf.tensor_scatter_nd_update(tf.fill([size + 1], tf.constant(-1, tf.int64)),
                                               tf.constant([[r] for r in src] + [[size]], tf.int64, [len(src) + 1, 1]),
                                               tf.concat([offsets, [tf.reduce_sum(sizes)]], 0))
            metas = tf.reshape(_exchange(meta, dst, src, [], True, name + ".grad.meta"), [-1, size + 1])
            gathered = _exchange(dy, dst, src, [], True, name + ".grad")
            starts = tf.cumsum(metas[:, size], exclusive=True) + metas[:, rank]
            n = tf.shape(x, out_type=tf.int64)[0]
            index = tf.reshape(starts[:, None] + tf.range(n)[None, :], [-1])
            pieces = tf.gather(gathered, index)
            pieces = tf.reshape(pieces, tf.concat([[len(dst), n], tf.shape(x, out_type=tf.int64)[1:]], 0))
            return tf.reduce_sum(pieces, axis=0)

        return y, backward

    return forward(tensor)


def hierarchical_neighbor_allreduce(tensor, *, self_weight: Optional[float] = None,
                                    src_machine_weights: Optional[Dict[int, float]] = None,
                                    dst_machine_weights: Weights = None, enable_topo_check: bool = False,
                                    name: Optional[str] = None):
    """Neighbor averaging between machines: the tensor is averaged inside each
    machine, each machine's local-rank-0 process combines with its neighbor
    machines (machine topology weights, uniform, or the given machine weights),
    and the result is shared inside the machine. Differentiable (built from
    differentiable steps)."""
    op = "hierarchical_neighbor_allreduce"
    base = op_name(name, op)
    _basics.require_initialized(op, base)
    with refusal("allreduce", base + ".local"):  # the first step: a machine-local allreduce
        tensor = as_tensor(tensor, op)
        _check_float(tensor, op)
        ex = neighbor_weights.resolve_machines(_basics, op, self_weight, src_machine_weights,
                                               dst_machine_weights)
    local_mean = allreduce(tensor, average=True, is_hierarchical_local=True,
                           name=base + ".local")
    combined = weighted_exchange(local_mean, ex, base + ".exchange")
    # Only the leaders' results count; the others add zeros (selected, not
    # multiplied by 0: 0 * inf would be nan), and their gradient still flows
    # (as zeros) through the exchange, which every rank's backward must run.
    leader = tf.constant(_basics.local_rank() == 0)
    with tf.control_dependencies([combined]):  # (the exchange runs on every rank: see _combine)
        combined = tf.where(leader, combined, tf.zeros_like(combined))
    return allreduce(combined, average=False, is_hierarchical_local=True, name=base + ".spread")
