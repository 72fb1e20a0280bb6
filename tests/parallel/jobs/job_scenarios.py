"""Small BlueFog jobs for tests/test_job_behaviour.py (run under bfrun).

Usage: python job_scenarios.py <scenario> <marker_dir>

Ranks coordinate through files in <marker_dir> (all ranks run on one machine),
never through a BlueFog op, so that one rank can deliberately skip an op.
Each scenario prints lines starting with "RESULT" that the driver test checks.
"""
import os
import sys
import time

import torch

import bluefog.torch as bf


def wait_for_file(path, seconds=60.0):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if time.time() > deadline:
            print(f"RESULT rank {bf.rank()} gave up waiting for {path}", flush=True)
            os._exit(5)
        time.sleep(0.05)


def launcher_rank():
    """This process's rank as the launcher set it (for scenarios that run before bf.init)."""
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-1")))
    assert rank >= 0, "no rank in the environment"
    return rank


def touch(path, text=""):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def stall_warning(marker_dir):
    """Rank 0 submits 'stall.op'; rank 1 submits it only after rank 0 has
    waited ~4 s (BLUEFOG_STALL_CHECK_TIME_SECONDS=1 gives warnings meanwhile)."""
    rank = bf.rank()
    x = torch.full((3,), float(rank + 1))
    go = os.path.join(marker_dir, "go")
    if rank == 0:
        h = bf.allreduce_nonblocking(x, average=False, name="stall.op")
        start = time.time()
        while time.time() - start < 4.0:
            assert not bf.poll(h), "stall.op finished although rank 1 never submitted it"
            time.sleep(0.05)
        touch(go)
        out = bf.synchronize(h)
    else:
        wait_for_file(go)
        out = bf.allreduce(x, average=False, name="stall.op")
    expected = float(sum(r + 1 for r in range(bf.size())))
    ok = out.tolist() == [expected] * 3
    print(f"RESULT rank {rank} stall.op {'ok' if ok else 'WRONG ' + str(out.tolist())}", flush=True)
    after = bf.allreduce(torch.ones(1), average=False, name="after.stall")
    print(f"RESULT rank {rank} after {after.item()}", flush=True)
    return 0 if ok else 1


def stall_shutdown(marker_dir):
    """With BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=2, rank 0's 'stall.op' (never
    submitted by rank 1) fails on rank 0; then both ranks run one more op."""
    rank = bf.rank()
    failed = os.path.join(marker_dir, "failed")
    if rank == 0:
        h = bf.allreduce_nonblocking(torch.ones(3), average=False, name="stall.op")
        start = time.time()
        try:
            bf.synchronize(h)
            print("RESULT rank 0 stall.op completed unexpectedly", flush=True)
            code = 1
        except Exception as e:  # pylint: disable=broad-except
            print(f"RESULT rank 0 stall.op raised {type(e).__name__} after {time.time() - start:.1f} s: {e}",
                  flush=True)
            code = 0
        touch(failed)
    else:
        wait_for_file(failed)
        code = 0
    after = bf.allreduce(torch.full((2,), float(rank + 1)), average=False, name="after.stall")
    expected = float(sum(r + 1 for r in range(bf.size())))
    print(f"RESULT rank {rank} after {'ok' if after.tolist() == [expected] * 2 else 'WRONG'}", flush=True)
    return code


def killed_rank(marker_dir):
    """Rank 1 kills itself with SIGKILL while the others wait in an allreduce."""
    rank = bf.rank()
    if rank == 1:
        time.sleep(1.0)
        touch(os.path.join(marker_dir, "killed_at"), repr(time.time()))
        print("RESULT rank 1 killing itself", flush=True)
        os.kill(os.getpid(), 9)
        time.sleep(60)
    print(f"RESULT rank {rank} waiting in allreduce", flush=True)
    bf.allreduce(torch.ones(2), name="never.completes")
    print(f"RESULT rank {rank} allreduce returned", flush=True)
    time.sleep(60)
    return 0


def raising_rank(marker_dir):
    """Rank 1 raises an uncaught exception while the others wait in an op."""
    rank = bf.rank()
    if rank == 1:
        time.sleep(1.0)
        touch(os.path.join(marker_dir, "raised_at"), repr(time.time()))
        raise RuntimeError("deliberate failure on rank 1")
    print(f"RESULT rank {rank} waiting in allreduce", flush=True)
    bf.allreduce(torch.ones(2), name="never.completes")
    print(f"RESULT rank {rank} allreduce returned", flush=True)
    time.sleep(60)
    return 0


