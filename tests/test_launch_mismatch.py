"""A process that a launcher started as one of N ranks, but whose MPI sees a
world of one (the launcher belongs to another MPI than the one BlueFog is
built against), must fail at init with a clear error instead of training
alone and reporting success.

Here the mismatch is simulated without a second MPI: the process is started
directly (an MPI "singleton") with a launcher's world-size variable set. The
real thing, BlueFog built against Open MPI under MPICH's launcher, is
tests/test_mpich_build.py.
"""
import os
import re
import sys

import pytest

from bluefog.common.native import find_library
from launch import ROOT, run

FRAMEWORKS = {
    "torch": "import bluefog.torch as bf",
    "tensorflow": "import bluefog.tensorflow as bf",
}


def plain_env():
    """This environment without any launcher's variables (the process is not launched by one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PMI_", "PRTE_"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_init(framework, extra_env, timeout=120):
    env = plain_env()
    env.update(extra_env)
    code = (FRAMEWORKS[framework] + "\n"
            "try:\n"
            "    bf.init()\n"
            "except RuntimeError as e:\n"
            "    print('INIT-ERROR', e, flush=True)\n"
            "    raise SystemExit(3)\n"
            "print('INIT-OK size', bf.size(), flush=True)\n")
    rc, out, _ = run([sys.executable, "-c", code], timeout, env)
    assert rc is not None, f"init hung (killed after {timeout} s):\n{out[-4000:]}"
    return rc, out


def framework_built(framework):
    return find_library(os.path.join(ROOT, "bluefog", framework), "_C" if framework == "torch" else "_ops") is not None


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("variable", ["PMI_SIZE", "OMPI_COMM_WORLD_SIZE"])
def test_launcher_size_without_mpi_world_is_an_error(framework, variable):
    if not framework_built(framework):
        pytest.skip(f"bluefog.{framework} is not built")
    rc, out = run_init(framework, {variable: "3"})
    assert rc == 3, out[-4000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("INIT-ERROR"))
    assert "started as one of 3 ranks" in line and f"{variable}=3" in line, line
    assert "MPI_COMM_WORLD has 1 rank" in line, line
    assert re.search(r"built against (Open MPI v|MPICH Version: )\d", line), line
    assert "bfrun --prefix" in line, line


@pytest.mark.parametrize("value", ["1", "", "x"])
def test_launcher_size_of_one_or_unreadable_is_fine(value):
    rc, out = run_init("torch", {"PMI_SIZE": value})
    assert rc == 0, out[-4000:]
    assert "INIT-OK size 1" in out, out[-4000:]


def test_communicator_while_mpi_is_not_initialized_is_an_error():
    # What an mpi4py built against another MPI looks like to BlueFog: a
    # communicator handle while BlueFog's own MPI was never started.
    code = ("import bluefog.torch as bf\n"
            "class Comm:\n"
            "    def py2f(self):\n"
            "        return 1\n"
            "try:\n"
            "    bf.init(comm=Comm())\n"
            "except ValueError as e:\n"
            "    print('INIT-ERROR', e, flush=True)\n"
            "    raise SystemExit(3)\n")
    rc, out, _ = run([sys.executable, "-c", code], 120, plain_env())
    assert rc == 3, out[-4000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("INIT-ERROR"))
    assert "a communicator was given" in line and "is not initialized" in line, line
    assert re.search(r"but (Open MPI v|MPICH Version: )\d", line) and "mpi4py built against that same MPI" in line, line
