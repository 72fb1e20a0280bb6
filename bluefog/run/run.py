"""``bfrun``: launch a BlueFog job with Open MPI's ``mpirun`` or MPICH's Hydra ``mpiexec``.

Usage::

    bfrun -np N [-H h1:n1,h2:n2 | --hostfile F] [-p SSH_PORT] [--network-interface NIC]
          [--use-infiniband] [--extra-mpi-flags "..."] [--timeline-filename P] [--verbose]
          [--prefix P] [-v] command ...

``--prefix P`` names the MPI installation to use: ``P/bin/mpirun`` if it exists, else
``P/mpirun`` (P is the directory holding the launcher), else the literal ``P + "mpirun"`` (the
original BlueFog's "string prepended to mpirun"); ``mpiexec`` is tried the same way after
``mpirun``.  Without ``--prefix`` the launcher next to ``sys.executable`` (the virtualenv's
``bin``) wins over the one on ``PATH``.

The launcher is started with an argument list (no shell) in a new session.  SIGINT, SIGTERM and
SIGHUP are forwarded to its process group (the third signal becomes SIGKILL).  bfrun exits with
the job's exit code (128+N when the launcher died of signal N).  When the job fails, bfrun ends
every process left behind on this machine: on Linux it is a child subreaper, so orphaned ranks
are re-parented to it and can be found.

Hydra, unlike Open MPI, does not end a job when a rank that never called MPI_Init exits with a
non-zero code (it does when a rank dies of a signal or exits after MPI_Init without
MPI_Finalize).  So under Hydra every rank runs under a small guard (``python -m
bluefog.run.run --bf-rank-guard cmd ...``) that, when its command fails, reports the rank and
exit code on stderr and kills itself with SIGKILL, which makes Hydra end the job.  Neither MPI
can end a job where a failing rank blocks in MPI_Finalize (e.g. via an atexit handler) while
the others wait for it in a collective; the program must call MPI_Abort in that case.
"""

import argparse
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bluefog.run import launch_command as lc
from bluefog.run import mpi_vendor

RANK_GUARD_FLAG = "--bf-rank-guard"
# Where each guarded rank that failed leaves "<monotonic ns> <exit code>" (see launch()).
RANK_STATUS_ENV = "BLUEFOG_RANK_STATUS_DIR"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
KILL_GRACE_S = 10.0  # after a forwarded signal, SIGKILL the launcher if still alive then


def bluefog_version() -> str:
    """``bluefog.__version__``, else the installed distribution's version, else "unknown"."""
    try:
        from bluefog import __version__  # pylint: disable=import-outside-toplevel
        return str(__version__)
    except Exception:  # pylint: disable=broad-except
        pass
    try:
        import importlib.metadata as md  # pylint: disable=import-outside-toplevel
        return md.version("bluefog")
    except Exception:  # pylint: disable=broad-except
        return "unknown"


def make_parser() -> argparse.ArgumentParser:
    """The ``bfrun`` argument parser (flags of the BlueFog 0.3 ``bfrun``)."""
    p = argparse.ArgumentParser(prog="bfrun", allow_abbrev=False,
                                description="Launch a BlueFog job through mpirun/mpiexec.")
    p.add_argument("-v", "--version", action="store_true", help="print the BlueFog version")
    p.add_argument("-np", "--num-proc", type=int, dest="num_proc", help="number of processes")
    p.add_argument("-p", "--ssh-port", type=int, dest="ssh_port", help="ssh port")
    p.add_argument("--network-interface", dest="nic", help="network interface to use, e.g. eth0")
    group = p.add_mutually_exclusive_group()
    group.add_argument("-H", "--hosts", dest="hosts", help="h1:n1,h2:n2 (host:slots list)")
    group.add_argument("-hostfile", "--hostfile", dest="hostfile",
                       help="file with lines 'host slots=N' (or 'host:N')")
    p.add_argument("--use-infiniband", action="store_true", help="use InfiniBand (UCX)")
    p.add_argument("--extra-mpi-flags", dest="extra_mpi_flags", default="",
                   help="extra launcher flags, split like a shell would")
    p.add_argument("--prefix", dest="prefix", help="MPI installation (see bfrun docs)")
    p.add_argument("--verbose", action="store_true",
                   help="print the launch command and set BLUEFOG_LOG_LEVEL=debug")
    p.add_argument("--timeline-filename", dest="timeline", help="sets BLUEFOG_TIMELINE")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    return p


