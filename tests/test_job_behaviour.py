"""Whole-job behaviour under bfrun: stall warnings, stall shutdown, and jobs
with a dead or failing rank ending (non-zero) instead of hanging.

Each test launches tests/parallel/jobs/job_scenarios.py with bfrun under a hard
timeout; ranks coordinate through marker files in a pytest tmp_path.
"""
import os
import re
import time

import pytest

from launch import ROOT, bfrun, python_script

from bluefog.common.basics import SWITCH_PENDING

SCRIPT = os.path.join(ROOT, "tests", "parallel", "jobs", "job_scenarios.py")
HARD_TIMEOUT = 150  # the launch itself (python + torch import on every rank) is part of it


def run(scenario, tmp_path, np=2, env=None):
    rc, out, secs = bfrun(np, python_script(SCRIPT, scenario, str(tmp_path)), HARD_TIMEOUT, env=env)
    assert rc is not None, f"{scenario} hung (killed after {HARD_TIMEOUT} s):\n{out[-6000:]}"
    return rc, out, secs


@pytest.mark.parametrize("scenario", ["stall_warning", "stall_warning_in_fast_rounds"])
def test_stall_warning_names_op_and_missing_rank(tmp_path, scenario):
    rc, out, _ = run(scenario, tmp_path, env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "1"})
    assert rc == 0, out[-6000:]
    if scenario.endswith("fast_rounds"):
        assert "RESULT rank 0 fast rounds on" in out and "RESULT rank 1 fast rounds on" in out, out[-6000:]
    assert "RESULT rank 0 stall.op ok" in out and "RESULT rank 1 stall.op ok" in out, out[-6000:]
    assert "RESULT rank 0 after 2.0" in out and "RESULT rank 1 after 2.0" in out, out[-6000:]
    warnings = [line for line in out.splitlines() if "stall" in line.lower() and "'stall.op'" in line]
    assert warnings, f"no stall warning for 'stall.op':\n{out[-6000:]}"
    # The warning names the op, who submitted it, and the missing rank 1.
    assert any(re.search(r"\[1\]", w) and re.search(r"\[0\]", w) for w in warnings), warnings
    # Rank 0 waited ~4 s with a 1 s check interval: more than one warning, but
    # none about the op that completed normally afterwards.
    assert len(warnings) >= 2, warnings
    assert not any("after.stall" in line for line in out.splitlines() if "stall:" in line), out[-6000:]


@pytest.mark.parametrize("scenario", ["stall_shutdown", "stall_shutdown_in_fast_rounds"])
def test_stall_shutdown_fails_the_stalled_op(tmp_path, scenario):
    rc, out, _ = run(scenario, tmp_path, env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "1",
                                              "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS": "2"})
    assert rc == 0, out[-6000:]
    if scenario.endswith("fast_rounds"):
        assert "RESULT rank 0 fast rounds on" in out and "RESULT rank 1 fast rounds on" in out, out[-6000:]
    lines = [line for line in out.splitlines() if line.startswith("RESULT rank 0 stall.op raised")]
    assert len(lines) == 1, out[-6000:]
    assert "stalled" in lines[0] and "stall.op" in lines[0], lines[0]
    assert "[1]" in lines[0], lines[0]  # names the rank that never submitted it
    seconds = float(re.search(r"after ([0-9.]+) s", lines[0]).group(1))
    assert seconds >= 1.5, lines[0]  # not before the 2 s shutdown time (minus cycle granularity)
    assert "RESULT rank 0 after ok" in out and "RESULT rank 1 after ok" in out, out[-6000:]


@pytest.mark.parametrize("job, evidence, stamp, what", [
    ("killed_rank", "RESULT rank 1 killing itself", "killed_at", "died"),      # SIGKILL
    ("raising_rank", "deliberate failure on rank 1", "raised_at", "raised"),  # uncaught exception
], ids=["killed_rank_ends_the_job", "uncaught_exception_ends_the_job"])
def test_a_failing_rank_ends_the_job(tmp_path, job, evidence, stamp, what):
    rc, out, _ = run(job, tmp_path, np=4)
    ended = time.time()
    assert rc != 0, out[-6000:]
    assert evidence in out, out[-6000:]
    assert "allreduce returned" not in out, out[-6000:]
    with open(tmp_path / stamp) as f:
        elapsed = ended - float(f.read())
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end after rank 1 {what}:\n{out[-6000:]}"


