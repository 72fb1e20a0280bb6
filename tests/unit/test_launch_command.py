"""Unit tests of bfrun's command construction and MPI vendor detection (no MPI needed)."""

import os
import stat
import sys

import pytest

from bluefog.run import launch_command as lc
from bluefog.run import mpi_vendor
from bluefog.run.mpi_vendor import MPICH, OPENMPI, UNKNOWN, VendorInfo
from bluefog.run import run as bfrun

OMPI5_VERSION = ("mpirun (Open MPI) 5.0.11\n\n"
                 "Report bugs to https://www.open-mpi.org/community/help/\n")
OMPI4_VERSION = ("mpirun (Open MPI) 4.1.5\n\n"
                 "Report bugs to http://www.open-mpi.org/community/help/\n")
MPICH4_VERSION = """HYDRA build details:
    Version:                                 4.1.2
    Release Date:                            Wed Jun  7 15:22:45 CDT 2023
    CC:                              gcc
    Configure options:                       '--prefix=/usr' '--with-device=ch4:ofi'
    Process Manager:                         pmi
    Launchers available:                     ssh rsh fork slurm ll lsf sge manual persist
    Topology libraries available:            hwloc
    Resource management kernels available:   user slurm ll lsf sge pbs cobalt
    Demux engines available:                 poll select
"""
INTEL_VERSION = "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19)\n"

OMPI = VendorInfo(OPENMPI, (5, 0, 11))
OMPI4 = VendorInfo(OPENMPI, (4, 1, 5))
HYDRA = VendorInfo(MPICH, (4, 1, 2))
ROOT = lc.HostFacts(is_root=True, cpu_count=2, local_names=frozenset({"myhost"}))
USER = lc.HostFacts(is_root=False, cpu_count=8, local_names=frozenset({"myhost"}))
CMD = ["python", "x.py"]
GUARD = ["/py", "-m", "bluefog.run.run", "--bf-rank-guard"]


def settings(num_proc=4, **kw):
    kw.setdefault("command", CMD)
    return lc.LaunchSettings(num_proc=num_proc, **kw)


def ompi(s, facts=ROOT, environ=None, vendor=OMPI):
    return lc.build_launch("mpirun", vendor, s, facts, environ or {"PATH": "/bin"})


def hydra(s, facts=ROOT, environ=None):
    return lc.build_launch("mpiexec", HYDRA, s, facts, environ or {"PATH": "/bin"}, GUARD)


# ---------------------------------------------------------------- vendor detection
@pytest.mark.parametrize("text,name,version", [
    (OMPI5_VERSION, OPENMPI, (5, 0, 11)),
    (OMPI4_VERSION, OPENMPI, (4, 1, 5)),
    (MPICH4_VERSION, MPICH, (4, 1, 2)),
    (INTEL_VERSION, MPICH, (2021, 10)),
    ("srun: unknown option --version\n", UNKNOWN, ()),
    ("", UNKNOWN, ()),
])
def test_parse_version_output(text, name, version):
    info = mpi_vendor.parse_version_output(text)
    assert (info.name, info.version) == (name, version)


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_detect_vendor_runs_version(tmp_path):
    fake = _script(tmp_path / "mpiexec", "cat <<'EOF'\n" + MPICH4_VERSION + "EOF\n")
    assert mpi_vendor.detect_vendor(fake).name == MPICH
    assert mpi_vendor.detect_vendor(str(tmp_path / "missing")).name == UNKNOWN


def test_find_launcher_prefix_forms(tmp_path):
    (tmp_path / "inst" / "bin").mkdir(parents=True)
    want = _script(tmp_path / "inst" / "bin" / "mpirun", "exit 0\n")
    assert mpi_vendor.find_launcher(str(tmp_path / "inst")) == want
    (tmp_path / "flat").mkdir()
    want = _script(tmp_path / "flat" / "mpiexec", "exit 0\n")
    assert mpi_vendor.find_launcher(str(tmp_path / "flat")) == want
    want = _script(tmp_path / "my-mpirun", "exit 0\n")
    assert mpi_vendor.find_launcher(str(tmp_path / "my-")) == want
    with pytest.raises(FileNotFoundError, match="--prefix"):
        mpi_vendor.find_launcher(str(tmp_path / "nothing"))


