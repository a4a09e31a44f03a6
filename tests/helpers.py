"""Test utilities: error metrics, poisoned allocations, and the compile report's machinery
(Triton kernels compiled for real GPUs without one)."""
import contextlib
import importlib.util
import json
import os
from pathlib import Path

import torch

# What makes Triton kernels run on CPU tensors (mage_fast.kernels._runtime.interpreting).
INTERPRETER_VARIABLES = ("TRITON_INTERPRET", "MAGE_FAST_TRITON_INTERPRET")


def env_without_interpreter() -> dict:
    """os.environ for a child process that must take the ops' PyTorch paths, or compile kernels."""
    return {k: v for k, v in os.environ.items() if k not in INTERPRETER_VARIABLES}


def _refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as jq, browsers and RFC 8259 parsers do
    (Python's json accepts them by default)."""
    return json.loads(text, parse_constant=_refuse)


def crashing_after(fn, calls: int):
    """fn, but raising RuntimeError("crash") from its call number calls + 1 on: a run killed
    midway, for resume tests."""
    made = []

    def crashing(*args, **kwargs):
        made.append(None)
        if len(made) > calls:
            raise RuntimeError("crash")
        return fn(*args, **kwargs)
    return crashing


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf (never passes)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def assert_error_bounded(out, same_precision, exact, factor=2.0, atol=1e-6, what=""):
    """flash-attention's rule: the kernel's error against an exact (float64) result is at most
    `factor` times that of the same-precision PyTorch computation, plus a small atol."""
    err, base = rel_err(out, exact), rel_err(same_precision, exact)
    assert err <= factor * base + atol, f"{what}: error {err:.3e} vs PyTorch same-precision {base:.3e}"


def assert_nearest_codes(ids, z, codebook, rel=1e-5):
    """ids [B, H*W] are nearest codebook rows of the tokenizer's z [B, C, H, W] (token h*W + w):
    each chosen code's float64 distance is within rel x (|z|^2 + max |e|^2) of the best, about
    100x the fp32 round-off of a distance, and where the best code wins by more than that, the
    choice is the float64 argmin. Two fp32 computations that sum in other orders (the
    interpreter's BLAS and torch's MKL, say) may resolve a near-tie differently, on some CPUs
    and not others: an exact comparison there would test the machine, not the code."""
    rows = z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1]).double()
    e = codebook.double()
    dist = rows.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * rows @ e.t()
    two = dist.topk(2, dim=1, largest=False)
    tol = rel * (rows.pow(2).sum(1) + e.pow(2).sum(1).max())
    chosen = dist.gather(1, ids.reshape(-1, 1).long()).squeeze(1)
    assert (chosen - two.values[:, 0] <= tol).all(), "a code farther than round-off from the nearest"
    clear = two.values[:, 1] - two.values[:, 0] > tol
    assert clear.float().mean() > 0.99, "too many near-ties for the test to mean anything"
    assert torch.equal(ids.reshape(-1)[clear], two.indices[clear, 0])


def without_host_sync(fn):
    """fn() with CUDA's sync debug mode at 'error': any host sync inside raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to n inside the block, restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def poisoned_allocations():
    """torch.empty/empty_like return NaN-filled (float) or -1-filled (integer) tensors inside
    the block, so an element a kernel forgets to write shows up in the comparison."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    torch.empty = lambda *a, **k: poison(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(real_empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


def compile_report():
    """benchmarks/compile_report.py as a module: compiles every kernel as MAGE launches it."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_report.py"
    spec = importlib.util.spec_from_file_location("compile_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
