"""What is available here (the C++/CUDA extension, Triton, a GPU) and each op's backend: the
implementation it runs and why. A missing piece is logged once, never hidden.

Each op module registers its `backend(device_type, dtype=None) -> (implementation, reason)` here
when it is imported (mage_fast.ops imports them all, and `import mage_fast` imports mage_fast.ops);
this module imports nothing of mage_fast.ops, so the dependency runs one way."""
import functools
import logging
from typing import Callable, Dict, Optional, Tuple

import torch

from .kernels._runtime import interpreting

log = logging.getLogger("mage_fast")

Backend = Tuple[str, str]  # (implementation, reason)

# op name -> its backend function.
_BACKENDS: Dict[str, Callable[..., Backend]] = {}


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


@torch.compiler.assume_constant_result  # fixed for the process: torch.compile need not trace it
def triton_backend(device_type: str, dtype: Optional[torch.dtype] = None) -> Backend:
    """The backend of a Triton op on device_type; with dtype, of a call on tensors of that dtype
    (the interpreter miscomputes bf16, so bf16 calls run in PyTorch under it)."""
    if triton_version() is None:
        return "pytorch", "Triton does not import (a warning was logged): the PyTorch formulation"
    if device_type == "cuda":
        return "triton", "Triton kernels"
    if device_type == "cpu" and interpreting():
        if dtype == torch.bfloat16:
            return "pytorch", "bf16 under Triton's interpreter, which miscomputes it: the PyTorch formulation"
        return "triton-interpret", ("Triton's interpreter on CPU tensors (TRITON_INTERPRET=1; slow, for tests); "
                                    "bf16 runs in PyTorch, which the interpreter miscomputes")
    return "pytorch", (f"no Triton kernel runs on {device_type} tensors: the PyTorch formulation "
                       "(MAGE_FAST_TRITON_INTERPRET=1 interprets the kernels instead)")


def register_backend(name: str):
    """Decorator: the function is op `name`'s backend, which backend_report() lists."""
    def wrap(backend):
        _BACKENDS[name] = backend
        return backend
    return wrap


def backend_report(device_type: Optional[str] = None) -> Dict[str, Dict[str, str]]:
    """{op: {"implementation": ..., "reason": ...}} for device_type (default: cuda if present)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    report = {}
    for name, backend in sorted(_BACKENDS.items()):
        impl, reason = backend(device_type)
        report[name] = {"implementation": impl, "reason": reason}
    return report