def test_find_launcher_prefers_venv_over_path(tmp_path, monkeypatch):
    (tmp_path / "venv").mkdir()
    (tmp_path / "path").mkdir()
    venv = _script(tmp_path / "venv" / "mpirun", "exit 0\n")
    _script(tmp_path / "path" / "mpirun", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))
    assert mpi_vendor.find_launcher() == venv
    os.remove(venv)
    assert mpi_vendor.find_launcher() == str(tmp_path / "path" / "mpirun")


# ---------------------------------------------------------------- hosts
def test_parse_hosts_and_hostfile():
    assert lc.parse_hosts("a:2,b:3,c") == [("a", 2), ("b", 3), ("c", 1)]
    with pytest.raises(ValueError):
        lc.parse_hosts(" , ")
    for bad in ("localhost:x", "a:2,b:two", "localhost:0"):  # used to pass as a host named "localhost:x"
        with pytest.raises(ValueError, match="bad host entry"):
            lc.parse_hosts(bad)
    text = "# cluster\nnode1 slots=4\nnode2:2\n\nnode3  # default slots\n"
    assert lc.parse_hostfile_text(text) == [("node1", 4), ("node2", 2), ("node3", None)]


def test_oversubscribe_rules():
    facts = lc.HostFacts(cpu_count=2, local_names=frozenset({"me"}))
    assert not lc.needs_oversubscribe(2, None, facts)
    assert lc.needs_oversubscribe(3, None, facts)
    assert lc.needs_oversubscribe(4, [("localhost", 4)], facts)   # 4 local ranks > 2 cores
    assert lc.needs_oversubscribe(3, [("me", 2)], facts)          # only local, np > slots
    assert not lc.needs_oversubscribe(4, [("me", 2), ("far", 2)], facts)
    assert not lc.needs_oversubscribe(6, [("far", 2), ("away", 2)], facts)  # mpirun decides
    assert lc.needs_oversubscribe(5, [("me", 4), ("far", 1)], facts)
    assert lc.place_ranks(5, [("a", 2), ("b", 2)], facts) == [3, 2]


# ---------------------------------------------------------------- Open MPI
def test_openmpi_root_localhost():
    spec = ompi(settings(4))
    assert spec.args == ["mpirun", "--allow-run-as-root", "-np", "4", "--oversubscribe",
                         "--bind-to", "none", "--map-by", "slot", "--mca", "pml", "ob1",
                         "--mca", "btl", "^openib", "--mca", "osc", "^ucx"] + CMD
    assert spec.env == {"PATH": "/bin"}


def test_openmpi_non_root_enough_cores():
    args = ompi(settings(4), facts=USER).args
    assert "--allow-run-as-root" not in args and "--oversubscribe" not in args


def test_openmpi_hosts_forward_environment():
    env = {"PATH": "/bin", "HOME": "/root", "OLDPWD": "/x", "BASH_FUNC_f%%": "() { :; }",
           "bad-name": "1", "MY_VAR": "a b"}
    args = ompi(settings(4, hosts=lc.parse_hosts("myhost:2,far:2"), hosts_arg="myhost:2,far:2",
                         timeline_filename="/tmp/tl"), facts=USER, environ=env).args
    assert args[args.index("-H") + 1] == "myhost:2,far:2"
    forwarded = [args[i + 1] for i, a in enumerate(args) if a == "-x"]
    assert forwarded == ["BLUEFOG_TIMELINE=/tmp/tl", "HOME", "MY_VAR", "PATH"]
    assert args[-2:] == CMD


def test_openmpi_local_hosts_do_not_forward_environment():
    args = ompi(settings(2, hosts=[("localhost", 2)], hosts_arg="localhost:2"), facts=USER,
                environ={"PATH": "/bin", "HOME": "/r"}).args
    assert "-x" not in args and "--oversubscribe" not in args


def test_openmpi_hostfile_is_passed_verbatim():
    s = settings(4, hosts=[("n1", 4), ("n2", 4)], hostfile="/etc/hosts.mpi")
    args = ompi(s, facts=USER).args
    assert args[args.index("--hostfile") + 1] == "/etc/hosts.mpi" and "-H" not in args


