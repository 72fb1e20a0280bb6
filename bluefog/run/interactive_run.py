"""``ibfrun``: an ipyparallel cluster whose engines are the ranks of one BlueFog MPI job.

Usage::

    ibfrun start -np N [-H h1:n1,.. | --hostfile F] [-p SSH_PORT] [--network-interface NIC]
                 [--use-infiniband] [--extra-mpi-flags "..."] [--ipython-profile P]
                 [--enable-heartbeat] [--verbose] [--prefix DIR] [--timeout S]
    ibfrun stop [--ipython-profile P]
    ibfrun -v

``start`` launches ``ipcontroller --profile P`` (detached), waits for
``<profile>/security/ipcontroller-engine.json``, then starts ``bfrun -np N ... python -m
ipyparallel.engine --profile P`` (detached).  The engines are thus launched by ``bfrun`` and its
command construction (:mod:`bluefog.run.launch_command`) and process handling.  Unless
``--enable-heartbeat`` is given the engines run with ``--IPEngine.max_heartbeat_misses=0`` (a
command-line option instead of the original's ``ipengine_config.py``, so the user's profile is
not rewritten), so a long blocking MPI call cannot get an engine killed.  The controller and
bfrun pids are written to ``<profile>/engine_pids.json`` as they start (with their start times,
so that a pid reused by another process after a reboot is never signalled), the engines' when
they have registered; a start that fails or is interrupted ends what it started.  ``stop``
terminates bfrun (which ends the MPI job) and the controller.

With remote hosts the controller listens on all interfaces and the engine connection file is
copied to the same path on every remote host with ``ssh``/``scp`` (untested without a second
machine).  Logs go to ``<profile>/log/ibfrun-controller.log`` and ``ibfrun-engines.log``.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from bluefog.run import launch_command as lc
from bluefog.run.run import bluefog_version, glue_extra_mpi_flags, host_facts

PID_FILE = "engine_pids.json"
INSTALL_HINT = ("ibfrun needs ipyparallel, which is not installed; install it with "
                "`pip install ipyparallel`")


def make_parser() -> argparse.ArgumentParser:
    """The ``ibfrun`` argument parser."""
    p = argparse.ArgumentParser(prog="ibfrun", allow_abbrev=False,
                                description="Start or stop an ipyparallel BlueFog cluster.")
    p.add_argument("-v", "--version", action="store_true", help="print the BlueFog version")
    sub = p.add_subparsers(dest="action")
    start = sub.add_parser("start", allow_abbrev=False, help="start controller and engines")
    start.add_argument("-np", "--num-proc", type=int, dest="num_proc", required=True)
    start.add_argument("-p", "--ssh-port", type=int, dest="ssh_port")
    start.add_argument("--network-interface", dest="nic")
    start.add_argument("--use-infiniband", action="store_true")
    start.add_argument("--ipython-profile", dest="profile", default="bluefog")
    start.add_argument("--enable-heartbeat", action="store_true")
    group = start.add_mutually_exclusive_group()
    group.add_argument("-H", "--hosts", dest="hosts")
    group.add_argument("-hostfile", "--hostfile", dest="hostfile")
    start.add_argument("--verbose", action="store_true")
    start.add_argument("--extra-mpi-flags", dest="extra_mpi_flags", default="")
    start.add_argument("--prefix", dest="prefix")
    start.add_argument("--timeout", type=float, default=120.0,
                       help="seconds to wait for the controller and the engines")
    stop = sub.add_parser("stop", allow_abbrev=False, help="stop controller and engines")
    stop.add_argument("--ipython-profile", dest="profile", default="bluefog")
    return p


def profile_dir(name: str, create: bool = True) -> str:
    """The IPython profile directory for ``name`` (created when missing and ``create``)."""
    from IPython.core.profiledir import ProfileDir, ProfileDirError  # pylint: disable=C0415
    from IPython.paths import get_ipython_dir  # pylint: disable=import-outside-toplevel
    try:
        return ProfileDir.find_profile_dir_by_name(get_ipython_dir(), name).location
    except ProfileDirError:
        if not create:
            raise
        return ProfileDir.create_profile_dir_by_name(get_ipython_dir(), name).location


def _alive(pid) -> bool:
    """True if ``pid`` is a live, non-zombie process."""
    try:
        with open("/proc/{}/stat".format(int(pid))) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, TypeError, IndexError):
        try:
            os.kill(int(pid), 0)
            return True
        except (OSError, ValueError, TypeError):
            return False


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None."""
    try:
        with open("/proc/{}/stat".format(int(pid))) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, ValueError, TypeError, IndexError):
        return None


