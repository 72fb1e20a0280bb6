"""Helpers for tests that launch jobs with bfrun under a hard timeout."""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Hard limit for one run of a parallel test file.
PARALLEL_TIMEOUT = int(os.environ.get("BLUEFOG_TEST_TIMEOUT", "600"))


def run(cmd, timeout, env, cwd=ROOT):
    """Runs `cmd` in its own session. Returns (returncode, combined output,
    seconds); on timeout the whole process group is killed and the return code
    is None."""
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.time() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out, time.time() - start


def bfrun(np, args, timeout, env=None, launcher_args=(), pythonpath=ROOT):
    """Runs `bfrun [launcher_args] -np np <args>` (args: list, python scripts get
    sys.executable) from `pythonpath`, which is put first on PYTHONPATH and
    named in BLUEFOG_TEST_IMPORT_ROOT for tests/parallel/conftest.py (the package
    tree the launcher and the ranks import bluefog from). Returns what run()
    does."""
    cmd = [sys.executable, "-m", "bluefog.run.run"] + list(launcher_args) + ["-np", str(np)] + list(args)
    full_env = dict(os.environ)
    full_env.setdefault("BLUEFOG_LOG_HIDE_TIME", "1")
    # Several ranks share few cores: one compute thread per rank avoids
    # oversubscribing them many times over (set OMP_NUM_THREADS to override).
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONPATH"] = pythonpath + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["BLUEFOG_TEST_IMPORT_ROOT"] = pythonpath
    full_env.update(env or {})
    return run(cmd, timeout, full_env, cwd=pythonpath)


def python_script(path, *script_args):
    """The argument list that runs a Python script on every rank."""
    return [sys.executable, path] + list(script_args)


def pytest_file(path):
    """The argument list that runs a pytest file on every rank."""
    return [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path]


def run_parallel_file(path, np, what, env=None, skip_if_none_ran=False, **bfrun_args):
    """Runs the parallel test file `path` on `np` ranks (pytest on every rank)
    and fails the calling test, naming the run as `what`, if it hung or failed.
    With `skip_if_none_ran`, a file whose every test skipped itself at import
    (exit 5: a framework is not built) is reported as a skip, not a pass."""
    rc, out, _ = bfrun(np, pytest_file(path), PARALLEL_TIMEOUT, env=env, **bfrun_args)
    if skip_if_none_ran and rc == 5:
        pytest.skip(f"{what}: no test ran (a framework is not built)")
    assert rc is not None, f"{what} hung (killed after {PARALLEL_TIMEOUT} s):\n{out[-6000:]}"
    assert rc == 0, f"{what} failed (exit {rc}):\n{out[-8000:]}"