def test_skip_mode_stray_message_never_reaches_a_later_op(tmp_path):
    """Before each neighbor exchange had its own tag, rank 1's next
    neighbor_allreduce took rank 0's stray message as its data (35.0 instead
    of 2.0), and every later one was off by one op."""
    rc, out, _ = run("skip_mode_unreceived_send", tmp_path, np=3)
    assert rc == 0, out[-6000:]
    for r in range(3):
        assert f"RESULT rank {r} next ops ok" in out, out[-6000:]


def test_skip_mode_unsent_receive_fails_instead_of_hanging(tmp_path):
    """Rank 1 waits for a message rank 0 never sends (skip mode, no topology
    check): a warning after 1 s, then the op fails after 2 s naming the op and
    rank 0 (before: it waited forever, silently), and the job ends."""
    rc, out, secs = run("skip_mode_unsent_receive", tmp_path, np=2,
                        env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "1", "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS": "2"})
    assert rc != 0, out[-6000:]
    raised = [line for line in out.splitlines() if line.startswith("RESULT rank 1 unsent raised")]
    assert raised, out[-6000:]
    assert "'unsent'" in raised[0] and "nothing yet from ranks [0]" in raised[0], raised[0]
    assert "enable_topo_check" in raised[0], raised[0]
    assert any(re.search(r"has waited \d+ s", line) and "rank 1" in line for line in out.splitlines()), out[-6000:]
    assert "RESULT rank 1 unsent returned" not in out, out[-6000:]


def test_skip_mode_op_never_submitted_elsewhere_fails_instead_of_hanging(tmp_path):
    """Skip mode: rank 0 runs an allreduce rank 1 never submits. Nothing
    negotiates, so the deadlock check cannot see it; the skip-mode agreement
    that precedes each op warns after 1 s and fails the op after 2 s, naming
    it (before: rank 0 waited forever, silently). Rank 0 catches the error and
    shuts down; with the collective still pending there, that ends the job
    (before: rank 1 then hung in its own shutdown)."""
    rc, out, secs = run("skip_mode_op_never_submitted", tmp_path, np=2,
                        env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "1", "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS": "2"})
    assert rc != 0, out[-6000:]
    raised = [line for line in out.splitlines() if line.startswith("RESULT rank 0 lonely raised")]
    assert raised, out[-6000:]
    assert "'lonely'" in raised[0] and "skip-negotiate mode" in raised[0], raised[0]
    assert "same order" in raised[0] and "STALL_SHUTDOWN" in raised[0], raised[0]
    assert any(re.search(r"'lonely' has waited 1 s", line) and "rank 0" in line for line in out.splitlines()), \
        out[-6000:]
    assert "RESULT rank 0 lonely returned" not in out, out[-6000:]
    assert "ending the whole job" in out, out[-6000:]
    assert "RESULT rank 1 shutdown returned" not in out, out[-6000:]
    assert secs < 45, secs


def test_skip_mode_shutdown_with_an_op_still_queued(tmp_path):
    rc, out, secs = run("skip_mode_shutdown_with_an_op_queued", tmp_path, np=2,
                        env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "5"})
    assert rc == 0, out[-6000:]
    assert "RESULT rank 1 x [2.0, 2.0, 2.0]" in out, out[-6000:]
    for r in (0, 1):
        assert f"RESULT rank {r} shutdown returned" in out, out[-6000:]
    assert "has waited" not in out, out[-6000:]


def test_hierarchical_ops_started_seconds_apart_are_not_a_deadlock(tmp_path):
    rc, out, secs = run("hierarchical_started_apart", tmp_path, np=4,
                        env={"BLUEFOG_NODES_PER_MACHINE": "2", "BLUEFOG_STALL_CHECK_TIME_SECONDS": "1"})
    assert rc == 0, out[-6000:]
    assert "deadlocked" not in out, out[-6000:]
    for r in range(4):
        for n in ("h1", "h2"):
            assert f"RESULT rank {r} {n} [1.5, 1.5, 1.5]" in out, out[-6000:]


