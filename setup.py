"""Build of mage_fast and its extension mage_fast._C.

The C++ (CPU) ops are always built; the CUDA ops too when torch was built with CUDA and
nvcc is found. Install with `pip install -e . --no-build-isolation` (see the Makefile).
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Bit-identical CPU/CUDA decoding needs every float operation rounded on its own: no FMA
# contraction on either side (see csrc/decode_math.h).
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
# Binaries for A100 and H100/H200, and PTX of the newest for what comes after (the JIT keeps
# --fmad=false). MAGE_FAST_CUDA_ARCHS="90" (or "80 90") narrows the list: a GPU session builds
# for its own chip only, in half the time.
CUDA_ARCHS = (os.environ.get("MAGE_FAST_CUDA_ARCHS") or "80 90").split()  # unset or empty: both
NVCC_FLAGS = ["-O3", "--fmad=false"] + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS] + [
    f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]


def _with_cuda():
    if os.environ.get("MAGE_FAST_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    cpp = sorted(glob.glob("csrc/*.cpp"))
    cu = sorted(glob.glob("csrc/*.cu"))
    if _with_cuda() and cu:
        return CUDAExtension(
            "mage_fast._C", cpp + cu,
            define_macros=[("MAGE_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("mage_fast._C", cpp, extra_compile_args=CXX_FLAGS,
                        extra_link_args=["-fopenmp"])


setup(
    packages=find_packages(include=["mage_fast", "mage_fast.*"]) + ["mage_fast.kernels"],
    package_dir={"mage_fast.kernels": "kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
