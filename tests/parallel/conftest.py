"""Runs on every rank of a parallel test job."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # A rank whose tests failed must not wait for its peers in the atexit
    # shutdown (they may be blocked in an op it never issued): leave at once,
    # so the launcher sees the failure and ends the job.
    if exitstatus not in (0, 5):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(exitstatus))
