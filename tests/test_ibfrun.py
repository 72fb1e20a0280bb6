"""ibfrun end to end: start an ipyparallel cluster whose engines are the ranks of one BlueFog
job, run BlueFog ops on it from a client, interrupt a hung cell, and stop it.

The IPython directory is a temporary one, so the user's profiles are never touched; every
step runs under a hard timeout and the cluster is stopped whatever happens.
"""
import json
import os
import sys
import time

import ipyparallel as ipp
import pytest

from launch import ROOT, run

PROFILE = "bftest"
TIMEOUT = 150


@ipp.interactive  # shipped by value (the engines cannot import this file)
def bluefog_work():
    """Runs on each engine (a rank)."""
    import torch  # pylint: disable=import-outside-toplevel
    import bluefog.torch as bf  # pylint: disable=import-outside-toplevel
    bf.init()
    x = torch.tensor([float(bf.rank())])
    return bf.rank(), bf.size(), bf.allreduce(x).item(), bf.neighbor_allreduce(x).item()


@ipp.interactive
def sleep_long(marker_dir):
    import os as o  # pylint: disable=import-outside-toplevel,reimported
    import time as t  # pylint: disable=import-outside-toplevel,reimported
    with open(o.path.join(marker_dir, str(o.getpid())), "w"):
        pass  # this engine is in the cell now
    t.sleep(120)
    return "not interrupted"


@pytest.fixture
def ibfrun_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", IPYTHONDIR=str(tmp_path / "ipython"))
    yield env
    run([sys.executable, "-m", "bluefog.run.interactive_run", "stop", "--ipython-profile", PROFILE],
        60, env)


def test_ibfrun_start_work_interrupt_stop(ibfrun_env, tmp_path):
    from bluefog.run import interactive_run as ib  # pylint: disable=import-outside-toplevel
    alive = ib._alive  # pylint: disable=protected-access  (a zombie is not alive)
    ibfrun = [sys.executable, "-m", "bluefog.run.interactive_run"]
    rc, out, _ = run(ibfrun + ["start", "-np", "2", "--ipython-profile", PROFILE,
                               "--extra-mpi-flags", "--tag-output", "--timeout", "120"], TIMEOUT, ibfrun_env)
    assert rc == 0, out[-4000:]
    assert "2 engines are up" in out, out[-4000:]
    pdir = ib.profile_dir(PROFILE, create=False)
    assert pdir.startswith(str(tmp_path))
    with open(os.path.join(pdir, ib.PID_FILE)) as f:
        pids = json.load(f)
    engines = [pid for _, pid, _ in pids["engines"]]
    assert len(engines) == 2 and all(alive(p) for p in engines + [pids["bfrun"], pids["controller"]])

    # a second start for the same profile is refused while the cluster runs
    rc, out, _ = run(ibfrun + ["start", "-np", "2", "--ipython-profile", PROFILE], 60, ibfrun_env)
    assert rc == 1 and "already running" in out, out[-4000:]

    client = ipp.Client(profile=PROFILE)
    try:
        view = client[:]
        results = sorted(view.apply_sync(bluefog_work))
        assert results == [(0, 2, 0.5, 0.5), (1, 2, 0.5, 0.5)]
        # a hung cell: interrupt_hanged_processes SIGINTs this machine's engines
        markers = tmp_path / "in_cell"
        markers.mkdir()
        pending = view.apply_async(sleep_long, str(markers))
        deadline = time.time() + 60
        while len(list(markers.iterdir())) < 2:  # both engines are running the cell
            assert time.time() < deadline, "the engines did not start the cell"
            time.sleep(0.1)
        time.sleep(0.2)
        assert ib.interrupt_hanged_processes(PROFILE) == 2
        with pytest.raises(Exception, match="KeyboardInterrupt"):
            pending.get(timeout=60)
        # the engines (and BlueFog on them) still work after the interrupt
        assert sorted(view.apply_sync(bluefog_work)) == results
    finally:
        client.close()

    rc, out, _ = run(ibfrun + ["stop", "--ipython-profile", PROFILE], 60, ibfrun_env)
    assert rc == 0 and "stopped the cluster" in out, out[-4000:]
    deadline = time.time() + 30
    while any(alive(p) for p in engines) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in engines + [pids["bfrun"], pids["controller"]])
    assert not os.path.exists(os.path.join(pdir, ib.PID_FILE))