def test_an_intercommunicator_is_refused(tmp_path):
    rc, out, _ = run("intercomm_refused", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    for r in (0, 1):
        assert f"RESULT world rank {r} init raised bluefog init failed: init: the communicator is an intercommunicator" in out, out[-6000:]
        assert f"RESULT world rank {r} after 2.0" in out, out[-6000:]


def test_comm_null_is_refused_and_the_rest_runs_on_the_sub_communicator(tmp_path):
    rc, out, _ = run("comm_null_split", tmp_path, np=4)
    assert rc == 0, out[-6000:]
    for r in (0, 1):
        assert f"RESULT world rank {r} size 2 sum 1.0" in out, out[-6000:]
    for r in (2, 3):
        assert f"RESULT world rank {r} init raised init: comm is MPI.COMM_NULL" in out, out[-6000:]


def test_settings_that_must_agree_are_compared_at_init(tmp_path):
    rc, out, secs = run("settings_differ", tmp_path, np=3,
                        env={"BLUEFOG_FAST_ROUNDS": "1", "BLUEFOG_RING_ALLREDUCE_BYTES": "1048576"})
    assert rc == 0, out[-6000:]
    assert "ran an allreduce" not in out, out[-6000:]
    for r in range(3):
        lines = [ln for ln in out.splitlines() if ln.startswith(f"RESULT rank {r} init raised")]
        assert len(lines) == 1, out[-6000:]
        # The first differing setting, with every rank's value.
        assert "ranks disagree on BLUEFOG_FAST_ROUNDS: ranks [0, 2] have 1; rank [1] has 0" in lines[0], lines[0]
    # init can be called again with the settings fixed (MPI was left running).
    assert "RESULT rank 1 retried: [3.0, 3.0, 3.0]" in out and "RESULT rank 0 retried: [3.0, 3.0, 3.0]" in out, \
        out[-6000:]


@pytest.mark.parametrize("scenario, own, retried", [
    ("unparsable_setting", "invalid value 'fast' for BLUEFOG_CYCLE_TIME", True),
    ("too_low_thread_level", "MPI provides only MPI_THREAD_SINGLE", False),
])
def test_a_rank_that_cannot_start_fails_init_everywhere(tmp_path, scenario, own, retried):
    # Before: rank 1 raised alone and the others waited at init for it (for
    # good, when rank 1 went on, e.g. in a notebook).
    rc, out, _ = run(scenario, tmp_path, np=3)
    assert rc == 0, out[-6000:]
    assert "init succeeded" not in out, out[-6000:]
    lines = {r: [ln for ln in out.splitlines() if ln.startswith(f"RESULT rank {r} init raised")] for r in range(3)}
    assert all(len(v) == 1 for v in lines.values()), out[-6000:]
    assert lines[1][0].startswith(f"RESULT rank 1 init raised ValueError: bluefog init failed: {own}"), lines[1][0]
    for r in (0, 2):
        assert f"ValueError: bluefog init failed: init: BlueFog could not start on rank [1] (rank 1: {own}" \
            in lines[r][0], lines[r][0]
    for r in range(3):
        assert (f"RESULT rank {r} retried: [3.0, 3.0, 3.0]" in out) == retried, out[-6000:]


DEADLOCK_ENV = {"BLUEFOG_STALL_CHECK_TIME_SECONDS": "1"}


@pytest.mark.parametrize("scenario, mine, theirs", [
    (s, "allreduce 'grad.{}'", "'grad.{}'") for s in ("names_differ", "names_differ_in_fast_rounds",
                                                      "names_differ_nonblocking",
                                                      "names_differ_nonblocking_in_fast_rounds")
] + [
    # (the pending list says which window op the other rank has pending)
    ("window_names_differ", "win_create 'win.{}'", "win_create 'win.{}'"),
])
def test_ops_named_differently_on_each_rank_fail_instead_of_hanging(tmp_path, scenario, mine, theirs):
    # Before: a hang, with a stall warning every BLUEFOG_STALL_CHECK_TIME_SECONDS.
    rc, out, _ = run(scenario, tmp_path, env=DEADLOCK_ENV)
    assert rc == 0, out[-6000:]
    if scenario.endswith("fast_rounds"):
        assert "RESULT rank 0 fast rounds on" in out and "RESULT rank 1 fast rounds on" in out, out[-6000:]
    for r, other in ((0, 1), (1, 0)):
        line = [ln for ln in out.splitlines() if ln.startswith(f"RESULT rank {r} raised after")]
        assert len(line) == 1, out[-6000:]
        # Its own op: submitted by itself only, and what the other rank has pending instead.
        assert f"{mine.format(r)}: deadlocked: submitted by rank [{r}] but not by rank [{other}]" in line[0], line[0]
        assert f"pending instead on rank {other}: {theirs.format(other)}" in line[0], line[0]
        assert "under the same name" in line[0], line[0]
        assert float(re.search(r"after ([0-9.]+) s", line[0]).group(1)) >= 0.9, line[0]  # not before the stall time
        assert f"RESULT rank {r} after 2.0" in out, out[-6000:]


@pytest.mark.parametrize("scenario, mine, theirs", [
    ("tf_names_differ", "allreduce 'grad.{}'", "'grad.{}'"),
    ("tf_function_names_differ", "allreduce 'grad.{}.0'", "'grad.{}.0', 'grad.{}.1'"),  # a grouped allreduce
])
def test_tensorflow_ops_named_differently_on_each_rank_fail_instead_of_hanging(tmp_path, scenario, mine, theirs):
    # TensorFlow's executor, not a BlueFog wait, blocks on these ops. Before: a hang.
    rc, out, _ = run(scenario, tmp_path, env=DEADLOCK_ENV)
    assert rc == 0, out[-6000:]
    for r, other in ((0, 1), (1, 0)):
        line = [ln for ln in out.splitlines() if ln.startswith(f"RESULT rank {r} raised after")]
        assert len(line) == 1, out[-6000:]
        assert f"{mine.format(r)}: deadlocked: submitted by rank [{r}] but not by rank [{other}]" in line[0], line[0]
        assert f"pending instead on rank {other}: {theirs.format(other, other)}" in line[0], line[0]
        assert float(re.search(r"after ([0-9.]+) s", line[0]).group(1)) >= 0.9, line[0]
        assert f"RESULT rank {r} after 2.0" in out, out[-6000:]


def test_a_rank_running_one_iteration_more_fails_instead_of_hanging(tmp_path):
    rc, out, _ = run("uneven_loops", tmp_path, env=DEADLOCK_ENV)
    assert rc == 0, out[-6000:]
    r0 = [ln for ln in out.splitlines() if ln.startswith("RESULT rank 0 raised after")]
    r1 = [ln for ln in out.splitlines() if ln.startswith("RESULT rank 1 raised after")]
    assert len(r0) == 1 and len(r1) == 1, out[-6000:]
    assert "'final'" in r0[0] and "pending instead on rank 1: 'it.2'" in r0[0], r0[0]
    assert "'it.2'" in r1[0] and "pending instead on rank 0: 'final'" in r1[0], r1[0]
    assert "RESULT rank 0 after 2.0" in out and "RESULT rank 1 after 2.0" in out, out[-6000:]


@pytest.mark.parametrize("scenario", ["pending_while_ranks_compute", "pending_while_ranks_compute_in_fast_rounds",
                                      "tf_pending_while_ranks_compute"])  # (a TensorFlow op counts as blocked)
def test_an_op_pending_while_the_ranks_compute_is_not_a_deadlock(tmp_path, scenario):
    rc, out, _ = run(scenario, tmp_path, env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "0.4"})
    assert rc == 0, out[-6000:]
    for r in (0, 1):
        assert f"RESULT rank {r} x [2.0, 2.0, 2.0]" in out, out[-6000:]
    assert "deadlocked" not in out, out[-6000:]


