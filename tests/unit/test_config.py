"""The core's configuration parser (BLUEFOG_* settings), called through the C
ABI without starting MPI."""
import pytest

from bluefog.common.basics import parse_config


def test_defaults():
    c = parse_config("")
    assert c["cycle_time_ms"] == 0.5
    assert c["fusion_threshold_bytes"] == 8 * 1024 * 1024
    assert c["log_level"] == "warning"
    assert c["log_hide_time"] is False
    assert c["timeline_prefix"] == ""
    assert c["mpi_thread_level"] == 3
    assert c["nodes_per_machine"] == 0
    assert c["stall_check_seconds"] == 60
    assert c["stall_shutdown_seconds"] == 0
    assert c["spin_time_us"] == 200
    assert c["inline_bytes"] == 64 * 1024
    assert c["output_cache_bytes"] == 256 * 1024 * 1024
    assert c["caller_runs"] is True
    assert c["fast_rounds"] is True
    assert c["deadlock_check"] is True
    assert c["max_win_sent_length"] == 0
    assert c["ring_allreduce_bytes"] == 1024 * 1024
    assert c["p2p_gather_ranks"] == 32
    assert c["skip_pattern_matrix_ranks"] == 64


def test_every_setting_is_read():
    c = parse_config("\n".join([
        "BLUEFOG_CYCLE_TIME=2.5",
        "BLUEFOG_FUSION_THRESHOLD=1024",
        "BLUEFOG_LOG_LEVEL=DEBUG",
        "BLUEFOG_LOG_HIDE_TIME=1",
        "BLUEFOG_TIMELINE=/tmp/trace_",
        "BLUEFOG_MPI_THREAD_LEVEL=2",
        "BLUEFOG_NODES_PER_MACHINE=2",
        "BLUEFOG_STALL_CHECK_TIME_SECONDS=5",
        "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=30",
        "BLUEFOG_SPIN_TIME_US=0",
        "BLUEFOG_INLINE_BYTES=0",
        "BLUEFOG_OUTPUT_CACHE_BYTES=5",
        "BLUEFOG_CALLER_RUNS=0",
        "BLUEFOG_FAST_ROUNDS=0",
        "BLUEFOG_DEADLOCK_CHECK=0",
        "BLUEFOG_MAX_WIN_SENT_LENGTH=1000",
        "BLUEFOG_RING_ALLREDUCE_BYTES=0",
        "BLUEFOG_P2P_GATHER_RANKS=0",
        "BLUEFOG_SKIP_PATTERN_MATRIX_RANKS=0",
    ]))
    assert c == {
        "cycle_time_ms": 2.5, "fusion_threshold_bytes": 1024, "log_level": "debug", "log_hide_time": True,
        "timeline_prefix": "/tmp/trace_", "mpi_thread_level": 2, "nodes_per_machine": 2,
        "stall_check_seconds": 5, "stall_shutdown_seconds": 30, "spin_time_us": 0,
        "inline_bytes": 0, "output_cache_bytes": 5, "caller_runs": False, "fast_rounds": False,
        "deadlock_check": False, "max_win_sent_length": 1000, "ring_allreduce_bytes": 0,
        "p2p_gather_ranks": 0, "skip_pattern_matrix_ranks": 0,
    }


def test_stall_check_can_be_disabled():
    assert parse_config("BLUEFOG_STALL_CHECK_DISABLE=1")["stall_check_seconds"] == 0


def test_unrelated_variables_are_ignored():
    assert parse_config("BLUEFOG_WITH_NCCL=1\nPATH=/x") == parse_config("")


