"""Framework-neutral BlueFog basics: lifecycle, ranks, topology bookkeeping,
timeline. Both `bluefog.torch` and `bluefog.tensorflow` re-export one shared
instance, so a process that imports both has one init and one topology."""
import atexit
import contextlib
import copy
import ctypes
import difflib
import logging
import numbers
import sys
import threading
from typing import Callable, Dict, List, Optional, Tuple

import networkx as nx

from bluefog.common import topology_util
from bluefog.common.native import load_core

logger = logging.getLogger("bluefog")

# Status codes of the core (csrc/common/status.h).
_INVALID_ARGUMENT = 4
_PRECONDITION_ERROR = 2
_IN_PROGRESS = 5
# The core's refusal of an op submitted during this rank's skip-mode switch
# (kSwitchPending in csrc/common/operations.h).
SWITCH_PENDING = "set_skip_negotiate_stage() on this rank has not completed"


class _ControlOp:
    """A barrier or skip-mode switch that Python starts and then waits for in
    slices. The core writes its handle and, once done, its status here, so a
    KeyboardInterrupt right after either call loses neither."""
    __slots__ = ("handle", "status", "reason", "value")

    def __init__(self, value=None):
        self.handle = ctypes.c_int(-1)  # set when started
        self.status = ctypes.c_int(_IN_PROGRESS)  # the final status code, once done
        self.reason = ctypes.create_string_buffer(16384)  # its error text, once done
        self.value = value  # a switch's new value

NOT_INITIALIZED = "BlueFog has not been initialized; use bf.init()."


class NotInitializedError(ValueError):
    """A BlueFog call made before init() (or after shutdown()): a ValueError,
    as in BlueFog 0.3."""


def not_initialized(op: str, name: Optional[str] = None) -> NotInitializedError:
    """The error for op `op` (named `name`) called before init(), worded as
    the core words it."""
    what = op if name is None else f"{op} '{name}'"
    return NotInitializedError(f"{what}: BlueFog is not initialized: call bf.init() first")


def _raise_status(lib, code: int, what: str, message: Optional[str] = None):
    """ValueError or RuntimeError for a failed core call: `message`, or the
    core's last error text on this thread."""
    if message is None:
        message = lib.bluefog_last_error().decode("utf-8", "replace")
    if code in (_INVALID_ARGUMENT, _PRECONDITION_ERROR):
        raise ValueError(f"{what}: {message}")
    raise RuntimeError(f"{what}: {message}")


def _check_node_labels(topology: nx.DiGraph, n: int, op: str, what: str):
    """The nodes must be the ints 0 .. n-1 (node r is rank r)."""
    bad = [v for v in topology.nodes
           if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < n]
    if bad:
        raise TypeError("%s: the topology's nodes must be the %s 0..%d, got %s"
                        % (op, what, n - 1, sorted(map(repr, bad))[:5]))


class _RefusalReported:
    __slots__ = ("basics", "op", "name")

    def __init__(self, basics, op, name):
        self.basics, self.op, self.name = basics, op, name

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None and issubclass(kind, Exception):  # (not KeyboardInterrupt)
            self.basics.report_refusal(self.op, self.name, value)
        return False


