"""The timeline (BLUEFOG_TIMELINE), read by each rank while the job runs.

BLUEFOG_TIMELINE is read at a process's FIRST init, so it is set here at import,
before bluefog is imported. The prefix must be the same on every rank of a job
and differ between jobs (the driver runs this file on 1, 2 and 4 ranks, maybe
concurrently with other jobs), so it is built from the launcher's job id:
  - Open MPI 5 / PMIx: PMIX_NAMESPACE (e.g. "prterun-host-1234@1"),
  - Open MPI 4: OMPI_MCA_ess_base_jobid,
  - MPICH Hydra: PMI_KVSNAME (when set),
  - otherwise the pid of the launcher daemon that started every local rank: the
    parent, or under bfrun with Hydra (which sets no job id in the environment)
    the parent of the rank guard that bfrun puts before each rank.
The prefix is /tmp/bluefog_timeline_test_<uid>/<job id>/timeline_, so rank r writes
/tmp/bluefog_timeline_test_<uid>/<job id>/timeline_<r>.json, which the rank
deletes when the module finishes. A BLUEFOG_TIMELINE already in the environment
(e.g. from `bfrun --timeline-filename`) is overwritten.
"""
import json
import os
import re
import time


def _launcher_pid():
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            if b"--bf-rank-guard" not in f.read().split(b"\0"):
                return ppid
        with open(f"/proc/{ppid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # the guard's parent
    except OSError:
        return ppid


def _job_id():
    for var in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME"):
        if os.environ.get(var):
            return re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ[var])
    return f"ppid{_launcher_pid()}"


TIMELINE_DIR = os.path.join("/tmp", f"bluefog_timeline_test_{os.getuid()}", _job_id())
os.makedirs(TIMELINE_DIR, exist_ok=True)
PREFIX = os.path.join(TIMELINE_DIR, "timeline_")
os.environ["BLUEFOG_TIMELINE"] = PREFIX

import pytest  # noqa: E402
import torch  # noqa: E402

import bluefog.torch as bf  # noqa: E402

bf.init()
SIZE = bf.size()
RANK = bf.rank()
PATH = f"{PREFIX}{RANK}.json"


@pytest.fixture(autouse=True)
def _init():
    bf.init()
    yield


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    try:
        os.remove(PATH)
        os.rmdir(TIMELINE_DIR)  # fails while other ranks' files remain; the last one removes it
    except OSError:
        pass


def read_timeline():
    """The trace so far, as a list of events (the file is an unclosed JSON array)."""
    with open(PATH) as f:
        text = f.read()
    assert text.startswith("["), text[:100]
    body = text.rstrip()
    if body.endswith(","):
        body = body[:-1]
    return text, json.loads(body + "]")


def lanes(events):
    """pid -> tensor name, from the process_name metadata."""
    return {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}


def phases_of(events, tensor_name):
    """The 'B' activity names of one tensor name's lane, in file order."""
    pids = [pid for pid, name in lanes(events).items() if name == tensor_name]
    assert len(pids) == 1, (tensor_name, lanes(events))
    return [e["name"] for e in events if e.get("ph") == "B" and e["pid"] == pids[0]]


def balanced(events, names):
    """Whether each of `names` has its lane, with as many ends as begins (> 0)."""
    found = lanes(events)
    for name in names:
        pids = [p for p, n in found.items() if n == name]
        if len(pids) != 1:
            return False
        marks = [e.get("ph") for e in events if e.get("pid") == pids[0]]
        if marks.count("B") == 0 or marks.count("B") != marks.count("E"):
            return False
    return True


def wait_for(predicate, seconds=10.0):
    """Re-reads the timeline until predicate(events) holds (the writer thread
    flushes about every 0.1 s); returns the last events read."""
    deadline = time.time() + seconds
    time.sleep(0.5)
    while True:
        _, events = read_timeline()
        if predicate(events) or time.time() > deadline:
            return events
        time.sleep(0.1)