def skip_mode_unreceived_send(marker_dir):
    """Skip-negotiate mode, topology check off: rank 0 sends to rank 1, which
    does not receive from it (nobody checks). The small message stays
    unmatched; it must never be taken for a later op's data (every
    neighbor exchange has its own tag): the next ops give exact results."""
    rank = bf.rank()
    bf.set_skip_negotiate_stage(True)
    h = bf.neighbor_allreduce_nonblocking(torch.full((3,), 100.0), self_weight=1.0, src_weights={},
                                          dst_weights=[1] if rank == 0 else [], enable_topo_check=False,
                                          name="unreceived")
    bf.synchronize(h)
    time.sleep(0.5)  # the stray message has arrived at rank 1
    ok = True
    for k in range(3):
        x = torch.full((3,), float((rank + 1) * (k + 1)))
        y = bf.neighbor_allreduce(x, name=f"next.{k}")
        nbrs = bf.in_neighbor_ranks()
        expected = (k + 1) * (rank + 1 + sum(r + 1 for r in nbrs)) / (len(nbrs) + 1)
        ok = ok and torch.allclose(y, torch.full((3,), expected))
    bf.set_skip_negotiate_stage(False)
    print(f"RESULT rank {rank} next ops {'ok' if ok else 'WRONG'}", flush=True)
    return 0 if ok else 1


def skip_mode_unsent_receive(marker_dir):
    """Skip-negotiate mode, topology check off: rank 1 receives from rank 0,
    which sends nothing. With BLUEFOG_STALL_CHECK_TIME_SECONDS=1 and
    BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=2, rank 1 warns, then its op fails
    naming the op and rank 0; it does not catch the error, so the job ends."""
    rank = bf.rank()
    bf.set_skip_negotiate_stage(True)
    h = bf.neighbor_allreduce_nonblocking(torch.full((2,), 1.0), self_weight=0.5,
                                          src_weights={0: 0.5} if rank == 1 else {}, dst_weights=[],
                                          enable_topo_check=False, name="unsent")
    try:
        bf.synchronize(h)
        print(f"RESULT rank {rank} unsent returned", flush=True)
    except RuntimeError as e:
        print(f"RESULT rank {rank} unsent raised: {e}", flush=True)
        raise
    time.sleep(60)
    return 0


def skip_mode_op_never_submitted(marker_dir):
    """Skip-negotiate mode: rank 0 runs an allreduce that rank 1 never submits
    (it sleeps, then shuts down). With BLUEFOG_STALL_CHECK_TIME_SECONDS=1 and
    BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=2, rank 0 warns, then its op fails
    naming it. Rank 0 catches the error and shuts down: its loop stopped with
    the collective still pending, so shutdown ends the whole job (before: rank
    1 then waited for good in its own shutdown)."""
    rank = bf.rank()
    bf.set_skip_negotiate_stage(True)
    if rank == 0:
        try:
            bf.allreduce(torch.ones(3), name="lonely")
            print(f"RESULT rank {rank} lonely returned", flush=True)
        except RuntimeError as e:
            print(f"RESULT rank {rank} lonely raised: {e}", flush=True)
    else:
        time.sleep(4)
    bf.shutdown()
    print(f"RESULT rank {rank} shutdown returned", flush=True)
    time.sleep(60)
    return 0


def skip_mode_shutdown_with_an_op_queued(marker_dir):
    """Skip-negotiate mode: rank 0 starts an allreduce and shuts down at once;
    rank 1 runs the same allreduce a second later, then shuts down. The op
    completes on both and both shutdowns return (before: rank 0 switched to
    negotiation with the op still queued, and rank 1 waited for it for good)."""
    rank = bf.rank()
    bf.set_skip_negotiate_stage(True)
    if rank == 0:
        h = bf.allreduce_nonblocking(torch.full((3,), 1.0), average=False, name="x")
        bf.shutdown()
        try:
            print(f"RESULT rank 0 x {bf.synchronize(h).tolist()}", flush=True)
        except Exception as e:  # (after shutdown: the result was already delivered, or not)
            print(f"RESULT rank 0 x after shutdown: {type(e).__name__}", flush=True)
    else:
        time.sleep(1)
        print(f"RESULT rank 1 x {bf.allreduce(torch.full((3,), 1.0), average=False, name='x').tolist()}",
              flush=True)
        bf.shutdown()
    print(f"RESULT rank {rank} shutdown returned", flush=True)
    return 0


