"""Importing bluefog.tensorflow from a build without the TensorFlow op library
fails with a clear ImportError that says how to rebuild, while bluefog.torch
keeps working (run in a subprocess that hides the library)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIDE_OPS = """
import bluefog.common.native as native
_real = native.find_library
native.find_library = lambda d, stem: None if stem == "_ops" else _real(d, stem)
"""


def run_python(code):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_missing_op_library_gives_rebuild_hint():
    proc = run_python(HIDE_OPS + """
try:
    import bluefog.tensorflow
except ImportError as e:
    print("IMPORT-ERROR:", e)
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORT-ERROR:" in proc.stdout
    assert "BLUEFOG_WITH_TENSORFLOW=1" in proc.stdout and "pip install" in proc.stdout


def test_torch_frontend_unaffected_by_missing_tensorflow_ops():
    pytest.importorskip("torch")
    from bluefog.common.native import find_library
    if find_library(os.path.join(ROOT, "bluefog", "torch"), "_C") is None:
        pytest.skip("built without the PyTorch extension")
    proc = run_python(HIDE_OPS + """
import bluefog.torch as bf
print("TORCH-OK", callable(bf.allreduce))
try:
    import bluefog.tensorflow
except ImportError:
    print("TF-IMPORT-ERROR")
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TORCH-OK True" in proc.stdout and "TF-IMPORT-ERROR" in proc.stdout