@pytest.mark.parametrize("check", ["0", "1"])
def test_a_thread_that_submits_while_others_wait_needs_the_check_off(tmp_path, check):
    # The check's known limit: a thread that neither waits nor submits for the
    # stall time, then submits what the waiting threads need. With the check on
    # its ops are declared deadlocked; BLUEFOG_DEADLOCK_CHECK=0 leaves them be.
    rc, out, _ = run("waits_on_another_thread", tmp_path, env={**DEADLOCK_ENV, "BLUEFOG_DEADLOCK_CHECK": check})
    assert rc == 0, out[-6000:]
    if check == "0":
        assert "deadlocked" not in out, out[-6000:]
        for r in (0, 1):
            assert f"RESULT rank {r} a [2.0] b [2.0]" in out, out[-6000:]
        assert "stall: allreduce 'a'" in out, out[-6000:]  # the warnings stay
    else:
        assert "RESULT rank 0 raised" in out and "RESULT rank 1 raised" in out, out[-6000:]
        assert "deadlocked" in out, out[-6000:]


def test_ops_completing_while_another_waits_are_not_a_deadlock(tmp_path):
    rc, out, _ = run("busy_while_op_pending", tmp_path, env={"BLUEFOG_STALL_CHECK_TIME_SECONDS": "0.3"})
    assert rc == 0, out[-6000:]
    for r in (0, 1):
        assert f"RESULT rank {r} late.op [2.0, 2.0, 2.0]" in out, out[-6000:]
    assert "deadlocked" not in out, out[-6000:]


