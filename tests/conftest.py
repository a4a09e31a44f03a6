"""Shared fixtures. Without CUDA, Triton kernels run under the interpreter: the variable must
be set before any @triton.jit decorator runs, so it is set here, before tests import kernels."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
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
