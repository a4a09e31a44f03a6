"""Shared fixtures. Without CUDA, Triton kernels run under the interpreter: the variable must
be set before any @triton.jit decorator runs, so it is set here, before tests import kernels.
Only tests marked `triton` (the kernel and fast-module tests) keep it while they run; the
others, and the commands they start, take the ops' PyTorch paths, which the interpreter would
make minutes slower."""
import os

import pytest
import torch

from helpers import INTERPRETER_VARIABLES

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _no_interpreter(mp: pytest.MonkeyPatch):
    for name in INTERPRETER_VARIABLES:
        mp.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="module")
def _interpret_only_kernel_tests(request):
    """Module-scoped, so it runs before the module's own module-scoped fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        if request.node.get_closest_marker("triton") is None:
            _no_interpreter(mp)
        yield


@pytest.fixture
def no_interpreter(monkeypatch):
    """This test runs as on a CPU machine without the interpreter: the ops' PyTorch paths."""
    _no_interpreter(monkeypatch)


# Tests of kernels that compile PTX or run a benchmark script compute nothing the CPU could change.
NOT_NUMERIC = ("compile_for_sm", "compiles_for_sm", "benchmark", "smoke")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # Under the interpreter tl.dot goes through numpy's BLAS: a `triton` test is a `machine` test.
        if item.get_closest_marker("triton") and not any(word in item.name for word in NOT_NUMERIC):
            item.add_marker(pytest.mark.machine)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny():
    """A tiny reference MAGE in eval mode (no dropout), fixed random weights."""
    from mage_fast.reference import mage_vit_tiny_test
    torch.manual_seed(0)
    return mage_vit_tiny_test().eval()


@pytest.fixture
def images():
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