def test_timeline_file_while_running():
    assert os.environ["BLUEFOG_TIMELINE"] == PREFIX
    x = torch.arange(6, dtype=torch.float32) + RANK
    out = bf.allreduce(x, average=False, name="tl.allreduce")
    torch.testing.assert_close(out, (torch.arange(6, dtype=torch.float32) * SIZE + sum(range(SIZE))))
    bc = bf.broadcast(x, 0, name="tl.broadcast")
    torch.testing.assert_close(bc, torch.arange(6, dtype=torch.float32))
    ag = bf.synchronize(bf.allgather_nonblocking(x, name="tl.allgather"))
    assert ag.shape == (6 * SIZE,)
    assert bf.timeline_start_activity("tl.user", "MY_ACTIVITY") is True
    time.sleep(0.01)
    assert bf.timeline_end_activity("tl.user") is True
    with bf.timeline_context("tl.ctx", "CTX_ACTIVITY"):
        time.sleep(0.01)

    wanted = {"tl.allreduce", "tl.broadcast", "tl.allgather", "tl.user", "tl.ctx"}
    # Until every lane has ended all it began (the callbacks included).
    events = wait_for(lambda ev: balanced(ev, wanted))
    text, _ = read_timeline()
    assert text.startswith("[")
    assert not text.rstrip().endswith("]")  # still open while the job runs
    names = lanes(events)
    assert wanted <= set(names.values()), names
    assert len(set(names.values())) == len(names)  # one lane per tensor name
    sort_meta = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_sort_index"}
    assert set(names) <= sort_meta

    for e in events:
        if e.get("ph") in ("B", "E"):
            assert isinstance(e["pid"], int) and e["pid"] in names, e
            assert isinstance(e["tid"], int) and e["tid"] >= 1, e
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e.get("ph") == "B":
            assert isinstance(e["name"], str) and e["name"], e

    # A 6-element allreduce is small: its data travels inside the negotiation
    # exchange (BLUEFOG_INLINE_BYTES), and each rank reduces locally.
    ar = phases_of(events, "tl.allreduce")
    for phase in ("ENQUEUE_ALLREDUCE", "NEGOTIATE_ALLREDUCE", "COMMUNICATE_INLINE", "CALLBACK"):
        assert phase in ar, (phase, ar)
    assert ar.index("ENQUEUE_ALLREDUCE") < ar.index("NEGOTIATE_ALLREDUCE") < ar.index("COMMUNICATE_INLINE") \
        < ar.index("CALLBACK"), ar
    bcp = phases_of(events, "tl.broadcast")
    for phase in ("ENQUEUE_BROADCAST", "NEGOTIATE_BROADCAST", "COMMUNICATE", "CALLBACK"):
        assert phase in bcp, (phase, bcp)
    agp = phases_of(events, "tl.allgather")
    for phase in ("ENQUEUE_ALLGATHER", "NEGOTIATE_ALLGATHER", "COMMUNICATE", "CALLBACK"):
        assert phase in agp, (phase, agp)
    assert phases_of(events, "tl.user") == ["MY_ACTIVITY"]
    assert phases_of(events, "tl.ctx") == ["CTX_ACTIVITY"]

    # Every finished lane has as many ends as begins, with no end before its begin.
    for pid, name in names.items():
        depth = 0
        for e in events:
            if e.get("pid") != pid:
                continue
            if e.get("ph") == "B":
                depth += 1
            elif e.get("ph") == "E":
                depth -= 1
                assert depth >= 0, (name, "E before B")
        assert depth == 0, (name, "unbalanced B/E")

    # The user activity lasted at least the 10 ms we slept (same clock as ts).
    pid = [p for p, n in names.items() if n == "tl.user"][0]
    ts = [e["ts"] for e in events if e.get("pid") == pid and e.get("ph") in ("B", "E")]
    assert len(ts) == 2 and ts[1] - ts[0] >= 10_000, ts


def test_timeline_keeps_growing_and_names_are_escaped():
    _, before = read_timeline()
    n_before = len(before)
    odd_name = 'tl."quoted"\\name'
    bf.allreduce(torch.ones(2), name=odd_name)
    events = wait_for(lambda ev: odd_name in lanes(ev).values())
    assert odd_name in lanes(events).values()
    assert len(events) > n_before
    assert phases_of(events, odd_name)[0] == "ENQUEUE_ALLREDUCE"