def hierarchical_started_apart(marker_dir):
    """BLUEFOG_NODES_PER_MACHINE=2 on 4 ranks, BLUEFOG_STALL_CHECK_TIME_SECONDS=1:
    even ranks start hierarchical ops h1, compute 4 s, then h2; odd ranks the
    reverse. Meanwhile only the composite driver thread waits, and that is not
    a rank blocked in BlueFog: no deadlock may be declared (before: every rank
    got 'deadlocked' after the stall time), and both ops complete."""
    rank = bf.rank()
    bf.set_machine_topology(bf.ExponentialGraph(bf.machine_size()))
    names = ["h1", "h2"] if rank % 2 == 0 else ["h2", "h1"]
    handles = {}
    for i, n in enumerate(names):
        handles[n] = bf.hierarchical_neighbor_allreduce_nonblocking(torch.full((3,), float(rank)), name=n)
        if i == 0:
            time.sleep(4)
    ok = True
    for n in ("h1", "h2"):
        try:
            out = bf.synchronize(handles[n])
            print(f"RESULT rank {rank} {n} {out.tolist()}", flush=True)
        except Exception as e:
            ok = False
            print(f"RESULT rank {rank} {n} raised: {e}", flush=True)
    return 0 if ok else 1


def comm_null_split(marker_dir):
    """The usual idiom for "BlueFog on ranks 0 and 1 only": Split with
    MPI.UNDEFINED elsewhere, so ranks 2 and 3 hold MPI.COMM_NULL. (Before: it
    counted as "no communicator", so ranks 2 and 3 hung in a collective of
    COMM_WORLD, and every rank passing COMM_NULL ran on the whole world.)"""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    sub = world.Split(0 if world.rank < 2 else MPI.UNDEFINED, world.rank)
    try:
        bf.init(comm=sub)
    except ValueError as err:
        print(f"RESULT world rank {world.rank} init raised {err}", flush=True)
        return 0
    out = bf.allreduce(torch.tensor([float(world.rank)]), average=False, name="sub.sum")
    print(f"RESULT world rank {world.rank} size {bf.size()} sum {out.item()}", flush=True)
    return 0