class BlueFogBasics:
    """Wraps the C ABI of the core (ctypes releases the GIL around each call)."""

    def __init__(self):
        self._lib = load_core()
        self._lib.bluefog_last_error.restype = ctypes.c_char_p
        self._lib.bluefog_parse_config.restype = ctypes.c_char_p
        self._lib.bluefog_parse_config.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._lib.bluefog_config_keys.restype = ctypes.c_char_p
        self._lib.bluefog_init.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
        self._lib.bluefog_timeline_start_activity.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self._lib.bluefog_timeline_end_activity.argtypes = [ctypes.c_char_p]
        self._lib.bluefog_reject.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p]
        self._topology: Optional[nx.DiGraph] = None
        # A copy of the graph as set_topology saw it: what neighbor ops derive
        # their neighbors and weights from, and what the next set_topology is
        # compared with (the user may edit the graph load_topology returns in
        # place: such edits take effect when it is set again).
        self._topology_used: Optional[nx.DiGraph] = None
        self._is_topo_weighted = False
        # What neighbor ops derive from the topology, computed once per
        # set_topology (like the original, which fixed it in the core then).
        self._topo_cache = {}
        self._machine_topology: Optional[nx.DiGraph] = None
        self._is_machine_topo_weighted = False
        self._atexit_registered = False
        self._pending_barrier = None  # the _ControlOp of an interrupted barrier() (see barrier)
        self._pending_skip = None  # the _ControlOp of an interrupted set_skip_negotiate_stage()
        self._barrier_mu = threading.Lock()
        self._barrier_thread = None  # the thread inside barrier() or set_skip_negotiate_stage() now
        self._timeline_warned = False
        # Set by the window module: returns True while windows exist.
        self.windows_exist: Callable[[], bool] = lambda: False
        # Called when the core's state is gone (shutdown, or an init that
        # starts the core afresh): frontends drop what they kept of it.
        self.reset_hooks: List[Callable[[], None]] = []

    # ---- lifecycle ------------------------------------------------------
    def init(self, topology_fn: Optional[Callable[[int], nx.DiGraph]] = None, is_weighted: bool = False,
             comm=None, config: Optional[Dict[str, object]] = None):
        """Starts BlueFog (once per process; later calls are cheap) and resets the
        virtual topology to `topology_fn(size())`, or `ExponentialGraph(size())`.

        Args:
            topology_fn: callable size -> networkx.DiGraph for the initial topology.
            is_weighted: whether neighbor ops use the topology's edge weights.
            comm: an mpi4py communicator to run BlueFog on (default MPI_COMM_WORLD),
                e.g. a subset of the ranks of a larger MPI program.
            config: overrides of BLUEFOG_* settings, e.g. {"BLUEFOG_CYCLE_TIME": 1}.
                They take effect on the first init (settings are read once).
        """
        fcomm = 0
        if comm is not None:
            if not hasattr(comm, "py2f"):
                raise TypeError("init(comm=...) expects an mpi4py communicator, got %r" % type(comm).__name__)
            mpi = sys.modules.get("mpi4py.MPI")  # (never imported here: that would start MPI)
            if mpi is not None and comm == mpi.COMM_NULL:
                raise ValueError("init: comm is MPI.COMM_NULL (this process is not in the group BlueFog should "
                                 "run on); call init(comm=...) only on the ranks where the communicator is valid")
            fcomm = comm.py2f()
        overrides = self._config_lines(config)
        fresh = not self.is_initialized()
        code = self._lib.bluefog_init(1 if comm is not None else 0, fcomm, overrides.encode())
        if code != 0:
            _raise_status(self._lib, code, "bluefog init failed")
        if fresh:
            self._pending_barrier = None  # (one from before a core that stopped after an error)
            self._pending_skip = None
            self._run_reset_hooks()  # e.g. windows of a core that stopped after an error
        if not self._atexit_registered:
            atexit.register(self.shutdown)
            self._install_excepthook()
            self._atexit_registered = True
        if self.windows_exist():
            logger.warning("init: windows exist, so the topology is kept; free them (win_free) to change it")
            return
        topology = topology_fn(self.size()) if topology_fn else None
        # Reset even if the graph is equivalent; a bad one raises and keeps the old one.
        self._set_topology(topology, is_weighted, force=True)

    def _install_excepthook(self):
        # A rank that dies of an uncaught exception ends the whole job at once,
        # instead of leaving its peers waiting in ops it will never submit.
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            if self.is_initialized() and self.size() > 1 and not issubclass(kind, KeyboardInterrupt):
                sys.stdout.flush()
                sys.stderr.write(f"bluefog: rank {self.rank()} failed with an uncaught {kind.__name__}; "
                                 "aborting the job\n")
                sys.stderr.flush()
                self._lib.bluefog_abort(1)

        sys.excepthook = hook

    def shutdown(self):
        """Stops BlueFog on this rank once every rank has asked to; ops still in
        flight fail. BlueFog may be initialized again afterwards.

        Ctrl-C ends the wait for the other ranks (KeyboardInterrupt); the
        shutdown stays requested (new ops and init() are refused) and a later
        shutdown() waits again."""
        code = 0
        while code == 0:  # slices: Python sees signals between them
            code = self._lib.bluefog_shutdown_wait(100)
        if code == 2:  # another thread finished it meanwhile, and started BlueFog again: leave that be
            return
        self._pending_barrier = self._pending_skip = None  # (failed by the shutdown)
        self._topology = self._topology_used = None
        self._topo_cache = {}
        self._machine_topology = None
        self._run_reset_hooks()

    def config_keys(self) -> List[str]:
        """The names of the BLUEFOG_* settings init(config=...) accepts."""
        return self._lib.bluefog_config_keys().decode().split("\n")

    def _config_lines(self, config) -> str:
        """init's config overrides as the core reads them ("KEY=VALUE" lines);
        ValueError for a setting the core does not have (a typo would
        otherwise be ignored) or a value that cannot be written on one line."""
        if config is None:
            return ""
        if not isinstance(config, dict):
            raise TypeError(f"init: config must be a dict {{'BLUEFOG_...': value}}, got {type(config).__name__}")
        known = self.config_keys()
        lines = []
        for key, value in config.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"init: unknown setting {key!r} in config{hint}; the settings are: "
                                 + ", ".join(known))
            text = str(value)
            if "\n" in text or "\r" in text:
                raise ValueError(f"init: the value of {key} in config must fit on one line, got {text!r}")
            lines.append(f"{key}={text}")
        return "\n".join(lines)

    def _run_reset_hooks(self):
        for hook in self.reset_hooks:
            hook()

    def is_initialized(self) -> bool:
        """True between init() and shutdown()."""
        return bool(self._lib.bluefog_is_initialized())

    def _int(self, fn) -> int:
        value = fn()
        if value < 0:
            raise NotInitializedError(NOT_INITIALIZED)
        return value

    def size(self) -> int:
        """Number of ranks."""
        return self._int(self._lib.bluefog_size)

    def rank(self) -> int:
        """This process's rank."""
        return self._int(self._lib.bluefog_rank)

    def local_size(self) -> int:
        """Number of ranks on this machine (or BLUEFOG_NODES_PER_MACHINE)."""
        return self._int(self._lib.bluefog_local_size)

    def local_rank(self) -> int:
        """This process's rank within its machine."""
        return self._int(self._lib.bluefog_local_rank)

    def machine_size(self) -> int:
        """Number of machines (homogeneous clusters only)."""
        self._require_homogeneous("machine_size")
        return self._int(self._lib.bluefog_machine_size)

    def machine_rank(self) -> int:
        """This process's machine index (homogeneous clusters only)."""
        self._require_homogeneous("machine_rank")
        return self._int(self._lib.bluefog_machine_rank)

    def is_homogeneous(self) -> bool:
        """True if every machine runs the same number of consecutive ranks."""
        return bool(self._int(self._lib.bluefog_is_homogeneous))

    def _require_homogeneous(self, what: str):
        if not self.is_homogeneous():
            raise RuntimeError(f"{what}() needs a homogeneous cluster (every machine with the same number of "
                               "consecutive ranks); this job is not.")

    def mpi_threads_supported(self) -> bool:
        """True if MPI provides MPI_THREAD_MULTIPLE."""
        return bool(self._int(self._lib.bluefog_mpi_threads_supported))

    def unified_mpi_window_model_supported(self) -> bool:
        """True if MPI windows use the unified memory model."""
        return bool(self._int(self._lib.bluefog_unified_mpi_window_model_supported))

    def nccl_built(self) -> bool:
        """True if BlueFog was built with NCCL."""
        return bool(self._lib.bluefog_nccl_built())

    def set_skip_negotiate_stage(self, value: bool):
        """Collective. With True, ops run in each rank's enqueue order without
        negotiation: every rank must enqueue the same ops in the same order.
        Before each op the ranks compare a digest of it (one small allreduce),
        so an op in another order, a mismatched tensor or a refused input
        fails on every rank with ValueError. Call it at the same point on every
        rank with no op in flight: until the switch completes, other ops on this
        rank (from any thread) raise ValueError. Ctrl-C (SIGINT) interrupts the
        wait for late peers, as in barrier(); the switch goes on, and the next
        call waits for it.
        """
        value = bool(value)
        with self._one_control_thread("set_skip_negotiate_stage"):
            pending = self._pending_skip
            if pending is not None:  # an interrupted call's switch: finish it first
                self._run_pending("_pending_skip", f"set_skip_negotiate_stage: the interrupted switch to "
                                  f"{pending.value}", self._lib.bluefog_set_skip_negotiate_start, int(pending.value))
                if pending.value == value:  # (this call re-runs the interrupted one)
                    return
            self._pending_skip = _ControlOp(value)
            self._run_pending("_pending_skip", "set_skip_negotiate_stage", self._lib.bluefog_set_skip_negotiate_start,
                              int(value))

    def _run_pending(self, attr: str, what: str, start, *args) -> None:
        """Starts the barrier or skip-mode switch kept in `self.<attr>` (unless
        it has been started) and waits for it in slices, so that Python runs its
        signal handlers in between; raises its error. It stays there for the
        next call only when interrupted (KeyboardInterrupt or another
        BaseException at any point: its state lets that call resume it)."""
        op = getattr(self, attr)
        try:
            if op.handle.value < 0:
                code = start(*args, ctypes.byref(op.handle))
                if code != 0:  # nothing started
                    _raise_status(self._lib, code, what)
            while op.status.value == _IN_PROGRESS:  # (the core writes the status and reason once done)
                self._lib.bluefog_barrier_wait(op.handle.value, 200, ctypes.byref(op.status), op.reason,
                                               len(op.reason))
            if op.status.value != 0:
                _raise_status(self._lib, op.status.value, what, op.reason.value.decode("utf-8", "replace"))
        except Exception:
            setattr(self, attr, None)
            raise
        setattr(self, attr, None)

    @contextlib.contextmanager
    def _one_control_thread(self, what: str):
        me = threading.get_ident()
        with self._barrier_mu:
            if self._barrier_thread not in (None, me):
                raise ValueError(f"{what}: another thread of this process is in barrier() or "
                                 "set_skip_negotiate_stage() now; each is a point every rank's process reaches, "
                                 "so call them from one thread at a time")
            self._barrier_thread = me
        try:
            yield
        finally:
            with self._barrier_mu:
                self._barrier_thread = None

    def get_skip_negotiate_stage(self) -> bool:
        """Whether skip-negotiate mode is on."""
        return bool(self._lib.bluefog_get_skip_negotiate_stage())

    def exchange_counts(self) -> Tuple[int, int]:
        """(negotiation exchanges this process has run, how many of them a caller
        blocked on its own op ran itself instead of the background thread; see
        BLUEFOG_CALLER_RUNS). Counts since the process started; for diagnostics."""
        total, by_callers = ctypes.c_longlong(0), ctypes.c_longlong(0)
        self._lib.bluefog_exchange_counts(ctypes.byref(total), ctypes.byref(by_callers))
        return total.value, by_callers.value

    def skip_mode_counts(self) -> Tuple[int, int]:
        """(batches skip-negotiate mode has agreed on, each a single op or a
        fused run of ops; the ops that ran in fused runs of several). Counts
        since the process started; for diagnostics."""
        batches, fused = ctypes.c_longlong(0), ctypes.c_longlong(0)
        self._lib.bluefog_skip_mode_counts(ctypes.byref(batches), ctypes.byref(fused))
        return batches.value, fused.value

    def fast_round_counts(self) -> Tuple[int, int]:
        """(exchanges that began with a fast round, how many of those completed
        an op in it): a small allreduce repeated exchange after exchange is
        agreed on and summed in one MPI allreduce (see BLUEFOG_FAST_ROUNDS).
        Counts since the process started; for diagnostics."""
        rounds, agreed = ctypes.c_longlong(0), ctypes.c_longlong(0)
        self._lib.bluefog_fast_round_counts(ctypes.byref(rounds), ctypes.byref(agreed))
        return rounds.value, agreed.value

    def win_transfer_calls(self) -> int:
        """MPI put / get / accumulate calls that moved window data in this
        process so far: one per neighbor and window op, more when a window has
        more elements than BLUEFOG_MAX_WIN_SENT_LENGTH. For diagnostics."""
        self._lib.bluefog_win_transfer_calls.restype = ctypes.c_longlong
        return int(self._lib.bluefog_win_transfer_calls())

    def barrier(self):
        """Blocks until every rank reaches it. Ctrl-C (SIGINT) interrupts the wait;
        the barrier goes on, and the next call waits for it (re-running an
        interrupted cell meets the peers' barrier). One thread of a process at a
        time: a barrier is a point each rank's process reaches (another thread
        calling it meanwhile gets a ValueError)."""
        with self._one_control_thread("barrier"):
            if self._pending_barrier is None:
                self._pending_barrier = _ControlOp()
            self._run_pending("_pending_barrier", "barrier", self._lib.bluefog_barrier_start)

    def reject(self, op: str, name: str, reason: str) -> None:
        """Tells the other ranks that this rank refused op `name` (core kind
        `op`, e.g. "allreduce"; bad input here) before submitting it: their op
        of that name fails with `reason` instead of waiting for this rank.
        Best effort (nothing happens before init, or if the name is in flight)."""
        self._lib.bluefog_reject(op.encode(), name.encode("utf-8", "surrogateescape"),
                                 reason.encode("utf-8", "replace"))

    def report_refusal(self, op: str, name: str, err: BaseException) -> None:
        """reject() with the text of `err` (what this rank's checks or input
        staging, e.g. a GPU-to-CPU copy, raised for op `name`), before the
        caller re-raises it.
        The ops that run most often call it from a plain try/except (no
        per-op cost) instead of entering refusal_reported().
        A bare not-initialized error (from rank() / size()) is raised again
        naming the op, in the core's words."""
        if type(err) is NotInitializedError and str(err) == NOT_INITIALIZED:
            raise not_initialized(op, name) from None
        if SWITCH_PENDING in str(err):
            return  # the core refused it during this rank's skip-mode switch: the peers need not know
        self.reject(op, name, f"{type(err).__name__}: {err}")

    def require_initialized(self, op: str, name: Optional[str] = None) -> None:
        """NotInitializedError naming `op` unless BlueFog is initialized."""
        if not self.is_initialized():
            raise not_initialized(op, name)

    def refusal_reported(self, op: str, name: str) -> "_RefusalReported":
        """A context for the block that checks an op's input and submits it
        (under `name`, already fixed): an exception from it (ValueError for bad
        input, or e.g. a RuntimeError while staging a GPU tensor) is reported to
        the other ranks with reject() before it propagates.
        (A plain class, not a generator: it runs on every op.)"""
        return _RefusalReported(self, op, name)

    @staticmethod
    def _in_ipython() -> bool:
        try:
            from IPython import get_ipython  # type: ignore
        except ImportError:
            return False
        return get_ipython() is not None

    def suspend(self):
        """Pauses the background loop (interactive sessions under ibfrun only)."""
        if not self._in_ipython():
            raise EnvironmentError("suspend() is only allowed in an interactive (IPython) session")
        self._lib.bluefog_suspend()

    def resume(self):
        """Resumes the background loop after suspend()."""
        if not self._in_ipython():
            raise EnvironmentError("resume() is only allowed in an interactive (IPython) session")
        self._lib.bluefog_resume()

    # ---- topology -------------------------------------------------------
    def load_topology(self) -> Optional[nx.DiGraph]:
        """The current virtual topology."""
        return self._topology

    def topology_in_use(self) -> Optional[nx.DiGraph]:
        """The topology as the last set_topology saw it (neighbor ops use this
        one; load_topology() returns the graph object that was passed)."""
        return self._topology_used

    def is_topo_weighted(self) -> bool:
        """Whether neighbor ops use the topology's weights."""
        return self._is_topo_weighted

    def set_topology(self, topology: Optional[nx.DiGraph] = None, is_weighted: bool = False) -> bool:
        """Sets the virtual topology (None: ExponentialGraph(size())).

        Returns False (and keeps the old topology) if BlueFog is not initialized
        or windows exist. Raises TypeError for a graph that is not a DiGraph
        with size() nodes. Neighbor ops use the graph as it is now: edits made
        to it later (in place) take effect when it is set again.
        """
        return self._set_topology(topology, is_weighted, force=False)

    def _set_topology(self, topology: Optional[nx.DiGraph], is_weighted: bool, force: bool) -> bool:
        if not self.is_initialized():
            logger.error("set_topology: %s", NOT_INITIALIZED)
            return False
        size = self.size()
        if topology is None:
            topology = topology_util.ExponentialGraph(size)
        if not isinstance(topology, nx.DiGraph):
            raise TypeError("set_topology: the topology must be a networkx.DiGraph, got %s" % type(topology).__name__)
        if topology.number_of_nodes() != size:
            raise TypeError("set_topology: the topology has %d nodes but there are %d ranks"
                            % (topology.number_of_nodes(), size))
        _check_node_labels(topology, size, "set_topology", "ranks")
        if (not force and topology_util.IsTopologyEquivalent(topology, self._topology_used)
                and bool(is_weighted) == self._is_topo_weighted):
            return True
        if self.windows_exist():
            logger.error("set_topology: windows exist; free them (win_free) before changing the topology")
            return False
        self._topology = topology
        # (deepcopy, not copy(): it keeps the predecessor order, which sets the
        # order of in_neighbor_ranks() and of neighbor_allgather's output)
        self._topology_used = copy.deepcopy(topology)
        self._is_topo_weighted = bool(is_weighted)
        self._topo_cache = {}
        return True

    def topology_cached(self, key, compute):
        """compute(), remembered until the topology changes (for per-op lookups)."""
        try:
            return self._topo_cache[key]
        except KeyError:
            value = self._topo_cache[key] = compute()
            return value

    def in_neighbor_ranks(self) -> List[int]:
        """Ranks that send to this rank in the topology (self excluded)."""
        if self._topology_used is None:
            return []
        me = self.rank()
        return list(self.topology_cached("in", lambda: [r for r in self._topology_used.predecessors(me) if r != me]))

    def out_neighbor_ranks(self) -> List[int]:
        """Ranks this rank sends to in the topology (self excluded)."""
        if self._topology_used is None:
            return []
        me = self.rank()
        return list(self.topology_cached("out", lambda: [r for r in self._topology_used.successors(me) if r != me]))

    def load_machine_topology(self) -> Optional[nx.DiGraph]:
        """The machine-level topology used by hierarchical ops."""
        return self._machine_topology

    def is_machine_topo_weighted(self) -> bool:
        """Whether hierarchical ops use the machine topology's weights."""
        return self._is_machine_topo_weighted

    def set_machine_topology(self, topology: Optional[nx.DiGraph], is_weighted: bool = False) -> bool:
        """Sets the machine-level topology (machine_size() nodes)."""
        if topology is None:
            raise ValueError("set_machine_topology: the topology cannot be None")
        if not isinstance(topology, nx.DiGraph):
            raise TypeError("set_machine_topology: the topology must be a networkx.DiGraph, got %s"
                            % type(topology).__name__)
        machines = self.machine_size()
        if topology.number_of_nodes() != machines:
            raise TypeError("set_machine_topology: the topology has %d nodes but there are %d machines"
                            % (topology.number_of_nodes(), machines))
        _check_node_labels(topology, machines, "set_machine_topology", "machine ranks")
        if (topology_util.IsTopologyEquivalent(topology, self._machine_topology)
                and bool(is_weighted) == self._is_machine_topo_weighted):
            return True
        self._machine_topology = topology
        self._is_machine_topo_weighted = bool(is_weighted)
        return True

    def in_neighbor_machine_ranks(self) -> List[int]:
        """Machines that send to this machine in the machine topology."""
        if self._machine_topology is None:
            return []
        me = self.machine_rank()
        return [r for r in self._machine_topology.predecessors(me) if r != me]

    def out_neighbor_machine_ranks(self) -> List[int]:
        """Machines this machine sends to in the machine topology."""
        if self._machine_topology is None:
            return []
        me = self.machine_rank()
        return [r for r in self._machine_topology.successors(me) if r != me]

    # ---- timeline -------------------------------------------------------
    def timeline_start_activity(self, tensor_name: str, activity_name: str) -> bool:
        """Starts `activity_name` in `tensor_name`'s timeline lane. False if the
        timeline is off (BLUEFOG_TIMELINE unset at init)."""
        ok = bool(self._lib.bluefog_timeline_start_activity(tensor_name.encode(), activity_name.encode()))
        if not ok:
            self._warn_timeline_off()
        return ok

    def timeline_end_activity(self, tensor_name: str) -> bool:
        """Ends the innermost activity in `tensor_name`'s lane."""
        ok = bool(self._lib.bluefog_timeline_end_activity(tensor_name.encode()))
        if not ok:
            self._warn_timeline_off()
        return ok

    def _warn_timeline_off(self):
        if not self._timeline_warned:
            logger.warning("the timeline is off: set BLUEFOG_TIMELINE=<prefix> before bf.init()")
            self._timeline_warned = True

    @contextlib.contextmanager
    def timeline_context(self, tensor_name: str, activity_name: str):
        """Context manager: an activity around a block of code."""
        self.timeline_start_activity(tensor_name, activity_name)
        try:
            yield
        finally:
            self.timeline_end_activity(tensor_name)