def test_repeated_small_allreduce_shows_its_fast_rounds():
    # After two cycles that each ran one small allreduce, the same op is agreed
    # on and summed in one fast round (BLUEFOG_FAST_ROUNDS, on by default).
    # A rank whose op reaches its background thread one cycle late makes that
    # op go through the full exchange instead (COMMUNICATE_INLINE): on an
    # oversubscribed machine that happens now and then, so a few are allowed.
    n = 16
    for it in range(n):
        out = bf.allreduce(torch.full((4,), float(RANK + it)), average=False, name="tl.fast")
        assert out.tolist() == [float(sum(range(SIZE)) + SIZE * it)] * 4
    events = wait_for(lambda ev: "tl.fast" in lanes(ev).values()
                      and phases_of(ev, "tl.fast").count("CALLBACK") == n)
    phases = phases_of(events, "tl.fast")
    assert phases.count("CALLBACK") == n, phases
    assert phases.count("COMMUNICATE_FAST") + phases.count("COMMUNICATE_INLINE") == n, phases
    assert phases.count("COMMUNICATE_FAST") >= n // 2, phases
    # Each op's phases, in order; a fast one reads ENQUEUE, NEGOTIATE, COMMUNICATE_FAST, CALLBACK.
    ops = [phases[k:k + 4] for k in range(0, len(phases), 4)]
    assert len(ops) == n and all(op[0] == "ENQUEUE_ALLREDUCE" and op[-1] == "CALLBACK" for op in ops), phases
    assert ["ENQUEUE_ALLREDUCE", "NEGOTIATE_ALLREDUCE", "COMMUNICATE_FAST", "CALLBACK"] in ops, phases


def test_large_allreduce_shows_the_ring():
    # 1 MiB and more: BlueFog's own ring (BLUEFOG_RING_ALLREDUCE_BYTES), alone
    # or fused; with one rank, MPI's allreduce.
    n = (1 << 20) // 4 + 3
    out = bf.allreduce(torch.full((n,), float(RANK)), average=False, name="tl.ring")
    assert torch.equal(out, torch.full((n,), float(sum(range(SIZE)))))
    events = wait_for(lambda ev: balanced(ev, ["tl.ring"]))
    phases = phases_of(events, "tl.ring")
    assert ("COMMUNICATE_RING" in phases) == (SIZE > 1) and ("COMMUNICATE" in phases) == (SIZE == 1), phases


def test_every_phase_ends_on_the_thread_it_began_on():
    """Trace viewers pair begin/end events per thread. An op's NEGOTIATE phase
    begins on the background thread and may end on the caller's thread (which
    runs the cycle when it waits): its end event goes to the begin's thread
    (it was written with the caller's thread id: slices left open)."""
    for i in range(20):
        handles = [bf.allreduce_nonblocking(torch.ones(50000), name=f"tl.threads.{i}.{k}") for k in range(3)]
        for h in handles:
            bf.synchronize(h)
    names = {f"tl.threads.19.{k}" for k in range(3)}
    events = wait_for(lambda ev: names <= set(lanes(ev).values())
                      and all(phases_of(ev, n).count("CALLBACK") == 1 for n in names))
    by_lane = lanes(events)
    open_ = {}  # (lane, thread) -> open begins, as a trace viewer pairs them
    for e in events:
        if e.get("ph") == "B":
            open_.setdefault((e["pid"], e["tid"]), []).append(e)
        elif e.get("ph") == "E":
            assert open_.get((e["pid"], e["tid"])), ("an end without a begin on its thread", by_lane[e["pid"]], e)
            open_[(e["pid"], e["tid"])].pop()
    for (pid, tid), left in open_.items():
        if by_lane[pid].startswith("tl.threads."):
            assert not left, ("phases never ended on their thread", by_lane[pid], tid, left)
    threads = {e["tid"] for e in events if e.get("ph") == "B" and by_lane[e["pid"]].startswith("tl.threads.")}
    assert threads, events[:5]