def test_openmpi_ssh_port_nic_infiniband():
    args = ompi(settings(2, ssh_port=2222, network_interface="eth1", use_infiniband=True),
                facts=USER).args
    text = " ".join(args)
    assert ["--mca", "plm_rsh_args", "-p 2222"] == args[args.index("plm_rsh_args") - 1:][:3]
    assert "--mca btl_tcp_if_include eth1" in text
    assert "-x NCCL_SOCKET_IFNAME=eth1" in text
    assert "--mca pml ucx --mca osc ucx" in text and "^ucx" not in text
    args4 = ompi(settings(2, use_infiniband=True), facts=USER, vendor=OMPI4).args
    assert "openib,vader,self" in args4


def test_openmpi_extra_flags_quoting_and_env():
    spec = ompi(settings(2, extra_mpi_flags="--mca btl_tcp_links 2 -x 'A=b c' --tag-output",
                         verbose=True, timeline_filename="tl/"), facts=USER)
    i = spec.args.index("--tag-output")
    assert spec.args[i - 5:i] == ["--mca", "btl_tcp_links", "2", "-x", "A=b c"]
    assert spec.args[i + 1:] == CMD
    assert spec.env["BLUEFOG_LOG_LEVEL"] == "debug" and spec.env["BLUEFOG_TIMELINE"] == "tl/"
    assert "-x" in spec.args and "BLUEFOG_LOG_LEVEL=debug" in spec.args


@pytest.mark.parametrize("extra, dropped", [
    ("--mca btl tcp,self", ["btl"]),
    ("-mca pml ucx --mca osc rdma", ["pml", "osc"]),
    ("--map-by node", ["--map-by"]),
    ("--map-by=ppr:1:node", ["--map-by"]),
    ("--npernode 1", ["--map-by"]),
    ("--bind-to core", ["--bind-to"]),
    ("--mca plm_rsh_args '-p 2200'", ["plm_rsh_args"]),
    ("-x btl --tag-output", []),  # an environment variable named like an MCA parameter
])
def test_openmpi_extra_flags_replace_the_defaults_they_set(extra, dropped):
    """Open MPI 5 refuses an option listed twice with different values
    ("an MCA parameter was listed more than once"), so a default bfrun would
    add is left out when --extra-mpi-flags sets it; the others stay."""
    args = ompi(settings(2, extra_mpi_flags=extra, ssh_port=2222), facts=USER).args
    extra_at = len(args) - len(CMD) - len(lc.shlex.split(extra))
    defaults = args[:extra_at]
    assert args[extra_at:] == lc.shlex.split(extra) + CMD
    for name in ("--bind-to", "--map-by"):
        assert (name in defaults) == (name not in dropped), (name, defaults)
    for name in ("pml", "btl", "osc", "plm_rsh_args"):
        given = any(defaults[i] == "--mca" and defaults[i + 1] == name for i in range(len(defaults) - 1))
        assert given == (name not in dropped), (name, defaults)


# ---------------------------------------------------------------- MPICH / Hydra
def test_mpich_basic_no_root_flags():
    spec = hydra(settings(4))
    assert spec.args == ["mpiexec", "-np", "4", "-genvall"] + GUARD + CMD
    assert spec.env == {"PATH": "/bin"}


def test_mpich_hosts_hostfile_nic_ssh_env():
    s = settings(4, hosts=[("n1", 2), ("n2", None)], hostfile="hf", ssh_port=2200,
                 network_interface="ib0", timeline_filename="/t/", verbose=True,
                 extra_mpi_flags="-prepend-rank")
    spec = hydra(s)
    a = spec.args
    assert a[a.index("-hosts") + 1] == "n1:2,n2:1" and "-f" not in a
    assert a[a.index("-iface") + 1] == "ib0"
    assert "--allow-run-as-root" not in a and "--oversubscribe" not in a
    genv = [tuple(a[i + 1:i + 3]) for i, x in enumerate(a) if x == "-genv"]
    assert genv == [("BLUEFOG_LOG_LEVEL", "debug"), ("BLUEFOG_TIMELINE", "/t/"),
                    ("NCCL_SOCKET_IFNAME", "ib0")]
    assert a[a.index("-prepend-rank") + 1:] == GUARD + CMD
    assert spec.env["HYDRA_LAUNCHER_EXTRA_ARGS"] == "-p 2200"


