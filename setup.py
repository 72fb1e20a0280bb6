"""Build BlueFog: setup.py drives CMake (see CMakeLists.txt and cmake/).

Build-time switches (environment):
  BLUEFOG_WITH_PYTORCH=1/0   require / skip the PyTorch extension (default: build it if torch imports)
  BLUEFOG_WITH_TENSORFLOW=1/0  require / skip the TensorFlow op library (default: build it if tensorflow imports)
  MPICXX / MPICC             MPI compiler wrappers (default: mpicxx / mpicc on PATH)
  BLUEFOG_BUILD_DIR          CMake build directory (default: build/cmake, reused between builds)
  BLUEFOG_BUILD_JOBS         parallel compile jobs (default: number of CPUs)
  BLUEFOG_WITH_NCCL=1        refused: there is no NCCL controller yet (GPU tensors are staged
                             through the CPU); 0 or unset builds as usual
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _switch(name):
    """None (auto), True (require) or False (skip) from a 0/1 variable."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name}={value!r}: expected 0 or 1")


def _torch_cmake_args():
    want = _switch("BLUEFOG_WITH_PYTORCH")
    if want is False:
        return ["-DBLUEFOG_BUILD_TORCH=OFF"]
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        if want:
            raise SystemExit(f"BLUEFOG_WITH_PYTORCH=1 but torch does not import: {exc}")
        print("bluefog: torch not importable at build time; building without the PyTorch extension. "
              "Install torch first and build with `pip install --no-build-isolation .`", file=sys.stderr)
        return ["-DBLUEFOG_BUILD_TORCH=OFF"]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        "-DBLUEFOG_BUILD_TORCH=ON",
        "-DBLUEFOG_TORCH_INCLUDE_DIRS=" + ";".join(cpp_extension.include_paths()),
        "-DBLUEFOG_TORCH_LIBRARY_DIRS=" + ";".join(cpp_extension.library_paths()),
        f"-DBLUEFOG_TORCH_CXX11_ABI={abi}",
        "-DBLUEFOG_PYTHON_INCLUDE_DIR=" + sysconfig.get_paths()["include"],
    ]


def _tensorflow_cmake_args():
    want = _switch("BLUEFOG_WITH_TENSORFLOW")
    if want is False:
        return ["-DBLUEFOG_BUILD_TENSORFLOW=OFF"]
    try:
        import tensorflow as tf
    except ImportError as exc:
        if want:
            raise SystemExit(f"BLUEFOG_WITH_TENSORFLOW=1 but tensorflow does not import: {exc}")
        print("bluefog: tensorflow not importable at build time; building without the TensorFlow ops. "
              "Install tensorflow first and build with `pip install --no-build-isolation .`", file=sys.stderr)
        return ["-DBLUEFOG_BUILD_TENSORFLOW=OFF"]
    return [
        "-DBLUEFOG_BUILD_TENSORFLOW=ON",
        "-DBLUEFOG_TF_COMPILE_FLAGS=" + ";".join(tf.sysconfig.get_compile_flags()),
        "-DBLUEFOG_TF_LINK_FLAGS=" + ";".join(tf.sysconfig.get_link_flags()),
        "-DBLUEFOG_TF_LIBRARY_DIR=" + tf.sysconfig.get_lib(),
    ]


class CMakeExtension(Extension):
    """A native library built by the CMake project (declared so that setuptools
    packages it and copies it back for in-place and editable builds)."""

    def __init__(self, name, optional=False):
        super().__init__(name, sources=[], optional=optional)


class CMakeBuild(build_ext):
    """Configures and builds every native library of the package with CMake.

    CMake writes the libraries under build_lib (named as setuptools expects);
    setuptools copies them into the source tree for in-place/editable builds.
    """

    _built = False

    def build_extension(self, ext):
        if not CMakeBuild._built:
            self._run_cmake()
            CMakeBuild._built = True
        if not os.path.exists(self.get_ext_fullpath(ext.name)) and not ext.optional:
            raise SystemExit(f"bluefog: CMake did not produce {ext.name}")

    def _run_cmake(self):
        if _switch("BLUEFOG_WITH_NCCL"):
            raise SystemExit("BLUEFOG_WITH_NCCL=1: this BlueFog has no NCCL controller yet (GPU tensors are "
                             "staged through the CPU and communicated with MPI); unset it to build")
        out_root = os.path.abspath(self.build_lib)
        build_dir = os.environ.get("BLUEFOG_BUILD_DIR", os.path.join(ROOT, "build", "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        # Prefer the tools of the running environment (a virtualenv's cmake,
        # ninja and MPI wrappers) even when it is not activated.
        env_bin = os.path.dirname(sys.executable)
        os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
        cmake = shutil.which("cmake") or "cmake"
        args = [cmake, "-S", ROOT, "-B", build_dir, f"-DBLUEFOG_OUTPUT_ROOT={out_root}",
                "-DCMAKE_BUILD_TYPE=Release"]
        if shutil.which("ninja") and not os.path.exists(os.path.join(build_dir, "Makefile")):
            args += ["-G", "Ninja"]
        args += _torch_cmake_args()
        args += _tensorflow_cmake_args()
        args.append("-DBLUEFOG_PYTHON_EXT_SUFFIX=" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.check_call(args)
        jobs = os.environ.get("BLUEFOG_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call([cmake, "--build", build_dir, "--parallel", jobs])


setup(
    ext_modules=[
        CMakeExtension("bluefog.common._bluefog_core"),
        CMakeExtension("bluefog.torch._C", optional=True),
        CMakeExtension("bluefog.tensorflow._ops", optional=True),
    ],
    cmdclass={"build_ext": CMakeBuild},
)