def intercomm_refused(marker_dir):
    """bf.init(comm=an intercommunicator): a ValueError on every rank (before:
    init succeeded with size 1 and allreduce returned the other group's data)."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    local = world.Split(world.rank % 2, world.rank)
    inter = local.Create_intercomm(0, world, 1 - world.rank % 2, tag=7)
    try:
        bf.init(comm=inter)
        print(f"RESULT world rank {world.rank} init returned size {bf.size()}", flush=True)
        return 1
    except ValueError as err:
        print(f"RESULT world rank {world.rank} init raised {err}", flush=True)
    bf.init(comm=world)  # the right kind of communicator still works
    out = bf.allreduce(torch.ones(1), average=False, name="after").item()
    print(f"RESULT world rank {world.rank} after {out}", flush=True)
    return 0


def settings_differ(marker_dir):
    """Rank 1 is given other values of settings every rank must share: init
    raises on every rank, naming the setting and who has which value, and a
    second init with them fixed works. (Before:
    init succeeded and the first small allreduce hung, one rank in a fast
    round's allreduce, the others in the allgather exchange.)"""
    rank = launcher_rank()
    odd = {"BLUEFOG_FAST_ROUNDS": 0, "BLUEFOG_RING_ALLREDUCE_BYTES": 4096} if rank == 1 else {}
    try:
        bf.init(config=odd)
    except ValueError as err:
        print(f"RESULT rank {rank} init raised {err}", flush=True)
    else:
        out = bf.allreduce(torch.ones(3), average=False, name="after.init")
        print(f"RESULT rank {rank} ran an allreduce: {out.tolist()}", flush=True)
        return 0
    bf.init()  # the same settings everywhere now
    out = bf.allreduce(torch.ones(3), average=False, name="after.retry")
    print(f"RESULT rank {rank} retried: {out.tolist()}", flush=True)
    return 0


def failing_start(settings, retry):
    """Rank 1 alone cannot start (`settings` fail there): init raises on every
    rank, the others naming rank 1 and its reason, instead of waiting at init
    for a rank that left. With `retry`, a second init with the settings fixed
    works everywhere."""
    def run(marker_dir):
        rank = launcher_rank()
        try:
            bf.init(config=settings if rank == 1 else {})
        except (ValueError, RuntimeError) as err:
            print(f"RESULT rank {rank} init raised {type(err).__name__}: {err}", flush=True)
        else:
            print(f"RESULT rank {rank} init succeeded", flush=True)
            return 0
        if retry:
            bf.init()
            out = bf.allreduce(torch.ones(3), average=False, name="after.retry")
            print(f"RESULT rank {rank} retried: {out.tolist()}", flush=True)
        return 0
    return run


def unparsable_setting(marker_dir):
    return failing_start({"BLUEFOG_CYCLE_TIME": "fast"}, retry=True)(marker_dir)


def too_low_thread_level(marker_dir):
    # (MPI stays at that level on rank 1, so no retry there.)
    return failing_start({"BLUEFOG_MPI_THREAD_LEVEL": 0}, retry=False)(marker_dir)


def deadlocking(ops, tensorflow=False):
    """Runs `ops(rank)` (ops no other rank matches; with `tensorflow`,
    `ops(rank, tf, bluefog.tensorflow)`); prints how it raised (and after how
    long), then runs one op (of that framework) on every rank."""
    def run(marker_dir):
        rank = bf.rank()
        if tensorflow:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            import bluefog.tensorflow as bft  # pylint: disable=import-outside-toplevel
            args, errors = (tf, bft), tf.errors.AbortedError
            def after():
                return float(bft.allreduce(tf.ones(1), average=False, name="after.deadlock").numpy()[0])
        else:
            args, errors = (), RuntimeError
            def after():
                return bf.allreduce(torch.ones(1), average=False, name="after.deadlock").item()
        start = time.time()
        try:
            ops(rank, *args)
            print(f"RESULT rank {rank} completed unexpectedly", flush=True)
        except errors as err:
            one_line = " | ".join(str(err).splitlines())  # (a tf.function's error spans lines)
            print(f"RESULT rank {rank} raised after {time.time() - start:.1f} s: {one_line}", flush=True)
        print(f"RESULT rank {rank} after {after()}", flush=True)
        return 0
    run.__name__ = ops.__name__
    return run


def deadlocking_tf(ops):
    """deadlocking, for TensorFlow ops (which raise tf.errors.AbortedError)."""
    return deadlocking(ops, tensorflow=True)


@deadlocking
def names_differ(rank):
    """Each rank names its op after its rank (a common slip): every rank is
    blocked in an op the other never submits. With a short stall time both
    fail with the reason instead of hanging, and the next op works."""
    bf.allreduce(torch.ones(3), average=False, name=f"grad.{rank}")


@deadlocking
def uneven_loops(rank):
    """Rank 1 runs one iteration more than rank 0, which meanwhile waits in
    the op after the loop: both fail, each message naming what the other has
    pending instead."""
    for i in range(2 + rank):
        bf.allreduce(torch.ones(2), average=False, name=f"it.{i}")
    bf.allreduce(torch.ones(2), average=False, name="final")


@deadlocking
def names_differ_nonblocking(rank):
    """As names_differ, but started nonblocking, and waited for only after a
    while: the op's own negotiation saw no rank waiting, and later exchanges
    are all fast rounds when run in_fast_rounds (nothing completes that would
    end them), which must tell the deadlock check that both ranks now wait."""
    h = bf.allreduce_nonblocking(torch.ones(3), average=False, name=f"grad.{rank}")
    time.sleep(0.5)
    bf.synchronize(h)


@deadlocking
def window_names_differ(rank):
    """As names_differ, for win_create (a window named after the rank)."""
    bf.win_create(torch.zeros(3), name=f"win.{rank}")


@deadlocking_tf
def tf_names_differ(rank, tf, bft):
    """As names_differ, for an eager TensorFlow allreduce: TensorFlow, not
    BlueFog, waits for it, and that must count as a blocked wait too."""
    bft.allreduce(tf.ones(3), average=False, name=f"grad.{rank}")


@deadlocking_tf
def tf_function_names_differ(rank, tf, bft):
    """As tf_names_differ, for a grouped allreduce inside a tf.function."""
    @tf.function
    def step(a, b):
        return bft.grouped_allreduce([a, b], average=False, name=f"grad.{rank}")
    step(tf.ones(2), tf.ones(3))


def tf_pending_while_ranks_compute(marker_dir):
    """Not a deadlock: rank 0 waits in an eager TensorFlow op while rank 1
    computes (no BlueFog op in flight) for several stall times, then submits it."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import bluefog.tensorflow as bft  # pylint: disable=import-outside-toplevel
    rank = bft.rank()
    bft.allreduce(tf.ones(1), average=False, name="warm")
    if rank == 1:
        time.sleep(2.0)
    out = bft.allreduce(tf.ones(3), average=False, name="x")
    print(f"RESULT rank {rank} x {out.numpy().tolist()}", flush=True)
    return 0


def pending_while_ranks_compute(marker_dir):
    """Not a deadlock: rank 0's 'x' waits for rank 1 while both ranks compute
    (no thread in a BlueFog wait) for several stall times after an exchange
    in which both were blocked; then rank 1 submits it."""
    rank = bf.rank()
    h = bf.allreduce_nonblocking(torch.ones(3), average=False, name="x") if rank == 0 else None
    bf.allreduce(torch.ones(3), average=False, name="loss")
    time.sleep(2.0)
    out = bf.synchronize(h) if rank == 0 else bf.allreduce(torch.ones(3), average=False, name="x")
    print(f"RESULT rank {rank} x {out.tolist()}", flush=True)
    return 0


def waits_on_another_thread(marker_dir):
    """Rank 0 waits in 'a' then 'b'. Rank 1 waits in 'b' on a second thread
    while its main thread neither waits nor submits for 3 s, then submits 'a'."""
    import threading  # pylint: disable=import-outside-toplevel
    rank = bf.rank()
    try:
        if rank == 0:
            a = bf.allreduce(torch.ones(1), average=False, name="a")
            b = bf.allreduce(torch.ones(1), average=False, name="b")
        else:
            got, failed = [], []

            def in_b():
                try:
                    got.append(bf.allreduce(torch.ones(1), average=False, name="b"))
                except RuntimeError as err:
                    failed.append(err)
            t = threading.Thread(target=in_b)
            t.start()
            time.sleep(3.0)
            if failed:  # (declared deadlocked meanwhile, with rank 0's 'a')
                raise failed[0]
            a = bf.allreduce(torch.ones(1), average=False, name="a")
            t.join()
            if failed:
                raise failed[0]
            b = got[0]
        print(f"RESULT rank {rank} a {a.tolist()} b {b.tolist()}", flush=True)
    except RuntimeError as err:
        print(f"RESULT rank {rank} raised: {err}", flush=True)
    return 0


def busy_while_op_pending(marker_dir):
    """Not a deadlock: rank 0's 'late.op' waits for rank 1 while both ranks,
    blocked in one op after another, keep completing ops (first small ones in
    fast rounds, then larger ones) for several stall times; then rank 1
    submits it. Nothing may fail."""
    from bluefog.common.basics import get_basics
    rank, size = bf.rank(), bf.size()
    h = bf.allreduce_nonblocking(torch.ones(3), average=False, name="late.op") if rank == 0 else None
    fast_before = get_basics().fast_round_counts()[1]
    counts = []
    for name, n, seconds in (("tick.small", 1, 1.5), ("tick.big", 65536, 1.5)):
        start, count = time.time(), 0
        while True:  # every rank stops at the same iteration: once any rank's time is up
            x = torch.zeros(n)
            x[0] = float(time.time() - start < seconds)
            count += 1
            if bf.allreduce(x, average=False, name=name)[0].item() < size:
                break
        counts.append(count)
    fast = get_basics().fast_round_counts()[1] - fast_before
    out = bf.synchronize(h) if rank == 0 else bf.allreduce(torch.ones(3), average=False, name="late.op")
    print(f"RESULT rank {rank} late.op {out.tolist()} after {counts} ticks, {fast} in fast rounds", flush=True)
    return 0


def fork_child(marker_dir):
    """A process forked from a rank (as by a DataLoader worker or a user's
    os.fork) may read rank()/size(), must get a clear error from an op, and
    exits normally without touching the parent's BlueFog or MPI. (Before:
    its exit shut down and finalized the parent's MPI: segfaults, or a hang.)"""
    bf.init()
    rank = bf.rank()
    bf.allreduce(torch.ones(2), average=False, name="before.fork")
    pid = os.fork()
    if pid == 0:
        try:
            print(f"RESULT child of rank {rank} sees rank {bf.rank()} size {bf.size()}", flush=True)
            try:
                bf.allreduce(torch.ones(2), name="in.child")
                print(f"RESULT child of rank {rank} op returned", flush=True)
            except Exception as err:  # pylint: disable=broad-except
                print(f"RESULT child of rank {rank} op raised {type(err).__name__}: {err}", flush=True)
        finally:
            sys.exit(0)  # the normal exit path: atexit handlers run
    _, status = os.waitpid(pid, 0)
    # A child that dies of an uncaught exception just exits 1 (before: BlueFog's
    # exception hook aborted the parent's job from it, and hung in MPI_Abort).
    pid = os.fork()
    if pid == 0:
        raise RuntimeError("deliberate failure in a forked child")
    _, raised = os.waitpid(pid, 0)
    out = bf.allreduce(torch.ones(2), average=False, name="after.fork")
    print(f"RESULT rank {rank} child status {status} raising child status {raised} after {out.tolist()}",
          flush=True)
    return 0


def _interrupt_after(seconds):
    """SIGINT to this process after `seconds` (as Ctrl-C in a terminal)."""
    import signal
    import threading
    threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT)).start()


