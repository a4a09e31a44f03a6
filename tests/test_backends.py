"""Without Triton or the compiled extension the package still imports and works, on PyTorch
paths, and says so: in the log and in backend_report()."""
import subprocess
import sys

import pytest
import torch

from mage_fast import backend_report, mage_vit_tiny_test
from mage_fast.backends import extension_info

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
    assert set(report) == {"attention", "decode_step", "mlm_loss", "token_drop", "vq_nearest"}
    assert all(op["implementation"] and op["reason"] for op in report.values())


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
