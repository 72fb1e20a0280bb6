"""Runs each tests/parallel/test_*.py file on 1, 2 and 4 ranks under bfrun.

Each run has a hard timeout: a hang fails the test instead of hanging CI, and a
failure on any rank fails the run (the parallel conftest exits that rank at
once, and the launcher ends the others).
"""
import glob
import os

import pytest

from launch import ROOT, bfrun, pytest_file

# Files run once more with a setting that switches a fast path off, so that the
# path it replaces stays covered for every op and dtype: small-op data kept out
# of the negotiation exchange, blocking ops left to the background thread, and
# repeated small allreduces negotiated by the allgather exchange every time.
VARIANTS = [
    ("BLUEFOG_INLINE_BYTES", "0", ["test_collectives.py", "test_neighbor_ops.py", "test_hierarchical.py"]),
    ("BLUEFOG_CALLER_RUNS", "0", ["test_caller_runs.py", "test_collectives.py", "test_win_ops.py"]),
    ("BLUEFOG_FAST_ROUNDS", "0", ["test_fast_rounds.py", "test_inline_ops.py"]),
]
FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "parallel", "test_*.py")))
RANKS = (1, 2, 4)
TIMEOUT = int(os.environ.get("BLUEFOG_TEST_TIMEOUT", "240"))


@pytest.mark.parametrize("np", RANKS)
@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(f) for f in FILES])
def test_parallel_file(path, np):
    rc, out, secs = bfrun(np, pytest_file(path), TIMEOUT)
    if rc == 5:
        # Every test of the file skipped itself at import (e.g. bluefog.tensorflow
        # not built): report it as a skip with the file's name, not a pass.
        pytest.skip(f"{os.path.basename(path)}: no test ran on {np} ranks (a framework is not built)")
    assert rc is not None, f"{os.path.basename(path)} on {np} ranks hung (killed after {TIMEOUT} s):\n{out[-6000:]}"
    assert rc == 0, f"{os.path.basename(path)} on {np} ranks failed (exit {rc}):\n{out[-8000:]}"


@pytest.mark.parametrize("np", (2, 4))
@pytest.mark.parametrize("variable, value, name",
                         [(var, val, name) for var, val, names in VARIANTS for name in names],
                         ids=[f"{name}-{var}={val}" for var, val, names in VARIANTS for name in names])
def test_parallel_file_with_fast_path_off(variable, value, name, np):
    path = os.path.join(ROOT, "tests", "parallel", name)
    rc, out, secs = bfrun(np, pytest_file(path), TIMEOUT, env={variable: value})
    what = f"{name} on {np} ranks ({variable}={value})"
    assert rc is not None, f"{what} hung (killed after {TIMEOUT} s):\n{out[-6000:]}"
    assert rc == 0, f"{what} failed (exit {rc}):\n{out[-8000:]}"