def test_a_forked_child_leaves_the_parents_bluefog_alone(tmp_path):
    rc, out, _ = run("fork_child", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    for r in (0, 1):
        assert f"RESULT child of rank {r} sees rank {r} size 2" in out, out[-6000:]
        raised = [line for line in out.splitlines() if line.startswith(f"RESULT child of rank {r} op raised")]
        assert raised and "forked" in raised[0], out[-6000:]
        assert f"RESULT rank {r} child status 0 raising child status 256 after [2.0, 2.0]" in out, out[-6000:]



def assert_interrupted_soon(out, what):
    """Rank 0 said its `what` was interrupted, well before the late peer came."""
    line = [x for x in out.splitlines() if x.startswith(f"RESULT rank 0 {what} interrupted after")]
    assert line, out[-6000:]
    assert float(line[0].split()[-2]) < 10, line[0]  # (the peer only comes after it)


def test_interrupted_shutdown_waits_again(tmp_path):
    rc, out, _ = run("interrupted_shutdown", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    assert_interrupted_soon(out, "shutdown")
    assert "RESULT rank 0 op refused:" in out and "shutting down" in out, out[-6000:]
    assert "RESULT rank 0 init refused:" in out and "call shutdown() again" in out, out[-6000:]
    assert "RESULT rank 0 shut down, initialized False" in out, out[-6000:]
    assert "RESULT rank 1 shut down, initialized False" in out, out[-6000:]


def test_interrupted_skip_mode_switch_is_resumed(tmp_path):
    rc, out, _ = run("interrupted_skip_mode_switch", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    assert_interrupted_soon(out, "set_skip")
    for what in ("barrier", "allreduce"):
        line = [x for x in out.splitlines() if x.startswith(f"RESULT rank 0 {what} while switching refused:")]
        assert line and SWITCH_PENDING in line[0], out[-6000:]
    for r in (0, 1):
        assert f"RESULT rank {r} skip True in.skip [2.0, 2.0] then skip False after 2.0" in out, out[-6000:]


def test_interrupted_window_ops_finish_cleanly(tmp_path):
    rc, out, _ = run("interrupted_window_ops", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    assert "RESULT rank 0 win_create interrupted" in out, out[-6000:]
    assert "RESULT rank 0 windows ['w']" in out and "RESULT rank 1 windows ['w']" in out, out[-6000:]
    assert "RESULT rank 0 mutex wait interrupted" in out, out[-6000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT rank 1 mutex put took")]
    assert line and float(line[0].split()[-2]) < 5, out[-6000:]
    assert "RESULT rank 0 freed" in out and "RESULT rank 1 freed" in out, out[-6000:]


def test_ctrl_c_interrupts_a_wait_for_a_late_peer(tmp_path):
    rc, out, _ = run("interrupted_waits", tmp_path, np=2)
    assert rc == 0, out[-6000:]
    for what in ("synchronize", "composite", "barrier"):
        assert_interrupted_soon(out, what)
    # the in-place result reached the strided tensor after the second synchronize
    assert "RESULT rank 0 late.op [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]" in out, out[-6000:]
    assert "RESULT rank 1 late.op [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]" in out, out[-6000:]
    assert "RESULT rank 0 late.composite [1.0, 1.0, 1.0]" in out, out[-6000:]
    assert "RESULT rank 0 barrier resumed" in out, out[-6000:]
    assert "RESULT rank 0 alarm interrupted" in out, out[-6000:]
    assert "RESULT rank 0 late.op2 [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]" in out, out[-6000:]
    assert "RESULT rank 0 after 2.0" in out and "RESULT rank 1 after 2.0" in out, out[-6000:]
