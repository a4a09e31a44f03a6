"""Without Triton or the compiled extension the package still imports and works, on PyTorch
paths, and says so: in the log and in backend_report(). The layers depend one way: the kernels
import nothing of mage_fast, mage_fast.backends nothing of mage_fast.ops."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import env_without_interpreter
from mage_fast import backend_report, mage_vit_tiny_test
from mage_fast.backends import extension_info

OPS = {"attention", "decode_step", "mlm_loss", "token_drop", "vq_nearest"}

WITHOUT = """
import sys, logging
sys.modules["triton"] = None            # import triton fails
sys.modules["mage_fast._C"] = None      # so does the extension
logging.basicConfig(level=logging.WARNING)
import torch, mage_fast
report = mage_fast.backend_report("cuda")
assert {op["implementation"] for op in report.values()} == {"pytorch"}, report
torch.manual_seed(0)
model = mage_fast.mage_vit_tiny_test().eval()
images = torch.rand(1, 3, 256, 256)
loss = model(images, mask_ratio=0.6, noise=torch.rand(1, 256))
loss.backward()
ids = model.generate([1], num_iter=2)
assert torch.isfinite(loss) and ids.shape == (1, 256)
print("ok")
"""


def test_works_without_triton_or_the_extension():
    proc = subprocess.run([sys.executable, "-c", WITHOUT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert "Triton is not available" in proc.stderr and "mage_fast._C is not built" in proc.stderr


def test_report_names_every_op_and_a_reason():
    report = backend_report("cpu")
    assert set(report) == OPS
    assert all(op["implementation"] and op["reason"] for op in report.values())


def _imported_names(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or "")


def test_kernels_import_nothing_of_mage_fast():
    """kernels/ holds Triton code and launchers only: what they need comes in as arguments or
    from kernels/_runtime.py. A relative import that leaves the package counts too."""
    files = sorted((Path(__file__).parents[1] / "kernels").glob("*.py"))
    assert {f.name for f in files} >= {"attention.py", "token_drop.py", "vq.py", "_runtime.py"}
    for f in files:
        for name in _imported_names(f):
            assert not name.startswith(("mage_fast", "..")), f"kernels/{f.name} imports {name}"


BACKENDS_ALONE = """
import importlib.util, sys
# mage_fast without its __init__ (which imports the model, and with it the ops).
sys.modules["mage_fast"] = importlib.util.module_from_spec(importlib.util.find_spec("mage_fast"))
import mage_fast.backends
loaded = sorted(m for m in sys.modules if m.startswith(("mage_fast.ops", "mage_fast.model")))
assert not loaded, loaded
assert mage_fast.backends.backend_report("cpu") == {}
import mage_fast.ops  # each op registers its backend
print(sorted(mage_fast.backends.backend_report("cpu")))
"""


def test_backends_import_nothing_of_the_ops():
    """No import cycle: the ops register their backends with mage_fast.backends, which imports
    none of them."""
    proc = subprocess.run([sys.executable, "-c", BACKENDS_ALONE], capture_output=True, text=True, timeout=300,
                          env=env_without_interpreter())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(sorted(OPS))


INTERPRET = """
import os, torch
from mage_fast.kernels.vq import vq_nearest_kernel
from mage_fast.ops.vq import backend, vq_nearest, vq_nearest_ref
assert os.environ["TRITON_INTERPRET"] == "1" and type(vq_nearest_kernel).__name__ == "InterpretedFunction"
assert backend("cpu")[0] == "triton-interpret", backend("cpu")
g = torch.Generator().manual_seed(0)
z, codebook = (torch.randint(-3, 4, shape, generator=g).float() for shape in ((6, 16), (9, 16)))  # exact sums
assert torch.equal(vq_nearest(z, codebook), vq_nearest_ref(z, codebook))
print("ok")
"""


def test_mage_fast_triton_interpret_turns_the_interpreter_on():
    """MAGE_FAST_TRITON_INTERPRET=1 alone sets TRITON_INTERPRET before any kernel is defined."""
    env = {**env_without_interpreter(), "MAGE_FAST_TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", INTERPRET], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_fast_training_forward_compiles():
    """torch.compile traces the fast training forward (custom ops through their fake
    implementations, no graph break) and gives the eager loss and gradients; a mask ratio given
    as a tensor, as training passes it, changes every step without a recompile."""
    torch.manual_seed(0)
    model = mage_vit_tiny_test().eval()
    images, noise = torch.rand(2, 3, 256, 256), torch.rand(2, 256)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for ratio in (0.7, 0.55, 0.9):
        eager = model(images, mask_ratio=ratio, noise=noise)
        grads = torch.autograd.grad(eager, model.decoder_pos_embed_learned)
        loss = compiled(images, mask_ratio=torch.tensor(ratio, dtype=torch.float64), noise=noise)
        torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(loss, model.decoder_pos_embed_learned), grads,
                                   rtol=1e-4, atol=1e-7)
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(images, mask_ratio=torch.tensor(0.61, dtype=torch.float64), noise=noise)


@pytest.mark.gpu
def test_on_a_gpu_every_op_runs_its_fast_implementation():
    """A broken CUDA build, or a Triton that does not import, would otherwise show on a GPU
    machine only as skipped tests and slow fallbacks."""
    assert extension_info()["cuda"], extension_info()
    implementations = {op: r["implementation"] for op, r in backend_report("cuda").items()}
    assert implementations == {"attention": "triton", "token_drop": "triton", "vq_nearest": "triton",
                               "decode_step": "cuda", "mlm_loss": "pytorch"}, implementations
