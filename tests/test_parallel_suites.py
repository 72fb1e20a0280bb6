"""Runs each tests/parallel/test_*.py file on 1, 2 and 4 ranks under bfrun.

Each run has a hard timeout: a hang fails the test instead of hanging CI, and a
failure on any rank fails the run (the parallel conftest exits that rank at
once, and the launcher ends the others).
"""
import glob
import os

import pytest

from launch import ROOT, run_parallel_file

# Files run once more with a setting that switches a fast path off, so that the
# path it replaces stays covered for every op and dtype: small-op data kept out
# of the negotiation exchange, blocking ops left to the background thread, and
# repeated small allreduces negotiated by the allgather exchange every time, and
# large allreduces left to MPI's own algorithms instead of BlueFog's ring, and
# the negotiation gathered by MPI_Iallgather (as on more than 32 ranks), and
# skip-negotiate mode's pattern check done by gathering the lists (as on more
# than 64 ranks).
VARIANTS = [
    ("BLUEFOG_INLINE_BYTES", "0", ["test_collectives.py", "test_neighbor_ops.py", "test_hierarchical.py"]),
    ("BLUEFOG_CALLER_RUNS", "0", ["test_caller_runs.py", "test_collectives.py", "test_win_ops.py"]),
    ("BLUEFOG_FAST_ROUNDS", "0", ["test_fast_rounds.py", "test_inline_ops.py"]),
    ("BLUEFOG_RING_ALLREDUCE_BYTES", "0", ["test_collectives.py"]),
    ("BLUEFOG_P2P_GATHER_RANKS", "0", ["test_errors.py", "test_neighbor_ops.py"]),
    ("BLUEFOG_SKIP_PATTERN_MATRIX_RANKS", "0", ["test_neighbor_ops.py"]),
]
FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "parallel", "test_*.py")))
RANKS = (1, 2, 4)


@pytest.mark.parametrize("np", RANKS)
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_parallel_file(path, np):
    # A file whose every test skipped itself at import (e.g. bluefog.tensorflow
    # not built) is reported as a skip with the file's name, not a pass.
    run_parallel_file(path, np, f"{os.path.basename(path)} on {np} ranks", skip_if_none_ran=True)


@pytest.mark.parametrize("np", (2, 4))
@pytest.mark.parametrize("variable, value, name",
                         [(var, val, name) for var, val, names in VARIANTS for name in names],
                         ids=[f"{name}-{var}={val}" for var, val, names in VARIANTS for name in names])
def test_parallel_file_with_fast_path_off(variable, value, name, np):
    path = os.path.join(ROOT, "tests", "parallel", name)
    run_parallel_file(path, np, f"{name} on {np} ranks ({variable}={value})", env={variable: value})


def test_fast_rounds_on_three_ranks():
    """A fast round's message allreduce is BlueFog's own recursive doubling;
    on a rank count that is not a power of two, rank 0 hands its message to
    rank 1 and gets the result back (the suite's 1, 2 and 4 ranks never do)."""
    path = os.path.join(ROOT, "tests", "parallel", "test_fast_rounds.py")
    run_parallel_file(path, 3, "test_fast_rounds.py on 3 ranks")
