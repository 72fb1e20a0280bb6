"""One process, two frontends: bluefog.torch and bluefog.tensorflow share one
core (one init, one topology, one op queue), and their ops interleave, even
when ranks submit them in different orders."""
import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
pytest.importorskip("bluefog.tensorflow", reason="BlueFog was built without TensorFlow", exc_type=ImportError)
pytest.importorskip("bluefog.torch", reason="BlueFog was built without PyTorch", exc_type=ImportError)
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

import bluefog.tensorflow as bftf  # noqa: E402
import bluefog.torch as bft  # noqa: E402
from bluefog.common import topology_util  # noqa: E402
from bluefog.common.basics import get_basics  # noqa: E402

bft.init()
SIZE = bft.size()
RANK = bft.rank()


def test_one_basics_one_init():
    assert bftf.init.__self__ is bft.init.__self__ is get_basics()
    assert bftf.is_initialized()
    assert (bftf.size(), bftf.rank(), bftf.local_size(), bftf.local_rank()) == \
        (bft.size(), bft.rank(), bft.local_size(), bft.local_rank())


def test_topology_is_shared():
    assert bft.set_topology(topology_util.RingGraph(SIZE))
    assert bftf.load_topology() is bft.load_topology()
    assert bftf.in_neighbor_ranks() == bft.in_neighbor_ranks()
    x = np.arange(3.0) + RANK
    t = bft.neighbor_allreduce(torch.tensor(x)).numpy()
    f = bftf.neighbor_allreduce(tf.constant(x)).numpy()
    np.testing.assert_allclose(f, t, rtol=1e-12)
    srcs = bftf.in_neighbor_ranks()
    expected = sum(np.arange(3.0) + s for s in srcs + [RANK]) / (len(srcs) + 1)
    np.testing.assert_allclose(f, expected, rtol=1e-12)
    assert bftf.set_topology(topology_util.ExponentialGraph(SIZE))
    assert bft.in_neighbor_ranks() == bftf.in_neighbor_ranks()


def test_interleaved_ops():
    handle = bft.allreduce_nonblocking(torch.full((4,), float(RANK)), average=False, name="mixed.torch.a")
    tf_out = bftf.allreduce(tf.fill([5], float(RANK)), average=False, name="mixed.tf.a")
    torch_out = bft.synchronize(handle)
    total = SIZE * (SIZE - 1) / 2
    np.testing.assert_array_equal(torch_out.numpy(), np.full(4, total))
    np.testing.assert_array_equal(tf_out.numpy(), np.full(5, total))


def test_ranks_submit_frameworks_in_different_orders():
    """Even ranks enqueue torch first, odd ranks TensorFlow first; the core agrees on one order."""
    results = {}

    def tf_op():
        results["tf"] = bftf.broadcast(tf.constant([RANK, 7]), 0, name="mixed.tf.b").numpy()

    def torch_op():
        results["torch"] = bft.allgather(torch.tensor([[RANK]]), name="mixed.torch.b").numpy()

    first, second = (torch_op, tf_op) if RANK % 2 == 0 else (tf_op, torch_op)
    thread = threading.Thread(target=first)
    thread.start()
    second()
    thread.join(timeout=120)
    assert not thread.is_alive()
    np.testing.assert_array_equal(results["tf"], [0, 7])
    np.testing.assert_array_equal(results["torch"], np.arange(SIZE)[:, None])


def test_tf_function_while_torch_runs():
    @tf.function
    def tf_steps(x):
        for _ in range(3):
            x = bftf.allreduce(x, average=True)
        return x

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("tf", tf_steps(tf.constant([1.0 * RANK])).numpy()))
    thread.start()
    torch_sum = sum(bft.allreduce(torch.tensor([1.0]), average=False, name=f"mixed.torch.c.{i}").item()
                    for i in range(5))
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert torch_sum == 5 * SIZE
    np.testing.assert_allclose(out["tf"], [(SIZE - 1) / 2.0])


def test_errors_in_either_frontend():
    with pytest.raises(ValueError):
        bft.allreduce(torch.tensor([True]), average=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        bftf.allreduce(tf.constant([True]), average=False)


def test_shutdown_and_reinit_from_either_frontend():
    bftf.shutdown()
    assert not get_basics().is_initialized() and not bftf.is_initialized()
    with pytest.raises(ValueError):
        bft.allreduce(torch.tensor([1.0]))
    bft.init()
    assert float(bftf.allreduce(tf.constant(1.0), average=False).numpy()) == SIZE
