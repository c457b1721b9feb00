"""Builds x_transformers_cpp through CMake, so that the Python package and the C++ library, tests and examples come
out of one build (build/ in the source tree, reused by ctest). The package ships _C (bindings) and libxtc.so (ops).

Environment: XTC_BUILD_TESTS=1 also builds the GoogleTest binaries and the example's ctest entries;
XTC_CUDA_ARCHS (e.g. 90a) picks CUDA architectures when torch has CUDA; XTC_WITH_CUDA=OFF builds only the CPU
kernels against a CUDA build of torch (ON / OFF / AUTO, as the CMake option); MAX_JOBS caps parallel compile jobs;
XTC_BUILD_DIR moves the build folder.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("XTC_BUILD_DIR", os.path.join(ROOT, "build"))
        configure = [
            "cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}", "-DXTC_BUILD_PYTHON=ON",
        ]
        if shutil.which("ninja") and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            configure += ["-G", "Ninja"]
        if os.environ.get("XTC_BUILD_TESTS"):
            configure.append("-DXTC_BUILD_TESTS=" + ("ON" if os.environ["XTC_BUILD_TESTS"] != "0" else "OFF"))
        if os.environ.get("XTC_WITH_CUDA"):
            configure.append(f"-DXTC_WITH_CUDA={os.environ['XTC_WITH_CUDA']}")
        if os.environ.get("XTC_CUDA_ARCHS"):
            configure.append(f"-DXTC_CUDA_ARCHS={os.environ['XTC_CUDA_ARCHS']}")
        subprocess.check_call(configure)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", build_dir, "-j", jobs])

        package_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
        os.makedirs(package_dir, exist_ok=True)
        built = glob.glob(os.path.join(build_dir, "_C*.so")) + [os.path.join(build_dir, "libxtc.so")]
        for path in built:
            shutil.copy2(path, package_dir)


setup(ext_modules=[Extension("x_transformers_cpp._C", sources=[])], cmdclass={"build_ext": CMakeBuild})