_VALUE_FLAGS = frozenset({"-np", "--num-proc", "-p", "--ssh-port", "--network-interface", "-H",
                          "--hosts", "-hostfile", "--hostfile", "--extra-mpi-flags", "--prefix",
                          "--timeline-filename", "--ipython-profile", "--timeout"})


def glue_extra_mpi_flags(argv):
    """``--extra-mpi-flags --oversubscribe`` as ``--extra-mpi-flags=--oversubscribe``.

    argparse takes a value that starts with ``-`` for an option and fails; the flags to pass
    are exactly such values.  Only the launcher's own options are looked at: the walk stops at
    ``--`` or at the first word of the command, whose arguments are left alone.
    """
    out, i = list(argv), 0
    while i < len(out):
        arg = out[i]
        if arg == "--extra-mpi-flags" and i + 1 < len(out):
            out[i:i + 2] = ["--extra-mpi-flags=" + out[i + 1]]
            i += 1
        elif arg in _VALUE_FLAGS:
            i += 2
        elif arg.startswith("-") and arg != "--" or arg in ("start", "stop"):
            i += 1
        else:
            break
    return out


def _usable_cpus() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def core_count() -> int:
    """Physical cores this process may use (Open MPI's default slot count), else logical CPUs."""
    cpus, cores = _usable_cpus(), set()
    for cpu in cpus:
        base = "/sys/devices/system/cpu/cpu{}/topology/".format(cpu)
        try:
            with open(base + "physical_package_id") as f1, open(base + "core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores) or len(cpus))


def host_facts(need_names: bool) -> lc.HostFacts:
    """Facts about this machine; host names are resolved only when ``need_names``."""
    names = set()
    if need_names:
        hostname = socket.gethostname()
        names.update({hostname, hostname.split(".")[0]})
        try:
            name, aliases, addrs = socket.gethostbyname_ex(hostname)
            names.update([name] + aliases + addrs)
        except OSError:
            pass
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return lc.HostFacts(is_root=is_root, cpu_count=core_count(), local_names=frozenset(names))


def settings_from_args(args) -> lc.LaunchSettings:
    """Turn parsed arguments into :class:`LaunchSettings` (reads the hostfile)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    hosts = None
    if args.hosts:
        hosts = lc.parse_hosts(args.hosts)
    hostfile = args.hostfile
    if hostfile:
        with open(hostfile) as f:
            text = f.read()
        hosts = lc.parse_hostfile_text(text)
        if not hosts:
            raise ValueError("hostfile {} names no host".format(hostfile))
        if lc.hostfile_is_hydra_style(text):
            hostfile = None  # Open MPI gets the parsed hosts as -H instead
    return lc.LaunchSettings(
        num_proc=args.num_proc, command=command, hosts=hosts,
        # as parsed: without the blanks parse_hosts allows (Open MPI rejects them)
        hosts_arg=",".join(lc.host_items(args.hosts)) if args.hosts else None,
        hostfile=hostfile, ssh_port=args.ssh_port, network_interface=args.nic,
        use_infiniband=args.use_infiniband, extra_mpi_flags=args.extra_mpi_flags,
        timeline_filename=args.timeline, verbose=args.verbose)


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _death_signal_preexec(libc, sig):
    """A preexec_fn asking the kernel to send ``sig`` to the child when its parent dies."""
    if libc is None:
        return None
    return lambda: libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _children_of() -> dict:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/{}/stat".format(entry)) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            table.setdefault(ppid, []).append(int(entry))
    return table


def descendants(pid: int, prune=(), table=None) -> list:
    """All live descendants of ``pid`` (Linux /proc; empty elsewhere), not entering ``prune``;
    ``table``: a :func:`_children_of` result to use instead of reading /proc again."""
    if not os.path.isdir("/proc"):
        return []
    table, out, todo = table if table is not None else _children_of(), [], [pid]
    while todo:
        for child in table.get(todo.pop(), []):
            if child in prune:
                continue
            out.append(child)
            todo.append(child)
    return out


def _reap(pids):
    """Collect the exit status of those of ``pids`` that are our (adopted) children."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def _signal_all(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def cleanup_leftovers(pgid: int, spare=(), grace: float = 3.0) -> None:
    """End the launcher's process group and every descendant of bfrun still alive, except the
    processes in ``spare`` (children that existed before the launch) and their descendants."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace
    while True:
        left = descendants(os.getpid(), spare)
        _reap(left)
        left = [pid for pid in left if os.path.exists("/proc/{}".format(pid))]
        if not left:
            return
        if time.monotonic() >= deadline:
            _signal_all(left, signal.SIGKILL)
            time.sleep(0.1)
            _reap(left)
            return
        _signal_all(left, signal.SIGTERM)
        time.sleep(0.1)


# The launchers' own processes (under bfrun's launcher): not the job's.
_MPI_DAEMONS = frozenset({"mpirun", "mpiexec", "prterun", "prted", "orterun", "orted", "hydra_pmi_proxy",
                          "mpiexec.hydra"})


def _comm_and_state(pid: int):
    """(command name, state letter) of a process, or None once it is gone."""
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, text.rsplit(")", 1)[1].split()[0]


class OrphanWatch:
    """Ends processes that outlived the job's ranks and hold the launcher up.

    A rank's helper process in a session of its own survives the rank, is adopted by bfrun
    (the child subreaper), and keeps the rank's output pipe open; the launcher then waits for
    that pipe, long after every rank is gone (until the helper exits, or for good). Once no job
    process is left under the launcher (only MPI's own daemons) while bfrun holds such adopted
    processes for ``grace`` seconds, they are sent SIGTERM, and ``kill_after`` s later SIGKILL."""

    def __init__(self, launcher_pid: int, spare, grace: float = 1.0, kill_after: float = 3.0):
        self.launcher_pid, self.spare, self.grace, self.kill_after = launcher_pid, frozenset(spare), grace, kill_after
        self.since = None
        self.termed_at = None

    def _job_alive(self, table) -> bool:
        for pid in descendants(self.launcher_pid, table=table):
            info = _comm_and_state(pid)
            if info and info[1] != "Z" and info[0] not in _MPI_DAEMONS:
                return True
        return False

    def check(self) -> None:
        table = _children_of()  # (one read of /proc per check)
        adopted = [pid for pid in table.get(os.getpid(), [])
                   if pid != self.launcher_pid and pid not in self.spare]
        _reap(adopted)
        adopted = [pid for pid in adopted if (_comm_and_state(pid) or ("", "Z"))[1] != "Z"]
        if not adopted or self._job_alive(table):
            self.since = self.termed_at = None
            return
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since < self.grace:
            return
        tree = adopted + [pid for root in adopted for pid in descendants(root, table=table)]
        if self.termed_at is None:
            self.termed_at = now
            _signal_all(tree, signal.SIGTERM)
        elif now - self.termed_at > self.kill_after:
            _signal_all(tree, signal.SIGKILL)


def first_rank_failure(status_dir):
    """The exit code (negative: killed by that signal) of the guarded rank on this machine that
    failed first, from the files the rank guards left in ``status_dir``; None if none did."""
    found = []
    for entry in os.listdir(status_dir) if status_dir and os.path.isdir(status_dir) else []:
        try:
            with open(os.path.join(status_dir, entry)) as f:
                when, code = f.read().split()
            found.append((int(when), int(code)))
        except (OSError, ValueError):
            continue
    return min(found)[1] if found else None


def launch(spec: lc.LaunchSpec, status_dir=None) -> int:
    """Run the launcher described by ``spec`` and return the job's exit code. Under Hydra
    (``status_dir``: where the rank guards record failures) that is the code of the rank that
    failed first, as with Open MPI, not Hydra's own code (the guard's SIGKILL)."""
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    spare = frozenset(descendants(os.getpid()))
    proc = subprocess.Popen(spec.args, env=spec.env, start_new_session=True,
                            preexec_fn=_death_signal_preexec(libc, signal.SIGTERM))
    received, received_at = [], [0.0]

    def forward(signum, _frame):
        received.append(signum)
        received_at[0] = received_at[0] or time.monotonic()
        try:
            os.killpg(proc.pid, signum if len(received) < 3 else signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    orphans = OrphanWatch(proc.pid, spare) if libc is not None else None
    try:
        while proc.poll() is None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if orphans is not None:
                orphans.check()
            if received and time.monotonic() - received_at[0] > KILL_GRACE_S:
                try:  # the launcher ignored our signal
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rc = proc.returncode
        if rc != 0:
            cleanup_leftovers(proc.pid, spare)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc != 0 and received:  # ended on the user's request: report it like a shell would
        return 128 + int(received[0])
    if rc != 0:
        first = first_rank_failure(status_dir)
        rc = rc if first is None or first == 0 else first
    return 128 - rc if rc < 0 else rc


def run_rank_guard(command) -> int:
    """Run one rank's ``command``; if it fails, report it, kill what it left behind (the guard
    is a child subreaper) and SIGKILL ourselves so that Hydra ends the whole job (Hydra ignores
    a non-zero exit of a rank that never called MPI_Init)."""
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        child = subprocess.Popen(command, close_fds=False,
                                 preexec_fn=_death_signal_preexec(libc, signal.SIGKILL))
    except OSError as exc:
        print("bfrun: cannot run {}: {}".format(command[0], exc), file=sys.stderr, flush=True)
        rc, received = 127, []
    else:
        # The guard keeps its copy of the rank's PMI connection (PMI_FD) open: when
        # a rank that called MPI_Init dies, Hydra would otherwise see the
        # connection close and SIGKILL this guard before it records the rank's
        # exit code (bfrun then reported Hydra's 9). The guard's own death ends
        # the job, as before.
        received = []

        def forward(signum, _frame):
            received.append(signum)
            child.send_signal(signum)

        for sig in _FORWARDED + (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, forward)
        rc = child.wait()
    failed_at = time.monotonic_ns()  # (before the clean-up below: peers may fail meanwhile)
    if rc == 0:
        return 0
    left = descendants(os.getpid())  # e.g. a daemon holding the rank's stdout open
    _signal_all(left, signal.SIGKILL)
    _reap(left)
    status_dir = os.environ.get(RANK_STATUS_ENV)
    if status_dir:  # for bfrun's exit code (Hydra only reports this guard's SIGKILL)
        try:
            path = os.path.join(status_dir, "rank{}".format(os.environ.get("PMI_RANK", os.getpid())))
            with open(path, "w") as f:
                f.write("{} {}".format(failed_at, rc))
        except OSError:
            pass  # another machine's rank: bfrun falls back to Hydra's code
    if not received:
        what = "exited with code {}".format(rc) if rc > 0 else "died of signal {}".format(-rc)
        print("bfrun: rank {} {}; ending the job".format(os.environ.get("PMI_RANK", "?"), what),
              file=sys.stderr, flush=True)
    try:
        if rc < 0 and -rc not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-rc, signal.SIG_DFL)  # die of the child's signal: Hydra reports it
            os.kill(os.getpid(), -rc)
            time.sleep(0.5)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
    return rc  # not reached


def main(argv=None) -> int:
    """Entry point of ``bfrun``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == RANK_GUARD_FLAG:
        return run_rank_guard(argv[1:])
    parser = make_parser()
    args = parser.parse_args(glue_extra_mpi_flags(argv))
    if args.version:
        print(bluefog_version())
        return 0
    if args.num_proc is None:
        parser.error("the following arguments are required: -np/--num-proc")
    try:
        settings = settings_from_args(args)
        launcher = mpi_vendor.find_launcher(args.prefix)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    vendor = mpi_vendor.detect_vendor(launcher)
    guard = [sys.executable, "-m", "bluefog.run.run", RANK_GUARD_FLAG]
    try:
        spec = lc.build_launch(launcher, vendor, settings,
                               host_facts(settings.hosts is not None), os.environ, guard)
    except ValueError as exc:
        parser.error(str(exc))
    if args.verbose:
        changed = ["{}={}".format(k, shlex.quote(v)) for k, v in sorted(spec.env.items())
                   if os.environ.get(k) != v]
        try:
            print("bfrun: " + " ".join(changed + [shlex.quote(a) for a in spec.args]), flush=True)
        except BrokenPipeError:  # (`bfrun --verbose ... | true`): nobody reads; end as a pipe writer does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
            os.close(devnull)
            return 128 + signal.SIGPIPE
    status_dir = None
    if RANK_GUARD_FLAG in spec.args:
        status_dir = tempfile.mkdtemp(prefix="bfrun-ranks-")
        spec.env[RANK_STATUS_ENV] = status_dir
    try:
        return launch(spec, status_dir)
    except OSError as exc:
        print("bfrun: cannot start {}: {}".format(spec.args[0], exc), file=sys.stderr)
        return 127
    finally:
        if status_dir:
            shutil.rmtree(status_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