def _same_process(pid, started) -> bool:
    """True if ``pid`` is alive and still the process that had start time ``started`` (after a
    reboot or a pid reuse it is someone else's). Without /proc (no start times, then or now)
    being alive is all that can be checked."""
    return _alive(pid) and _start_time(pid) == started


def _ours(pids: dict, key: str) -> bool:
    """True if the process recorded under ``key`` is still the one ibfrun started."""
    return _same_process(pids.get(key), pids.get("started", {}).get(key))


def _read_pids(pdir: str) -> dict:
    try:
        with open(os.path.join(pdir, PID_FILE)) as f:
            pids = json.load(f)
        return pids if isinstance(pids, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_pids(pdir: str, pids: dict) -> None:
    with open(os.path.join(pdir, PID_FILE), "w") as f:
        json.dump(pids, f)


def engine_identity():
    """``[hostname, pid, start time]`` of the calling process (run on each engine; ipyparallel
    ships the function by value, so it imports what it needs itself)."""
    import os as os_  # pylint: disable=import-outside-toplevel,reimported
    import socket  # pylint: disable=import-outside-toplevel
    try:
        with open("/proc/self/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = None
    return [socket.gethostname(), os_.getpid(), started]


def _spawn(args, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def _copy_to_hosts(path, hosts, ssh_port):
    """Copy ``path`` to the same path on every remote host (ssh mkdir + scp)."""
    ssh, scp = ["ssh"], ["scp", "-q"]
    if ssh_port:
        ssh, scp = ssh + ["-p", str(ssh_port)], scp + ["-P", str(ssh_port)]
    for host in hosts:
        subprocess.run(ssh + [host, "mkdir", "-p", os.path.dirname(path)], check=True, timeout=60)
        subprocess.run(scp + [path, "{}:{}".format(host, path)], check=True, timeout=60)


def bfrun_args(args, engine_cmd) -> list:
    """The ``bfrun`` command line that launches ``engine_cmd`` on every rank."""
    out = [sys.executable, "-m", "bluefog.run.run", "-np", str(args.num_proc)]
    for flag, value in (("-H", args.hosts), ("--hostfile", args.hostfile),
                        ("-p", args.ssh_port), ("--network-interface", args.nic),
                        ("--prefix", args.prefix)):
        if value:
            out += [flag, str(value)]
    if args.extra_mpi_flags:
        out.append("--extra-mpi-flags=" + args.extra_mpi_flags)  # its value may start with '-'
    if args.use_infiniband:
        out.append("--use-infiniband")
    if args.verbose:
        out.append("--verbose")
    return out + list(engine_cmd)


def hosts_of(args):
    """The parsed ``-H`` / ``--hostfile`` hosts (None if neither); ValueError/OSError if bad."""
    if args.hosts:
        return lc.parse_hosts(args.hosts)
    if args.hostfile:
        with open(args.hostfile) as f:
            hosts = lc.parse_hostfile_text(f.read())
        if not hosts:
            raise ValueError("hostfile {} names no host".format(args.hostfile))
        return hosts
    return None


class _Interrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM, SIGHUP) arrived during `start`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def start(args, hosts) -> int:
    """``ibfrun start``: controller, then engines through bfrun (``hosts``: from
    :func:`hosts_of`); returns an exit code."""
    import ipyparallel  # pylint: disable=import-outside-toplevel
    pdir = profile_dir(args.profile)
    old = _read_pids(pdir)
    if any(_ours(old, k) for k in ("controller", "bfrun")):
        print("ibfrun: a cluster for profile {!r} is already running; run `ibfrun stop "
              "--ipython-profile {}` first".format(args.profile, args.profile), file=sys.stderr)
        return 1
    facts = host_facts(hosts is not None)
    remote = sorted({h for h, _ in hosts or [] if not lc.is_local_host(h, facts)})
    engine_json = os.path.join(pdir, "security", "ipcontroller-engine.json")
    client_json = os.path.join(pdir, "security", "ipcontroller-client.json")
    for path in (engine_json, client_json):
        if os.path.exists(path):
            os.remove(path)
    logdir = os.path.join(pdir, "log")
    os.makedirs(logdir, exist_ok=True)
    ctl_cmd = [sys.executable, "-m", "ipyparallel.controller", "--profile=" + args.profile]
    if remote:
        ctl_cmd.append("--ip=*")
    pids = {"started": {}}

    def spawned(key, proc):
        # Recorded at once, so that `ibfrun stop` finds it even if this start is interrupted.
        pids[key] = proc.pid
        pids["started"][key] = _start_time(proc.pid)
        _write_pids(pdir, pids)
        return proc

    def abandon():  # end what this start launched, and forget it
        _stop_pids(pids)
        try:
            os.remove(os.path.join(pdir, PID_FILE))
        except OSError:
            pass

    def fail(msg):
        print("ibfrun: " + msg, file=sys.stderr)
        abandon()
        return 1

    # ipyparallel swallows a KeyboardInterrupt in places (a blocking apply
    # returns its AsyncResult instead): Ctrl-C is also remembered, and checked
    # once the engines are up (unless SIGINT is not Python's usual handler,
    # e.g. ignored: then it is left alone).
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
        raise _Interrupted(signum)

    # Ctrl-C, and also SIGTERM (`timeout ibfrun start ...`, a kill) and SIGHUP
    # (a closed terminal), whose default action would end this process with
    # the controller and engines left running.
    previous_handlers = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                         (signal.SIGHUP, signal.SIG_DFL)):
        previous_handlers[sig] = signal.getsignal(sig)
        if previous_handlers[sig] is default:
            signal.signal(sig, on_signal)
    try:
        controller = spawned("controller", _spawn(ctl_cmd, os.path.join(logdir, "ibfrun-controller.log")))
        deadline = time.monotonic() + args.timeout
        while not os.path.exists(engine_json):
            if controller.poll() is not None or time.monotonic() > deadline:
                return fail("the controller did not start; see " + logdir)
            time.sleep(0.2)
        time.sleep(0.2)  # let the controller finish writing the file
        if remote:
            try:
                _copy_to_hosts(engine_json, remote, args.ssh_port)
            except (OSError, subprocess.SubprocessError) as exc:
                return fail("cannot copy the engine connection file {} to {}: {}".format(
                    engine_json, ", ".join(remote), exc))
        engine_cmd = [sys.executable, "-m", "ipyparallel.engine", "--profile=" + args.profile]
        if not args.enable_heartbeat:
            engine_cmd.append("--IPEngine.max_heartbeat_misses=0")
        engines_log = os.path.join(logdir, "ibfrun-engines.log")
        launcher = spawned("bfrun", _spawn(bfrun_args(args, engine_cmd), engines_log))
        try:
            client = ipyparallel.Client(profile=args.profile)
            while True:  # in short steps, to notice a launch that failed
                try:
                    client.wait_for_engines(args.num_proc, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                    break
                except TimeoutError:
                    if launcher.poll() is not None:
                        return fail("bfrun exited with code {} before the engines registered; see {}".format(
                            launcher.returncode, engines_log))
                    if time.monotonic() > deadline:
                        raise
            pids["engines"] = client[:].apply_sync(engine_identity)
            client.close()
        except Exception as exc:  # pylint: disable=broad-except
            if interrupted:
                raise _Interrupted(interrupted[0]) from exc
            return fail("the engines did not register ({}); see {}".format(exc, logdir))
        if interrupted:
            raise _Interrupted(interrupted[0])
        _write_pids(pdir, pids)
    except BaseException:  # Ctrl-C: leave nothing running
        abandon()
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    print("ibfrun: {} engines are up. In Python: `import ipyparallel as ipp; "
          "rc = ipp.Client(profile={!r})`; stop with `ibfrun stop --ipython-profile {}`".format(
              args.num_proc, args.profile, args.profile))
    return 0


def _stop_pids(pids: dict, grace: float = 10.0) -> None:
    """SIGTERM bfrun (it ends the MPI job), then the controller; SIGKILL after ``grace``."""
    for key in ("bfrun", "controller"):
        pid = pids.get(key)
        if not _ours(pids, key):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)  # each was started as a session/group leader
        except OSError:
            continue
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def stop(args) -> int:
    """``ibfrun stop``: end the engines and the controller recorded for the profile."""
    try:
        pdir = profile_dir(args.profile, create=False)
    except Exception:  # pylint: disable=broad-except
        print("ibfrun: no IPython profile {!r}".format(args.profile), file=sys.stderr)
        return 1
    pids = _read_pids(pdir)
    if not pids:
        print("ibfrun: no cluster recorded for profile {!r}".format(args.profile),
              file=sys.stderr)
        return 1
    if "started" not in pids:  # written by an ibfrun without start-time checks
        alive = {k: pids[k] for k in ("bfrun", "controller") if _alive(pids.get(k))}
        if alive:
            print("ibfrun: the record of profile {!r} has no start times, so it cannot be checked that "
                  "these live processes are its cluster: {}; stop them yourself (record kept: {})".format(
                      args.profile, alive, os.path.join(pdir, PID_FILE)), file=sys.stderr)
            return 1
    running = [k for k in ("bfrun", "controller") if _ours(pids, k)]
    _stop_pids(pids)
    os.remove(os.path.join(pdir, PID_FILE))
    if not running:
        print("ibfrun: the cluster recorded for profile {!r} was no longer running (record "
              "removed)".format(args.profile))
        return 0
    print("ibfrun: stopped the cluster of profile {!r}".format(args.profile))
    return 0


def interrupt_hanged_processes(profile: str = "bluefog") -> int:
    """Send SIGINT to this machine's engines of ``profile``; returns how many were signalled."""
    import socket  # pylint: disable=import-outside-toplevel
    from IPython.core.profiledir import ProfileDirError  # pylint: disable=C0415
    try:
        pdir = profile_dir(profile, create=False)
    except ProfileDirError:
        return 0  # no such profile: no engines
    count, here = 0, socket.gethostname()
    for engine in _read_pids(pdir).get("engines", []):
        host, pid, started = (list(engine) + [None])[:3]
        if host == here and _same_process(pid, started):
            os.kill(pid, signal.SIGINT)
            count += 1
    return count


def main(argv=None) -> int:
    """Entry point of ``ibfrun``; returns the exit code."""
    parser = make_parser()
    args = parser.parse_args(glue_extra_mpi_flags(sys.argv[1:] if argv is None else argv))
    if args.version:
        print(bluefog_version())
        return 0
    if args.action is None:
        parser.error("choose an action: start or stop")
    hosts = None
    if args.action == "start":
        if args.num_proc < 1:
            print("ibfrun: -np must be at least 1", file=sys.stderr)
            return 2
        try:
            hosts = hosts_of(args)
        except (OSError, ValueError) as exc:
            print("ibfrun: " + str(exc), file=sys.stderr)
            return 2
    try:
        import ipyparallel  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    except ImportError:
        print("ibfrun: " + INSTALL_HINT, file=sys.stderr)
        return 1
    if args.action == "stop":
        return stop(args)
    try:
        return start(args, hosts)
    except KeyboardInterrupt as exc:
        print("ibfrun: interrupted; what this start had launched was stopped", file=sys.stderr)
        signum = getattr(exc, "signum", signal.SIGINT)
        return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