@pytest.mark.parametrize("line, variable", [
    ("BLUEFOG_CYCLE_TIME=fast", "BLUEFOG_CYCLE_TIME"),
    ("BLUEFOG_CYCLE_TIME=-1", "BLUEFOG_CYCLE_TIME"),
    ("BLUEFOG_CYCLE_TIME=nan", "BLUEFOG_CYCLE_TIME"),       # nan < 0 is false: it used to pass
    ("BLUEFOG_CYCLE_TIME=inf", "BLUEFOG_CYCLE_TIME"),
    ("BLUEFOG_STALL_CHECK_TIME_SECONDS=nan", "BLUEFOG_STALL_CHECK_TIME_SECONDS"),
    ("BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=inf", "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS"),
    ("BLUEFOG_FUSION_THRESHOLD=8MB", "BLUEFOG_FUSION_THRESHOLD"),
    ("BLUEFOG_LOG_LEVEL=loud", "BLUEFOG_LOG_LEVEL"),
    ("BLUEFOG_LOG_HIDE_TIME=maybe", "BLUEFOG_LOG_HIDE_TIME"),
    ("BLUEFOG_MPI_THREAD_LEVEL=4", "BLUEFOG_MPI_THREAD_LEVEL"),
    ("BLUEFOG_NODES_PER_MACHINE=0", "BLUEFOG_NODES_PER_MACHINE"),
    ("BLUEFOG_STALL_CHECK_TIME_SECONDS=soon", "BLUEFOG_STALL_CHECK_TIME_SECONDS"),
    ("BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=-3", "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS"),
    ("BLUEFOG_SPIN_TIME_US=-1", "BLUEFOG_SPIN_TIME_US"),
    ("BLUEFOG_INLINE_BYTES=64K", "BLUEFOG_INLINE_BYTES"),
    ("BLUEFOG_OUTPUT_CACHE_BYTES=-2", "BLUEFOG_OUTPUT_CACHE_BYTES"),
    ("BLUEFOG_CALLER_RUNS=sometimes", "BLUEFOG_CALLER_RUNS"),
    ("BLUEFOG_FAST_ROUNDS=often", "BLUEFOG_FAST_ROUNDS"),
    ("BLUEFOG_DEADLOCK_CHECK=perhaps", "BLUEFOG_DEADLOCK_CHECK"),
    ("BLUEFOG_MAX_WIN_SENT_LENGTH=-1", "BLUEFOG_MAX_WIN_SENT_LENGTH"),
    ("BLUEFOG_RING_ALLREDUCE_BYTES=-5", "BLUEFOG_RING_ALLREDUCE_BYTES"),
    ("BLUEFOG_RING_ALLREDUCE_BYTES=1M", "BLUEFOG_RING_ALLREDUCE_BYTES"),
    ("BLUEFOG_P2P_GATHER_RANKS=-1", "BLUEFOG_P2P_GATHER_RANKS"),
    ("BLUEFOG_SKIP_PATTERN_MATRIX_RANKS=-1", "BLUEFOG_SKIP_PATTERN_MATRIX_RANKS"),
    ("BLUEFOG_SKIP_PATTERN_MATRIX_RANKS=many", "BLUEFOG_SKIP_PATTERN_MATRIX_RANKS"),
    ("BLUEFOG_SKIP_PATTERN_MATRIX_RANKS=1025", "BLUEFOG_SKIP_PATTERN_MATRIX_RANKS"),
])
def test_malformed_values_name_the_variable(line, variable):
    with pytest.raises(ValueError) as info:
        parse_config(line)
    assert variable in str(info.value)
    assert line.split("=", 1)[1] in str(info.value)


def test_shutdown_time_must_not_be_shorter_than_check_time():
    with pytest.raises(ValueError, match="STALL_SHUTDOWN"):
        parse_config("BLUEFOG_STALL_CHECK_TIME_SECONDS=10\nBLUEFOG_STALL_SHUTDOWN_TIME_SECONDS=5")


def test_environment_is_read_and_overrides_win(monkeypatch):
    monkeypatch.setenv("BLUEFOG_CYCLE_TIME", "3")
    monkeypatch.setenv("BLUEFOG_FUSION_THRESHOLD", "77")
    c = parse_config("BLUEFOG_FUSION_THRESHOLD=99", use_env=True)
    assert c["cycle_time_ms"] == 3
    assert c["fusion_threshold_bytes"] == 99
    assert parse_config("", use_env=False)["cycle_time_ms"] == 0.5


def _keys():
    from bluefog.common.basics import get_basics
    return get_basics().config_keys()


def test_listed_settings_are_the_ones_the_parser_reads():
    import os
    import re
    src = open(os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "common", "config.cc")).read()
    read = set(re.findall(r'key == "(BLUEFOG_[A-Z0-9_]+)"', src))
    assert read and set(_keys()) == read
    # and the parser really acts on each (a malformed value is refused, naming it)
    for key in _keys():
        if key == "BLUEFOG_TIMELINE":  # any text is a prefix
            assert parse_config(f"{key}=/tmp/x")["timeline_prefix"] == "/tmp/x"
            continue
        with pytest.raises(ValueError, match=key):
            parse_config(f"{key}=@@")


@pytest.mark.parametrize("config, message", [
    ({"BLUEFOG_CYCLE_TIM": 1}, "unknown setting 'BLUEFOG_CYCLE_TIM' in config (did you mean BLUEFOG_CYCLE_TIME?)"),
    ({"fusion_threshold": 1}, "unknown setting 'fusion_threshold' in config; the settings are: BLUEFOG_CYCLE_TIME"),
    ({"BLUEFOG_TIMELINE": "a\nb"}, "the value of BLUEFOG_TIMELINE in config must fit on one line"),
])
def test_init_refuses_unknown_settings_before_starting(config, message):
    import bluefog.torch as bf
    was = bf.is_initialized()  # (False unless another test of this process started BlueFog)
    with pytest.raises(ValueError) as info:
        bf.init(config=config)
    assert message in str(info.value)
    assert bf.is_initialized() == was


def test_init_config_must_be_a_dict():
    import bluefog.torch as bf
    with pytest.raises(TypeError, match="config must be a dict"):
        bf.init(config=[("BLUEFOG_CYCLE_TIME", 1)])
