"""bfrun end to end: real mpirun/mpiexec runs of tiny Python ranks (no BlueFog core needed).

Uses the launcher bfrun itself would pick (next to sys.executable, then PATH); skipped when there
is none.  Set BLUEFOG_TEST_MPICH_PREFIX to an MPICH installation (e.g. a venv with the PyPI
``mpich`` wheel) to run the same checks with Hydra as well.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from bluefog.run import mpi_vendor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RANK = "int(os.environ.get('OMPI_COMM_WORLD_RANK', os.environ.get('PMI_RANK', '-1')))"


def _launchers():
    out = []
    try:
        default = mpi_vendor.find_launcher()
    except FileNotFoundError:
        default = None
    out.append(pytest.param(None, marks=pytest.mark.skipif(
        default is None, reason="no mpirun/mpiexec next to the interpreter or on PATH"),
        id="default"))
    prefix = os.environ.get("BLUEFOG_TEST_MPICH_PREFIX")
    out.append(pytest.param(prefix, marks=pytest.mark.skipif(
        not prefix, reason="BLUEFOG_TEST_MPICH_PREFIX not set"), id="mpich-prefix"))
    return out


@pytest.fixture(params=_launchers())
def prefix(request):
    """``--prefix`` arguments for the launcher under test (empty for the default one)."""
    vendor = mpi_vendor.detect_vendor(mpi_vendor.find_launcher(request.param))
    if vendor.name not in (mpi_vendor.OPENMPI, mpi_vendor.MPICH):
        pytest.skip("launcher is neither Open MPI nor MPICH: " + vendor.text[:100])
    return ["--prefix", request.param] if request.param else []


def bfrun(args, timeout=60, env=None):
    """Start ``python -m bluefog.run.run args`` in its own session; returns the Popen."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "bluefog.run.run"] + list(args), cwd=ROOT,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc, timeout=60):
    """Wait for ``proc`` under ``timeout``; returns (rc, output, seconds); kills it on timeout."""
    start = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("bfrun did not finish within {} s:\n{}".format(timeout, out))
    return proc.returncode, out, time.monotonic() - start


def rank_script(marker, body):
    """A ``python -c`` program tagged with ``marker`` (to find leftover processes)."""
    return [sys.executable, "-c", "# {}\nimport os, sys, time\nrank = {}\n{}".format(
        marker, RANK, body)]


def leftovers(marker):
    """Pids of live processes whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/{}/cmdline".format(entry), "rb") as f:
                    if marker.encode() in f.read():
                        with open("/proc/{}/stat".format(entry)) as s:
                            if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                                found.append(int(entry))
            except OSError:
                pass
    return found


def wait_no_leftovers(marker, seconds=5.0):
    deadline = time.monotonic() + seconds
    while leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leftovers(marker)


def test_version_flag():
    rc, out, _ = finish(bfrun(["-v"]))
    assert rc == 0 and out.strip() and "usage" not in out


def test_success_and_environment(prefix):
    marker = "bf-" + uuid.uuid4().hex
    # One write() per line: Hydra forwards the ranks' output in whatever pieces
    # they write it, and print() of several values under PYTHONUNBUFFERED is
    # several writes (seen: "rankrank 1 /tmp/tl debug\n 0 /tmp/tl debug").
    body = ("os.write(1, 'rank {} {} {}\\n'.format(rank, os.environ.get('BLUEFOG_TIMELINE'), "
            "os.environ.get('BLUEFOG_LOG_LEVEL')).encode())")
    rc, out, _ = finish(bfrun(prefix + ["-np", "2", "--verbose", "--timeline-filename", "/tmp/tl",
                                        *rank_script(marker, body)]))
    assert rc == 0, out
    assert "rank 0 /tmp/tl debug" in out and "rank 1 /tmp/tl debug" in out, out
    assert "bfrun: " in out  # --verbose prints the command


def test_verbose_into_a_closed_pipe_ends_quietly(tmp_path):
    """`bfrun --verbose ... | true`: printing the command finds nobody reading. bfrun ends
    with 141 (128 + SIGPIPE, as a pipe writer does) and no traceback, and starts no job."""
    marker = "bf-" + uuid.uuid4().hex
    read_end, write_end = os.pipe()
    os.close(read_end)
    errors = tmp_path / "stderr.txt"
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(errors, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "bluefog.run.run", "-np", "2", "--verbose",
                               *rank_script(marker, "time.sleep(30)")],
                              cwd=ROOT, env=full_env, stdout=write_end, stderr=err, timeout=60)
    os.close(write_end)
    text = errors.read_text()
    assert proc.returncode == 128 + signal.SIGPIPE, (proc.returncode, text)
    assert "Traceback" not in text, text
    assert not leftovers(marker)


def test_exit_code_of_a_failing_rank(prefix):
    marker = "bf-" + uuid.uuid4().hex
    rc, out, secs = finish(bfrun(prefix + ["-np", "2", *rank_script(
        marker, "sys.exit(3) if rank == 1 else time.sleep(120)")]), timeout=60)
    assert rc == 3, out  # the rank's own code, under Open MPI and Hydra alike
    assert secs < 30, out
    assert wait_no_leftovers(marker) == []


@pytest.mark.parametrize("ignores_term", [False, True], ids=["helper", "stubborn-helper"])
def test_helpers_in_their_own_session_do_not_hold_the_job(prefix, ignores_term):
    """Each rank starts a helper in a session of its own (it survives the rank and keeps the
    rank's output pipe open); rank 1 then fails. The launcher would wait for those pipes until
    the helpers exit (before: 40 s here, for good with a helper that never exits). bfrun ends
    them once no rank is left: the job ends within seconds with the rank's code, and nothing
    is left running."""
    marker = "bf-" + uuid.uuid4().hex
    helper = ("import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_term else "")
              + "time.sleep(40)")
    body = ("import subprocess\n"
            "subprocess.Popen([sys.executable, '-c', '# {}\\n' + {!r}], start_new_session=True)\n"
            "time.sleep(1)\n"
            "sys.exit(4) if rank == 1 else time.sleep(120)").format(marker, helper)
    rc, out, secs = finish(bfrun(prefix + ["-np", "2", *rank_script(marker, body)]), timeout=90)
    assert rc == 4, out
    assert secs < 25, (secs, out)
    assert wait_no_leftovers(marker) == []


def test_killed_rank_ends_job(prefix):
    marker = "bf-" + uuid.uuid4().hex
    body = "time.sleep(1)\nif rank == 1:\n    os.kill(os.getpid(), 9)\ntime.sleep(120)"
    rc, out, secs = finish(bfrun(prefix + ["-np", "3", *rank_script(marker, body)]), timeout=60)
    assert rc == 128 + 9, out  # like a shell reports a process killed by SIGKILL
    assert secs < 30, out
    assert wait_no_leftovers(marker) == []


def test_signal_is_forwarded(prefix, tmp_path):
    marker = "bf-" + uuid.uuid4().hex
    body = "open(os.path.join({!r}, str(rank)), 'w').close()\ntime.sleep(120)".format(
        str(tmp_path))
    proc = bfrun(prefix + ["-np", "2", *rank_script(marker, body)])
    deadline = time.monotonic() + 30
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(tmp_path)) == 2, "the ranks did not start"
    os.kill(proc.pid, signal.SIGTERM)
    rc, out, secs = finish(proc, timeout=30)
    assert rc == 128 + signal.SIGTERM, out
    assert secs < 15, out
    assert wait_no_leftovers(marker) == []
