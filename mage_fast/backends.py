"""What is available here (the C++/CUDA extension, Triton, a GPU) and which implementation
each op uses, and why. A missing piece is logged once, never hidden."""
import functools
import logging
import os
from typing import Callable, Dict, Tuple

import torch

log = logging.getLogger("mage_fast")

# op name -> function returning (implementation, reason) for a device type ("cpu"/"cuda").
_OPS: Dict[str, Callable[[str], Tuple[str, str]]] = {}


def interpreting() -> bool:
    """Triton kernels run on CPU tensors under Triton's interpreter (slow; for tests)."""
    return os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1" or os.environ.get("TRITON_INTERPRET") == "1"


if os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1":
    # Must be set before any @triton.jit decorator runs.
    os.environ["TRITON_INTERPRET"] = "1"


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module mage_fast._C, or None (logged) if it is not built."""
    try:
        from . import _C
        return _C
    except ImportError as e:
        log.warning("mage_fast._C is not built (%s); the C++/CUDA ops fall back to PyTorch. "
                    "Rebuild with `make install`.", e)
        return None


def extension_info() -> dict:
    ext = extension()
    if ext is None:
        return {"built": False, "cpu": False, "cuda": False}
    return {"built": True, **ext.build_info()}


@functools.lru_cache(maxsize=None)
def triton_version():
    """Triton's version, or None (logged) if it does not import."""
    try:
        import triton
        return triton.__version__
    except ImportError as e:
        log.warning("Triton is not available (%s); the Triton kernels fall back to PyTorch.", e)
        return None


def triton_backend(device_type: str) -> Tuple[str, str]:
    """How a Triton op runs on device_type: (implementation, reason)."""
    if triton_version() is None:
        return "pytorch", "Triton does not import (a warning was logged): the PyTorch formulation"
    if device_type == "cuda":
        return "triton", "Triton kernels"
    if device_type == "cpu" and interpreting():
        return "triton-interpret", ("Triton's interpreter on CPU tensors (TRITON_INTERPRET=1; slow, for tests); "
                                    "bf16 runs in PyTorch, which the interpreter miscomputes")
    return "pytorch", (f"no Triton kernel runs on {device_type} tensors: the PyTorch formulation "
                       "(MAGE_FAST_TRITON_INTERPRET=1 interprets the kernels instead)")


@torch.compiler.assume_constant_result  # fixed for the process: torch.compile need not trace it
def uses_triton(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a Triton op runs its kernel for tensors of this device and dtype."""
    impl = triton_backend(device.type)[0]
    return impl == "triton" or (impl == "triton-interpret" and dtype != torch.bfloat16)


def register_op(name: str):
    """Decorator for a function device_type -> (implementation, reason) that says how op
    `name` runs; backend_report() collects them."""
    def wrap(choose):
        _OPS[name] = choose
        return choose
    return wrap


def backend_report(device_type: str = None) -> Dict[str, Dict[str, str]]:
    """{op: {"implementation": ..., "reason": ...}} for device_type (default: cuda if present)."""
    from . import ops  # noqa: F401  (importing registers the ops)
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    report = {}
    for name, choose in sorted(_OPS.items()):
        impl, reason = choose(device_type)
        report[name] = {"implementation": impl, "reason": reason}
    return report