def test_errors():
    with pytest.raises(ValueError, match="unsupported"):
        lc.build_launch("srun", VendorInfo(UNKNOWN), settings(2), ROOT, {})
    with pytest.raises(ValueError, match="command"):
        ompi(settings(2, command=[]))
    with pytest.raises(ValueError, match="-np"):
        ompi(settings(0))


# ---------------------------------------------------------------- bfrun argument parsing
def test_parser_forms(tmp_path):
    p = bfrun.make_parser()
    a = p.parse_args(["-np", "2", "-H", "a:1,b:1", "-p", "22", "--network-interface", "eth0",
                      "--extra-mpi-flags", "-x FOO", "--timeline-filename", "tl",
                      "python", "-c", "print(1)", "--verbose"])
    assert (a.num_proc, a.hosts, a.ssh_port, a.nic, a.extra_mpi_flags, a.timeline) == \
        (2, "a:1,b:1", 22, "eth0", "-x FOO", "tl")
    assert a.command == ["python", "-c", "print(1)", "--verbose"] and not a.verbose
    with pytest.raises(SystemExit):
        p.parse_args(["-np", "2", "-H", "a", "--hostfile", "f", "x"])
    hf = tmp_path / "hosts"
    hf.write_text("n1 slots=2\nn2 slots=2\n")
    s = bfrun.settings_from_args(p.parse_args(["-np", "4", "-hostfile", str(hf), "--", "x"]))
    assert s.hosts == [("n1", 2), ("n2", 2)] and s.hostfile == str(hf) and s.command == ["x"]


def test_blanks_in_the_host_list_do_not_reach_open_mpi():
    s = bfrun.settings_from_args(bfrun.make_parser().parse_args(["-np", "2", "-H", " a:1, b :1 ,", "x"]))
    assert s.hosts == [("a", 1), ("b", 1)] and s.hosts_arg == "a:1,b:1"
    args = ompi(s, facts=USER).args
    assert args[args.index("-H") + 1] == "a:1,b:1"


@pytest.mark.parametrize("spec", ["h1 h2", "h1:2 h2:2", "a:1 2"])
def test_a_blank_inside_a_host_entry_is_an_error(spec):
    """(Before, blanks were dropped: "h1 h2" became the host "h1h2", and ssh later failed
    to resolve it.)"""
    with pytest.raises(ValueError, match="a blank inside a host name or a count"):
        lc.parse_hosts(spec)


def test_main_requires_np(capsys):
    with pytest.raises(SystemExit):
        bfrun.main(["python", "x.py"])
    assert "-np" in capsys.readouterr().err
    assert bfrun.main(["-v"]) == 0
    assert capsys.readouterr().out.strip() == bfrun.bluefog_version()


# ---------------------------------------------------------------- hostfiles, argv
def test_hostfile_counts_are_checked_and_hydra_style_is_detected():
    assert lc.parse_hostfile_text("n1 slots=2 max_slots=4\nn2\n") == [("n1", 2), ("n2", None)]
    assert lc.parse_hostfile_text("fe80::1\n") == [("fe80::1", None)]   # IPv6, no count
    for bad in ("n1 slots=x\n", "n1 slots=0\n", "n1:0\n", "n1:two\n", ":3\n"):
        with pytest.raises(ValueError, match="bad hostfile line 1"):
            lc.parse_hostfile_text(bad)
    assert lc.hostfile_is_hydra_style("# c\nn1 slots=2\nn2:2\n")
    assert not lc.hostfile_is_hydra_style("# a:b\nn1 slots=2\nfe80::1\n")


def test_hydra_style_hostfile_reaches_open_mpi_as_host_list(tmp_path):
    hf = tmp_path / "hosts"
    hf.write_text("n1:2\nn2:3\n")
    p = bfrun.make_parser()
    s = bfrun.settings_from_args(p.parse_args(["-np", "5", "--hostfile", str(hf), "x"]))
    assert s.hosts == [("n1", 2), ("n2", 3)] and s.hostfile is None
    args = ompi(s, facts=USER).args
    assert args[args.index("-H") + 1] == "n1:2,n2:3" and "--hostfile" not in args
    hf.write_text("n1 slots=2\n")                   # Open MPI's own form is still passed as is
    s = bfrun.settings_from_args(p.parse_args(["-np", "2", "--hostfile", str(hf), "x"]))
    assert s.hostfile == str(hf)