def _call_interrupted(what, call):
    """Rank 0 runs call() with a SIGINT after 1 s, and says whether it returned
    or was interrupted (after how long)."""
    _interrupt_after(1.0)
    start = time.time()
    try:
        call()
        print(f"RESULT rank 0 {what} returned", flush=True)
    except KeyboardInterrupt:
        print(f"RESULT rank 0 {what} interrupted after {time.time() - start:.1f} s", flush=True)


def interrupted_waits(marker_dir):
    """Ctrl-C (SIGINT) reaches a rank waiting in synchronize() or barrier()
    for a peer that is late: KeyboardInterrupt within about a second (before:
    only when the peer arrived, or never). The interrupted op goes on, and
    its handle may be synchronized again."""
    import signal
    rank = bf.rank()
    go = os.path.join(marker_dir, "go")

    # An in-place op on a non-contiguous tensor (its result is copied back at
    # synchronize), and a composite op (hierarchical, run by a driver thread).
    strided = torch.ones(3, 2).t()
    no_machines = dict(self_weight=1.0, src_machine_weights={}, dst_machine_weights={})
    if rank == 0:
        h = bf.allreduce_nonblocking_(strided, average=False, name="late.op")
        hc = bf.hierarchical_neighbor_allreduce_nonblocking(torch.ones(3), name="late.composite", **no_machines)
        for what, handle in (("synchronize", h), ("composite", hc)):
            _call_interrupted(what, lambda: bf.synchronize(handle))
        touch(go)
        bf.synchronize(h)
        print(f"RESULT rank 0 late.op {strided.flatten().tolist()}", flush=True)
        print(f"RESULT rank 0 late.composite {bf.synchronize(hc).tolist()}", flush=True)
        _call_interrupted("barrier", bf.barrier)
        touch(go + "2")
        bf.barrier()  # resumes the interrupted one (re-running an interrupted cell)
        print("RESULT rank 0 barrier resumed", flush=True)
        # Any exception a signal handler raises interrupts a wait the same way
        # (before: only KeyboardInterrupt kept the write-back of the result).
        signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("alarm")))
        other = torch.ones(3, 2).t()
        h = bf.allreduce_nonblocking_(other, average=False, name="late.op2")
        signal.alarm(1)
        try:
            bf.synchronize(h)
        except TimeoutError:
            print("RESULT rank 0 alarm interrupted", flush=True)
        touch(go + "3")
        bf.synchronize(h)
        print(f"RESULT rank 0 late.op2 {other.flatten().tolist()}", flush=True)
    else:
        wait_for_file(go)
        bf.allreduce_(strided, average=False, name="late.op")
        print(f"RESULT rank 1 late.op {strided.flatten().tolist()}", flush=True)
        bf.hierarchical_neighbor_allreduce(torch.ones(3), name="late.composite", **no_machines)
        wait_for_file(go + "2")
        bf.barrier()  # meets rank 0's interrupted one
        wait_for_file(go + "3")
        bf.allreduce_(torch.ones(3, 2).t(), average=False, name="late.op2")
    out = bf.allreduce(torch.ones(1), average=False, name="after")
    print(f"RESULT rank {rank} after {out.item()}", flush=True)
    return 0


