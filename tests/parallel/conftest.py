"""Runs on every rank of a parallel test job."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Where `import bluefog` comes from: this checkout, or another build of it (the
# MPICH build of tests/test_mpich_build.py names its own package tree).
IMPORT_ROOT = os.environ.get("BLUEFOG_TEST_IMPORT_ROOT") or ROOT
# First, even when PYTHONPATH has it too: `python -m pytest` puts the working
# directory (a checkout with its own build) before PYTHONPATH.
if IMPORT_ROOT in sys.path:
    sys.path.remove(IMPORT_ROOT)
sys.path.insert(0, IMPORT_ROOT)

_exit_status = {"code": 0}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["code"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # After the failure report is printed: a rank whose tests failed must not
    # wait for its peers in the atexit shutdown (they may be blocked in an op
    # it never issued). Leave at once, so the launcher ends the job.
    code = _exit_status["code"]
    if code not in (0, 5):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
