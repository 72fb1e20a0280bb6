"""Ops and basics before bf.init() raise ValueError telling the user to call bf.init().

Runs in a fresh subprocess (this pytest process may have initialized BlueFog
elsewhere), with no MPI launcher variables in its environment.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPECT = r"""
def expect_value_error(label, fn):
    try:
        fn()
    except ValueError as e:
        print(label, "ValueError:", e)
    except Exception as e:
        print(label, "WRONG", type(e).__name__, e)
    else:
        print(label, "NO-ERROR")
"""

SCRIPT = EXPECT + r"""
import sys
import torch
import bluefog.torch as bf

x = torch.ones(3)
expect_value_error("allreduce", lambda: bf.allreduce(x, name="x"))
expect_value_error("allreduce_nonblocking", lambda: bf.allreduce_nonblocking(x))
expect_value_error("allreduce_", lambda: bf.allreduce_(x))
expect_value_error("broadcast", lambda: bf.broadcast(x, 0))
expect_value_error("broadcast_nonblocking_", lambda: bf.broadcast_nonblocking_(x, 0))
expect_value_error("allgather", lambda: bf.allgather(x))
expect_value_error("barrier", lambda: bf.barrier())
expect_value_error("size", lambda: bf.size())
expect_value_error("rank", lambda: bf.rank())
expect_value_error("local_rank", lambda: bf.local_rank())
expect_value_error("neighbor_allgather", lambda: bf.neighbor_allgather(x, name="nag"))
expect_value_error("neighbor_allreduce", lambda: bf.neighbor_allreduce(x, name="nar"))
expect_value_error("neighbor_allreduce_nonblocking", lambda: bf.neighbor_allreduce_nonblocking(x))
expect_value_error("hierarchical_neighbor_allreduce", lambda: bf.hierarchical_neighbor_allreduce(x, name="h"))
expect_value_error("pair_gossip", lambda: bf.pair_gossip(x, 0, name="pg"))
expect_value_error("win_create", lambda: bf.win_create(x, "w"))
expect_value_error("win_put", lambda: bf.win_put(x, "w"))
expect_value_error("win_update", lambda: bf.win_update("w"))
expect_value_error("win_mutex", lambda: bf.win_mutex("w").__enter__())
m = torch.nn.Linear(2, 2)
expect_value_error("optimizer", lambda: bf.DistributedAdaptThenCombineOptimizer(
    torch.optim.SGD(m.parameters(), lr=0.1), model=m))
print("unchanged", x.tolist())
"""

LABELS = ["allreduce", "allreduce_nonblocking", "allreduce_", "broadcast", "broadcast_nonblocking_", "allgather",
          "barrier", "size", "rank", "local_rank", "neighbor_allgather", "neighbor_allreduce",
          "neighbor_allreduce_nonblocking", "hierarchical_neighbor_allreduce", "pair_gossip", "win_create", "win_put",
          "win_update", "win_mutex", "optimizer"]
# The op named in the message (window ops said "unknown window 'w' ... create it with win_create first").
NAMED = {"allreduce": "allreduce 'x'", "allreduce_nonblocking": "allreduce 'allreduce.noname.",
         "broadcast": "broadcast 'broadcast.noname.", "allgather": "allgather 'allgather.noname.",
         "neighbor_allgather": "neighbor_allgather 'nag'", "neighbor_allreduce": "neighbor_allreduce 'nar'",
         "neighbor_allreduce_nonblocking": "neighbor_allreduce 'neighbor_allreduce.noname.",
         "hierarchical_neighbor_allreduce": "hierarchical_neighbor_allreduce 'h'", "pair_gossip": "pair_gossip 'pg'",
         "optimizer": "DistributedAdaptThenCombineOptimizer: BlueFog is not initialized",
         "win_create": "win_create 'w'", "win_put": "win_put:",
         "win_update": "win_update:", "win_mutex": "win_mutex:"}


def _clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PMI_", "PRTE_", "HYDRA_", "MPI_LOCALNRANKS", "BLUEFOG_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def output():
    return _run(SCRIPT, 120)


@pytest.mark.parametrize("label", LABELS)
def test_raises_value_error_asking_for_init(output, label):
    result = output[label]
    assert result.startswith("ValueError:"), result
    assert "bf.init()" in result, result


@pytest.mark.parametrize("label", sorted(NAMED))
def test_the_message_names_the_op(output, label):
    assert NAMED[label] in output[label] and "unknown window" not in output[label], output[label]


def test_input_untouched(output):
    assert output["unchanged"] == "[1.0, 1.0, 1.0]"


TF_SCRIPT = EXPECT + r"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
import bluefog.tensorflow as bf

x = tf.ones([3])
expect_value_error("neighbor_allreduce", lambda: bf.neighbor_allreduce(x, name="nar"))
expect_value_error("neighbor_allgather", lambda: bf.neighbor_allgather(x, name="nag"))
expect_value_error("hierarchical_neighbor_allreduce", lambda: bf.hierarchical_neighbor_allreduce(x, name="h"))
"""


def _run(script, timeout):
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines() if " " in line}


def test_tensorflow_neighbor_ops_name_the_op():
    got = _run(TF_SCRIPT, 300)
    for label, name in [("neighbor_allreduce", "nar"), ("neighbor_allgather", "nag"),
                        ("hierarchical_neighbor_allreduce", "h")]:
        assert got.get(label, "").startswith(f"ValueError: {label} '{name}': BlueFog is not initialized"), got