def interrupted_shutdown(marker_dir):
    """Ctrl-C reaches a rank waiting in shutdown() for a peer that is late
    (before: only once the peer shut down too). The shutdown stays requested:
    a new op and init() are refused, and shutdown() again finishes it once the
    peer comes."""
    rank = bf.rank()
    go = os.path.join(marker_dir, "go")
    if rank == 0:
        bf.allreduce(torch.ones(1), average=False, name="before")
        _call_interrupted("shutdown", bf.shutdown)
        try:
            bf.allreduce(torch.ones(1), name="refused")
            print("RESULT rank 0 op after the interrupted shutdown ran", flush=True)
        except (RuntimeError, ValueError) as err:
            print(f"RESULT rank 0 op refused: {err}", flush=True)
        try:  # (an init that said yes would leave a BlueFog that refuses every op)
            bf.init()
            print("RESULT rank 0 init after the interrupted shutdown returned", flush=True)
        except (RuntimeError, ValueError) as err:
            print(f"RESULT rank 0 init refused: {err}", flush=True)
        touch(go)
        bf.shutdown()
    else:
        bf.allreduce(torch.ones(1), average=False, name="before")
        wait_for_file(go)
        bf.shutdown()
    print(f"RESULT rank {rank} shut down, initialized {bf.is_initialized()}", flush=True)
    return 0


