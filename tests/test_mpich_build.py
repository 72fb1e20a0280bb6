"""BlueFog built against MPICH and run under MPICH's launcher (Hydra).

The project's own environment uses Open MPI; this builds a second copy of the
package against the MPICH installation named by BLUEFOG_TEST_MPICH_PREFIX
(`scripts/dev.sh test` installs the PyPI `mpich` wheel under .venv/mpich and
sets it), then runs a set of the parallel test files on it with
`bfrun --prefix <MPICH>`. It also checks that a build launched by the other
MPI's launcher fails clearly and promptly instead of running every rank alone.

The MPICH build lives in build/mpich/ (package tree pkg/, CMake tree cmake/),
reused between runs; it has the torch frontend, and the TensorFlow one when
tensorflow imports.
"""
import os
import re
import shutil
import sys
import time

import pytest

from bluefog.common.native import find_library
from launch import ROOT, bfrun, run, run_parallel_file

PREFIX = os.environ.get("BLUEFOG_TEST_MPICH_PREFIX")
BUILD = os.path.join(ROOT, "build", "mpich")
PKG = os.path.join(BUILD, "pkg")
# Files that exercise what differs between MPI libraries: collectives and
# their fast paths, neighbor exchanges, one-sided windows, error agreement,
# communicator splits, the timeline, and PyTorch and TensorFlow sharing the core.
FILES = ["test_collectives.py", "test_neighbor_ops.py", "test_fast_rounds.py", "test_errors.py",
         "test_win_ops.py", "test_win_pushsum.py", "test_hierarchical.py", "test_timeline.py",
         "test_mixed_frameworks.py"]

pytestmark = pytest.mark.skipif(not PREFIX, reason="BLUEFOG_TEST_MPICH_PREFIX not set (scripts/dev.sh test sets it)")


@pytest.fixture(scope="module")
def mpich_pkg():
    """Builds the package against MPICH; returns the directory that holds `bluefog/`."""
    prefix = os.path.abspath(PREFIX)
    for tool in ("mpicc", "mpicxx", "mpiexec"):
        assert os.access(os.path.join(prefix, "bin", tool), os.X_OK), f"no {tool} in {prefix}/bin"
    # CMake keeps the MPI it found in its cache: another MPICH means a fresh build tree.
    stamp = os.path.join(BUILD, "mpich-prefix.txt")
    if not os.path.exists(stamp) or open(stamp).read() != prefix:
        shutil.rmtree(BUILD, ignore_errors=True)
        os.makedirs(BUILD)
        with open(stamp, "w") as f:
            f.write(prefix)
    # The Python sources are copied fresh; the native libraries are built next to them.
    shutil.rmtree(os.path.join(PKG, "bluefog"), ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "bluefog"), os.path.join(PKG, "bluefog"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ)
    env.pop("BLUEFOG_WITH_TENSORFLOW", None)  # the TensorFlow op library too, when tensorflow imports
    env.update({"MPICC": os.path.join(prefix, "bin", "mpicc"), "MPICXX": os.path.join(prefix, "bin", "mpicxx"),
                "BLUEFOG_BUILD_DIR": os.path.join(BUILD, "cmake"), "BLUEFOG_WITH_PYTORCH": "1"})
    rc, out, secs = run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", PKG,
                         "--build-temp", os.path.join(BUILD, "tmp")], 1200, env)
    assert rc == 0, f"the MPICH build failed (exit {rc}, {secs:.0f} s):\n{out[-8000:]}"
    core = find_library(os.path.join(PKG, "bluefog", "common"), "_bluefog_core")
    assert core and find_library(os.path.join(PKG, "bluefog", "torch"), "_C"), out[-4000:]
    # The core must load MPICH's library (from the prefix), not Open MPI's.
    rc, ldd, _ = run(["ldd", core], 60, env)
    libmpi = [ln for ln in ldd.splitlines() if "libmpi" in ln]
    assert libmpi and all(prefix in ln for ln in libmpi), ldd
    return PKG


def mpich_launcher():
    return ["--prefix", os.path.abspath(PREFIX)]