def test_extra_mpi_flags_may_start_with_a_dash():
    glue = bfrun.glue_extra_mpi_flags
    assert glue(["-np", "2", "--extra-mpi-flags", "--oversubscribe", "python", "x.py"]) == \
        ["-np", "2", "--extra-mpi-flags=--oversubscribe", "python", "x.py"]
    # the command's own arguments are never touched
    cmd = ["-np", "2", "python", "x.py", "--extra-mpi-flags", "-v"]
    assert glue(cmd) == cmd
    assert glue(["-np", "2", "--", "--extra-mpi-flags", "-v"]) == ["-np", "2", "--", "--extra-mpi-flags", "-v"]
    a = bfrun.make_parser().parse_args(glue(["-np", "2", "--extra-mpi-flags", "-x FOO --tag-output",
                                             "--verbose", "python"]))
    assert a.extra_mpi_flags == "-x FOO --tag-output" and a.verbose and a.command == ["python"]


def test_bfrun_rejects_a_bad_hostfile_with_a_usage_error(tmp_path, capsys):
    hf = tmp_path / "hosts"
    hf.write_text("n1 slots=zero\n")
    with pytest.raises(SystemExit) as info:
        bfrun.main(["-np", "2", "--hostfile", str(hf), "python", "x.py"])
    assert info.value.code == 2 and "bad hostfile line 1" in capsys.readouterr().err


def test_ibfrun_forwards_flags_and_rejects_bad_hosts(tmp_path, capsys):
    from bluefog.run import interactive_run as ib
    p = ib.make_parser()
    a = p.parse_args(glue_ib(["start", "-np", "2", "--extra-mpi-flags", "--oversubscribe", "-H", "a:1,b:1"]))
    out = ib.bfrun_args(a, ["eng"])
    assert "--extra-mpi-flags=--oversubscribe" in out and out[-1] == "eng"
    assert bfrun.make_parser().parse_args(out[3:]).extra_mpi_flags == "--oversubscribe"
    for bad in (["-H", "a:x"], ["--hostfile", str(tmp_path / "missing")]):
        assert ib.main(["start", "-np", "2"] + bad) == 2
        assert capsys.readouterr().err.startswith("ibfrun: ")
    assert ib.main(["start", "-np", "0"]) == 2
    assert "-np must be at least 1" in capsys.readouterr().err


def test_ibfrun_never_signals_a_process_it_did_not_start(tmp_path, monkeypatch):
    """A record left from before a reboot (or any record whose pid now belongs to another
    process) must not make `ibfrun stop` kill that process, nor `start` refuse."""
    import json
    import subprocess
    from bluefog.run import interactive_run as ib
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    pdir = ib.profile_dir("stale")
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record_path = tmp_path / "ipython" / "profile_stale" / ib.PID_FILE
        # A record without start times (an older ibfrun's) cannot be checked: nothing is
        # signalled, the record is kept, and stop says so.
        with open(record_path, "w") as f:
            json.dump({"controller": other.pid, "bfrun": other.pid}, f)
        assert ib.main(["stop", "--ipython-profile", "stale"]) == 1
        assert other.poll() is None, "ibfrun stop killed an unrelated process"
        assert record_path.exists()
        # Another start time: someone else's process now has that pid.
        record = {"controller": other.pid, "started": {"controller": "1"}}
        with open(record_path, "w") as f:
            json.dump(record, f)
        assert not ib._ours(record, "controller")  # pylint: disable=protected-access
        assert ib.main(["stop", "--ipython-profile", "stale"]) == 0
        assert other.poll() is None, "ibfrun stop killed an unrelated process"
        assert not record_path.exists()
        record = {"controller": other.pid, "started": {"controller": ib._start_time(other.pid)}}  # pylint: disable=protected-access
        assert ib._ours(record, "controller")  # pylint: disable=protected-access
        assert ib.interrupt_hanged_processes("no-such-profile") == 0
    finally:
        other.kill()
        other.wait()


def glue_ib(argv):  # ibfrun parses its argv the same way
    return bfrun.glue_extra_mpi_flags(argv)