def interrupted_skip_mode_switch(marker_dir):
    """Ctrl-C reaches a rank waiting in set_skip_negotiate_stage() for a late
    peer (before: only once the peer came). The switch goes on, other ops are
    refused until it completes; calling it again with the same value waits for
    it and returns (re-running the cell), and skip mode then works, and so does
    leaving it."""
    rank = bf.rank()
    go = os.path.join(marker_dir, "go")
    if rank == 0:
        bf.allreduce(torch.ones(1), average=False, name="before")
        _call_interrupted("set_skip", lambda: bf.set_skip_negotiate_stage(True))
        # Until the switch completes, other ops are refused (they would meet the
        # peers' in the other mode, and never complete).
        for what, call in (("barrier", bf.barrier), ("allreduce", lambda: bf.allreduce(torch.ones(1), name="x"))):
            try:
                call()
                print(f"RESULT rank 0 {what} while switching ran", flush=True)
            except ValueError as err:
                print(f"RESULT rank 0 {what} while switching refused: {err}", flush=True)
        touch(go)
        bf.set_skip_negotiate_stage(True)  # waits for the interrupted switch
    else:
        bf.allreduce(torch.ones(1), average=False, name="before")
        wait_for_file(go)
        bf.set_skip_negotiate_stage(True)
    on = bf.get_skip_negotiate_stage()
    out = bf.allreduce(torch.ones(2), average=False, name="in.skip")
    bf.set_skip_negotiate_stage(False)
    after = bf.allreduce(torch.ones(1), average=False, name="after")
    print(f"RESULT rank {rank} skip {on} in.skip {out.tolist()} then skip {bf.get_skip_negotiate_stage()} "
          f"after {after.item()}", flush=True)
    return 0