def bfrun_in(pythonpath, np, args, timeout, mpich=True):
    """bfrun with MPICH's launcher (or the default one), importing bluefog from `pythonpath`."""
    rc, out, _ = bfrun(np, args, timeout, launcher_args=mpich_launcher() if mpich else [], pythonpath=pythonpath)
    return rc, out


# Every file on 4 ranks; neighbor ops on 2 as well (a pair is its own case for neighbor lists).
RUNS = [(name, 4) for name in FILES] + [("test_neighbor_ops.py", 2)]


@pytest.mark.parametrize("name, np", RUNS, ids=[f"{name}-{np}" for name, np in RUNS])
def test_parallel_file_on_mpich(mpich_pkg, name, np):
    run_parallel_file(os.path.join(ROOT, "tests", "parallel", name), np, f"{name} on {np} ranks with MPICH",
                      skip_if_none_ran=True, launcher_args=mpich_launcher(), pythonpath=mpich_pkg)


# One write per line: the ranks share the launcher's output, which Hydra
# forwards in the pieces each rank writes (the output is searched, not split
# into lines, in case some other output left a line unfinished).
SHOW_SIZE = [sys.executable, "-c", "import os, bluefog.torch as bf; bf.init(); "
             "os.write(1, f'WORLD {bf.rank()} {bf.size()}\\n'.encode())"]


def test_mpich_build_reports_world(mpich_pkg):
    rc, out = bfrun_in(mpich_pkg, 3, SHOW_SIZE, timeout=120)
    assert rc == 0, out[-6000:]
    assert sorted(re.findall(r"WORLD (\d+) (\d+)\n", out)) == [(str(r), "3") for r in range(3)], out


def test_open_mpi_build_under_mpich_launcher_fails_clearly():
    # This checkout's build (Open MPI) started by MPICH's Hydra: each process
    # would be a world of its own; init must say so on every rank.
    start = time.time()
    rc, out = bfrun_in(ROOT, 2, SHOW_SIZE, timeout=120)
    assert rc is not None, f"hung:\n{out[-6000:]}"
    assert rc != 0, out[-6000:]
    assert not re.search(r"WORLD \d+ \d+", out), out[-6000:]
    # Counted in the whole output (two ranks' tracebacks may share a line); the
    # first rank to fail ends the job, which may kill the other before it says so.
    assert 1 <= out.count("MPI_COMM_WORLD has 1 rank") <= 2, out[-6000:]
    assert out.count("started as one of 2 ranks (PMI_SIZE=2") == out.count("MPI_COMM_WORLD has 1 rank"), out[-6000:]
    assert time.time() - start < 100


def test_mpich_build_under_open_mpi_launcher_fails_promptly(mpich_pkg):
    # The other way round: MPICH's MPI_Init refuses Open MPI's PMIx runtime
    # ("unsupported PMI version PMIx") and exits; the job must end, not hang.
    rc, out = bfrun_in(mpich_pkg, 2, SHOW_SIZE, timeout=120, mpich=False)
    assert rc is not None, f"hung:\n{out[-6000:]}"
    assert rc != 0, out[-6000:]
    assert not re.search(r"WORLD \d+ \d+", out), out[-6000:]


def test_mpi4py_of_another_mpi_is_an_error(mpich_pkg):
    # This environment's mpi4py is built against Open MPI: its communicator
    # means nothing to the MPICH build, whose own MPI is not even started.
    # (Not COMM_WORLD: Open MPI's Fortran handle for it is 0, which init()
    # takes as "no communicator", i.e. BlueFog's own world.)
    code = ("import os\n"
            "from mpi4py import MPI\n"
            "import bluefog.torch as bf\n"
            "try:\n"
            "    bf.init(comm=MPI.COMM_WORLD.Dup())\n"
            "except ValueError as e:\n"
            "    os.write(1, f'INIT-ERROR {e}\\n'.encode())\n")
    rc, out = bfrun_in(mpich_pkg, 2, [sys.executable, "-c", code], timeout=120)
    assert rc == 0, out[-6000:]
    errors = re.findall(r"INIT-ERROR [^\n]*", out)  # one write() each
    assert len(errors) == 2, out[-6000:]
    assert all("MPICH Version: " in ln and "is not initialized" in ln for ln in errors), errors