def test_ibfrun_start_fails_fast_when_the_launch_fails(ibfrun_env, tmp_path):
    """mpirun rejecting a flag ends `start` at once (not after --timeout), and the controller
    it started is stopped again."""
    from bluefog.run import interactive_run as ib  # pylint: disable=import-outside-toplevel
    rc, out, secs = run([sys.executable, "-m", "bluefog.run.interactive_run", "start", "-np", "2",
                         "--ipython-profile", PROFILE, "--extra-mpi-flags", "--no-such-flag-xyz",
                         "--timeout", "100"], TIMEOUT, ibfrun_env)
    assert rc == 1 and "bfrun exited with code" in out, out[-4000:]
    assert secs < 60, out[-4000:]
    pdir = ib.profile_dir(PROFILE, create=False)
    assert pdir.startswith(str(tmp_path))
    assert not os.path.exists(os.path.join(pdir, ib.PID_FILE))


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ibfrun_start_interrupted_leaves_nothing_running(ibfrun_env, tmp_path, signame):
    """Ctrl-C (or SIGTERM from `timeout`/kill, or SIGHUP from a closed terminal) while `start`
    waits for the engines: what it started is stopped, exit code 128 + the signal. (Before,
    SIGTERM and SIGHUP ended `start` at once and left the controller and engines running.)"""
    import signal  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    from bluefog.run import interactive_run as ib  # pylint: disable=import-outside-toplevel
    pdir = ib.profile_dir(PROFILE)  # (created here, so the record's path is known)
    record = os.path.join(pdir, ib.PID_FILE)
    # The signals as in a terminal, whatever this process inherited (a job started in the
    # background, or under nohup, may have them ignored, and the child would inherit that).
    proc = subprocess.Popen([sys.executable, "-m", "bluefog.run.interactive_run", "start", "-np", "2",
                             "--ipython-profile", PROFILE, "--timeout", "100"], env=ibfrun_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)])
    try:
        pids = {}
        deadline = time.time() + 60
        while "bfrun" not in pids and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                with open(record) as f:
                    pids = json.load(f)
            except (OSError, ValueError):
                pids = {}
        assert "bfrun" in pids, "start never recorded bfrun"
        sig = getattr(signal, signame)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, out[-4000:]
    deadline = time.time() + 30
    while any(ib._alive(pids[k]) for k in ("bfrun", "controller")) and time.time() < deadline:  # pylint: disable=protected-access
        time.sleep(0.2)
    assert not any(ib._alive(pids[k]) for k in ("bfrun", "controller")), out[-4000:]  # pylint: disable=protected-access
    assert not os.path.exists(record)


def test_ibfrun_start_interrupted_where_ipyparallel_swallows_it(ibfrun_env, monkeypatch):
    """ipyparallel's blocking apply catches KeyboardInterrupt and returns its AsyncResult: a
    Ctrl-C that lands there must still stop what start launched, exit code 130 (before: start
    went on as if nothing happened and reported the engines up, code 0). In process, with a
    fake controller/launcher (sleeping processes) and a fake client."""
    import signal  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    from bluefog.run import interactive_run as ib  # pylint: disable=import-outside-toplevel
    pdir = ib.profile_dir(PROFILE)
    spawned = []

    def fake_spawn(cmd, log_path):
        if not spawned:  # the controller: it writes the engines' connection file
            os.makedirs(os.path.join(pdir, "security"), exist_ok=True)
            with open(os.path.join(pdir, "security", "ipcontroller-engine.json"), "w") as f:
                f.write("{}")
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        spawned.append(proc)
        return proc

    class SwallowingView:
        def apply_sync(self, fn):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # (the handler runs here)
            except KeyboardInterrupt:
                pass  # as ipyparallel's View.apply does
            return object()

    class FakeClient:
        def __init__(self, profile):
            pass

        def wait_for_engines(self, n, timeout):
            return None

        def __getitem__(self, key):
            return SwallowingView()

        def close(self):
            pass

    monkeypatch.setattr(ib, "_spawn", fake_spawn)
    monkeypatch.setattr(ipp, "Client", FakeClient)
    # Python's own handler, as in a terminal (a job started in the background may have SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = ib.main(["start", "-np", "2", "--ipython-profile", PROFILE, "--timeout", "30"])
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
        for proc in spawned:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 130
    assert len(spawned) == 2  # controller and launcher, both ended by start itself:
    assert all(proc.returncode == -signal.SIGTERM for proc in spawned), [p.returncode for p in spawned]
    assert not os.path.exists(os.path.join(pdir, ib.PID_FILE))
    assert restored is signal.default_int_handler  # start's own handler was taken away again