def parse_config(text: str = "", use_env: bool = False) -> dict:
    """Parses BLUEFOG_* settings ("KEY=VALUE" lines) with the core's parser,
    without starting anything. Raises ValueError for a malformed value."""
    import json
    lib = _BASICS._lib
    out = lib.bluefog_parse_config(text.encode(), 1 if use_env else 0)
    if out is None:
        raise ValueError(lib.bluefog_last_error().decode())
    return json.loads(out.decode())


def pattern_matrix_check(src_lists, dst_lists):
    """For tests (no MPI): skip-negotiate mode's check of every rank's send and
    receive lists (index = rank) through the bit matrices the agreement
    allreduce carries. The problem text ("" if the lists mirror each other),
    or None when some rank's lists do not fit the matrices (the check then
    gathers the lists instead)."""
    size = len(src_lists)
    if size != len(dst_lists):
        raise ValueError("one source list and one destination list per rank")

    def flat(lists):
        values = [int(v) for x in lists for v in x]
        return (ctypes.c_int * max(1, len(values)))(*values)

    def counts(lists):
        return (ctypes.c_int * size)(*[len(x) for x in lists])

    out = ctypes.create_string_buffer(1 << 16)
    rc = _BASICS._lib.bluefog_pattern_matrix_check(size, counts(src_lists), flat(src_lists), counts(dst_lists),
                                                   flat(dst_lists), out, len(out))
    if rc < 0:
        raise ValueError(f"the matrices hold 1 to 1024 ranks, not {size}")
    return out.value.decode() if rc == 1 else None


_BASICS = BlueFogBasics()

# The basics every frontend re-exports (bluefog.torch, bluefog.tensorflow).
PUBLIC_NAMES = (
    "init", "shutdown", "is_initialized", "size", "rank", "local_size", "local_rank", "machine_size",
    "machine_rank", "is_homogeneous", "is_topo_weighted", "is_machine_topo_weighted", "mpi_threads_supported",
    "unified_mpi_window_model_supported", "nccl_built", "set_skip_negotiate_stage", "get_skip_negotiate_stage",
    "suspend", "resume", "load_topology", "set_topology", "in_neighbor_ranks", "out_neighbor_ranks",
    "load_machine_topology", "set_machine_topology", "in_neighbor_machine_ranks", "out_neighbor_machine_ranks",
    "timeline_start_activity", "timeline_end_activity", "timeline_context",
)


def get_basics() -> BlueFogBasics:
    """The process-wide instance shared by all frontends."""
    return _BASICS


def export_basics(namespace: dict):
    """Binds PUBLIC_NAMES of the shared instance into a frontend's module namespace."""
    for name in PUBLIC_NAMES:
        namespace[name] = getattr(_BASICS, name)
