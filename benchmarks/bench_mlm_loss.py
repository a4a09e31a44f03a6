"""The MLM head + label-smoothed loss (mage_fast.ops.mlm_loss: chunked, gradient computed in the
forward, logits never stored) against the official computation (materialised fp32 logits over
the 1024 codebook columns, log_softmax, the criterion), forward+backward, at MAGE-B's training
shape: batch 256 x 178 masked rows (the mean mask ratio), D 768, bf16 autocast and fp32.
Reports ms, TFLOP/s (3 GEMMs of 2*R*V*D), peak memory and speed-up.

    python benchmarks/bench_mlm_loss.py
"""
import torch

from common import compare, device_record, finish, setup
from mage_fast.ops.mlm_loss import mlm_loss, mlm_loss_ref

COLUMNS = ["dtype", "impl", "ms", "tflops", "of_peak", "peak_gib", "speedup"]


def main():
    args = setup(__doc__, "mlm_loss")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows_, dim, vocab = (64, 32, 1024) if args.smoke else (256 * 178, 768, 1024)
    record = device_record()
    rows = []
    for dtype in (torch.bfloat16, torch.float32) if device == "cuda" else (torch.float32,):
        h = torch.randn(rows_, dim, device=device, requires_grad=True)
        weight = torch.randn(vocab, dim, device=device) * dim ** -0.5
        bias = torch.zeros(vocab, device=device, requires_grad=True)
        targets = torch.randint(0, vocab, (rows_,), device=device)

        def step(loss_fn):
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_fn(h, weight, bias, targets)
            return torch.autograd.grad(loss, (h, bias))

        impls = {"official (materialised logits)": lambda: step(mlm_loss_ref),
                 "mage_fast mlm_loss": lambda: step(mlm_loss)}
        rows += compare(impls, {"dtype": str(dtype).replace("torch.", "")}, record, flop=3 * 2 * rows_ * vocab * dim)
    finish("mlm_loss", rows, COLUMNS, args, record)


if __name__ == "__main__":
    main()