def interrupted_window_ops(marker_dir):
    """Ctrl-C while rank 0 waits in win_create (rank 1 comes late) and while it
    waits for its own window mutex (rank 1 holds it). The ops go on: the window
    is then known on rank 0 too (before: 'already exists' to win_create and
    'unknown window' to everything else), and the mutex the interrupted acquire
    took is released again (before: held by nobody for good, and rank 1's next
    mutex-protected put hung)."""
    rank = bf.rank()
    go = os.path.join(marker_dir, "go")
    if rank == 0:
        _interrupt_after(1.0)
        try:
            bf.win_create(torch.ones(4), "w")
            print("RESULT rank 0 win_create returned", flush=True)
        except KeyboardInterrupt:
            print("RESULT rank 0 win_create interrupted", flush=True)
        touch(go)
    else:
        wait_for_file(go)
        bf.win_create(torch.ones(4), "w")
    bf.barrier()
    deadline = time.time() + 30  # (rank 0's daemon thread records the window)
    while "w" not in bf.get_current_created_window_names() and time.time() < deadline:
        time.sleep(0.05)
    print(f"RESULT rank {rank} windows {bf.get_current_created_window_names()}", flush=True)
    if rank == 1:
        with bf.win_mutex("w", ranks=[0]):  # holds rank 0's mutex for 3 s
            touch(go + "2")
            time.sleep(3)
    else:
        wait_for_file(go + "2")
        _interrupt_after(1.0)
        try:
            with bf.win_mutex("w", for_self=True):
                print("RESULT rank 0 mutex taken", flush=True)
        except KeyboardInterrupt:
            print("RESULT rank 0 mutex wait interrupted", flush=True)
    bf.barrier()
    time.sleep(0.5)  # (rank 0's daemon thread releases the mutex it got)
    if rank == 1:
        start = time.time()
        bf.win_put(torch.ones(4), "w", require_mutex=True)
        print(f"RESULT rank 1 mutex put took {time.time() - start:.1f} s", flush=True)
    bf.barrier()
    bf.win_free("w")
    print(f"RESULT rank {rank} freed", flush=True)
    return 0


def in_fast_rounds(scenario):
    """`scenario` entered with fast rounds on (BLUEFOG_FAST_ROUNDS): a few small
    allreduces of the stalled op's size first, so that rank 0 offers the stalled
    op in a fast round, which rank 1 (idle) cannot agree to."""
    def run(marker_dir):
        from bluefog.common.basics import get_basics
        for _ in range(6):
            bf.allreduce(torch.ones(3), average=False, name="warm.up")
        # Exchanges that began with a fast round (not ops agreed in one: a rank
        # whose op reaches its background thread a cycle late sends that op
        # through the full exchange, and fast rounds stay on).
        before = get_basics().fast_round_counts()[0]
        bf.allreduce(torch.ones(3), average=False, name="warm.up")
        fast = get_basics().fast_round_counts()[0] > before
        print(f"RESULT rank {bf.rank()} fast rounds {'on' if fast else 'off'}", flush=True)
        return scenario(marker_dir)
    run.__name__ = scenario.__name__ + "_in_fast_rounds"
    return run


SCENARIOS = {f.__name__: f for f in (stall_warning, stall_shutdown, killed_rank, raising_rank,
                                     skip_mode_unreceived_send, skip_mode_unsent_receive, skip_mode_op_never_submitted,
                                     skip_mode_shutdown_with_an_op_queued, hierarchical_started_apart, intercomm_refused,
                                     in_fast_rounds(stall_warning), in_fast_rounds(stall_shutdown),
                                     comm_null_split, fork_child, interrupted_waits, interrupted_shutdown,
                                     interrupted_skip_mode_switch, settings_differ,
                                     unparsable_setting, too_low_thread_level, names_differ, uneven_loops,
                                     busy_while_op_pending, in_fast_rounds(names_differ),
                                     in_fast_rounds(names_differ_nonblocking), names_differ_nonblocking,
                                     in_fast_rounds(pending_while_ranks_compute), pending_while_ranks_compute,
                                     waits_on_another_thread, interrupted_window_ops, window_names_differ, tf_names_differ,
                                     tf_function_names_differ, tf_pending_while_ranks_compute)}
SELF_INIT = {"comm_null_split", "intercomm_refused", "fork_child", "settings_differ", "unparsable_setting", "too_low_thread_level"}  # these call bf.init() themselves

if __name__ == "__main__":
    if sys.argv[1] not in SELF_INIT:
        bf.init()
    sys.exit(SCENARIOS[sys.argv[1]](sys.argv[2]))