def test_window_ops_have_their_phases():
    x = torch.full((4,), float(RANK))
    assert bf.win_create(x, name="tl.win")
    try:
        bf.win_put(x, name="tl.win", require_mutex=True)
        bf.win_accumulate(x, name="tl.win")
        bf.win_get(name="tl.win")
        with bf.win_mutex("tl.win", for_self=True):
            pass
        bf.win_update(name="tl.win", require_mutex=True)
        bf.barrier()
    finally:
        bf.win_free("tl.win")
    want = ["WIN_PUT", "WIN_ACCUMULATE", "WIN_GET", "WIN_UPDATE"]
    events = wait_for(lambda ev: "tl.win" in lanes(ev).values()
                      and set(want) <= set(phases_of(ev, "tl.win")))
    phases = phases_of(events, "tl.win")
    if SIZE == 1:  # no neighbors: put/accumulate/get reach nobody, but still run
        assert "WIN_UPDATE" in phases, phases
    assert set(want) <= set(phases), phases
    # the mutex phases: one inside win_put (require_mutex), the win_mutex block's,
    # and one inside win_update (at least these, more if an attempt was deferred)
    assert phases.count("Aquire_Mutex") >= 3, phases
    put, acc = phases.index("WIN_PUT"), phases.index("WIN_ACCUMULATE")
    assert phases[put + 1] == "Aquire_Mutex" and put < acc < phases.index("WIN_GET") \
        < phases.index("WIN_UPDATE"), phases
    # balanced: every phase ended
    pid = [p for p, n in lanes(events).items() if n == "tl.win"][0]
    b = sum(1 for e in events if e.get("pid") == pid and e.get("ph") == "B")
    e_ = sum(1 for e in events if e.get("pid") == pid and e.get("ph") == "E")
    assert b == e_, (b, e_)


@pytest.mark.parametrize("kind", ["awc", "grad"])
def test_optimizer_records_forward_and_gradient_activities(kind):
    torch.manual_seed(RANK)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = (bf.DistributedAdaptWithCombineOptimizer(base, model) if kind == "awc"
           else bf.DistributedGradientAllreduceOptimizer(base, model))
    lane = opt._bf_name(model[0].weight)  # the lane of the parameter's communication
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # no backward follows: no GRADIENT COMPT. left open
            model(x)
        model.train()

    steps(2)
    events = wait_for(lambda ev: balanced(ev, [lane]) and phases_of(ev, lane).count("FORWARD") >= 3
                      and phases_of(ev, lane).count("GRADIENT COMPT.") >= 2)
    phases = phases_of(events, lane)
    assert phases.count("FORWARD") == 3 and phases.count("GRADIENT COMPT.") == 2, phases
    assert phases.index("FORWARD") < phases.index("GRADIENT COMPT."), phases
    if SIZE > 1:
        comm = "ENQUEUE_NEIGHBOR_ALLREDUCE" if kind == "awc" else "ENQUEUE_ALLREDUCE"
        assert phases.count(comm) == 2, phases
    opt.turn_off_timeline()
    steps(1)
    bf.barrier()
    events = wait_for(lambda ev: balanced(ev, [lane]))  # reads after 0.5 s at the earliest
    after = phases_of(events, lane)
    assert after.count("FORWARD") == 3 and after.count("GRADIENT COMPT.") == 2, after
    pid = [p for p, n in lanes(events).items() if n == lane][0]
    b = sum(1 for e in events if e.get("pid") == pid and e.get("ph") == "B")
    assert b == sum(1 for e in events if e.get("pid") == pid and e.get("ph") == "E")  # all ended


def test_reinit_appends_to_the_same_trace():
    bf.allreduce(torch.ones(2), name="tl.before_reinit")
    wait_for(lambda ev: "tl.before_reinit" in lanes(ev).values())
    bf.shutdown()
    bf.init()
    bf.allreduce(torch.ones(2), name="tl.after_reinit")
    bf.allreduce(torch.ones(2), name="tl.before_reinit")
    events = wait_for(lambda ev: "tl.after_reinit" in lanes(ev).values()
                      and phases_of(ev, "tl.before_reinit").count("CALLBACK") == 2)
    text, _ = read_timeline()
    assert text.count("[\n") == 1  # one array: appended, not restarted or truncated
    names = lanes(events)
    assert {"tl.allreduce", "tl.before_reinit", "tl.after_reinit"} <= set(names.values()), names
    assert len(set(names.values())) == len(names), names  # a lane keeps its pid across the re-init
    assert phases_of(events, "tl.before_reinit").count("CALLBACK") == 2
    pid = [p for p, n in names.items() if n == "tl.before_reinit"][0]
    ts = [e["ts"] for e in events if e.get("pid") == pid and e.get("ph") == "B"]
    assert ts == sorted(ts), ts  # the clock goes on


def test_timeline_files_of_all_ranks_exist():
    bf.barrier()  # every rank has initialized and written by now
    for r in range(SIZE):
        path = f"{PREFIX}{r}.json"
        assert os.path.exists(path), path
        with open(path) as f:
            assert f.read(1) == "["
    bf.barrier()  # nobody deletes its file (module teardown) before all have looked
