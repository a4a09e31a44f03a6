"""Token drop and restore (mage_fast.ops.token_drop) against the official nonzero-based code, forward
and forward+backward, at batch 256, D 768 (MAGE-B), bf16 and fp32: time, GB/s and the fraction of
HBM bandwidth (mage_fast.roofline), speed-up, peak memory.

Bytes are the least each op must move: every input and output tensor read or written once
(index tensors and tables included, each table once: its gathered rows come from L2). Our ops
are timed eagerly and replayed from a CUDA graph (the training step's launch-free setting); the
official code syncs with the host, so it is timed eagerly only.

    python benchmarks/bench_token_drop.py          # on a GPU: writes benchmarks/results/...
    python benchmarks/bench_token_drop.py --smoke  # tiny shapes, any machine
"""
import math

import torch

from common import compare, device_record, finish, setup
from mage_fast.cuda_graphs import capture

COLUMNS = ["op", "dtype", "impl", "ms", "gb_s", "of_hbm", "speedup", "peak_gib"]


def workloads(batch, dim, dtype, device):
    """{op: (bytes, {impl: fn})} for the sets, the encoder input and the restore."""
    from mage_fast.ops.token_drop import (
        embed_and_drop,
        embed_and_drop_ref,
        mask_sets,
        mask_sets_ref,
        restore,
        restore_ref,
    )
    num_masked = math.ceil(256 * 0.694)  # the mean mask ratio
    noise = torch.rand(batch, 256, device=device)
    keep_index, masked = mask_sets(noise, 128, num_masked)
    kept = keep_index.shape[1]
    ids = torch.randint(0, 1024, (batch, 256), device=device)
    tables = [torch.randn(s, device=device, dtype=dtype, requires_grad=True)
              for s in [(2025, dim), (257, dim), (dim,), (dim,)]]
    x = torch.randn(batch, kept, dim, device=device, dtype=dtype, requires_grad=True)
    pos = torch.randn(1, 257, dim, device=device, dtype=dtype, requires_grad=True)
    size = torch.finfo(dtype).bits // 8
    index_bytes = ids.numel() * 8 + masked.numel() + keep_index.numel() * 8
    table_bytes = sum(t.numel() for t in tables) * size
    rows_bytes = batch * kept * dim * size  # [B, 129, D]
    seq_bytes = batch * 257 * dim * size    # [B, 257, D]
    dy, dout = torch.randn_like(x), torch.randn(batch, 257, dim, device=device, dtype=dtype)

    def encoder(embed, backward):
        def run():
            out = embed(ids, masked, keep_index, *tables)
            return torch.autograd.grad(out, tables, dy) if backward else out
        return run

    def decoder(fill, backward):
        def run():
            out = fill(x, keep_index, masked, pos)
            return torch.autograd.grad(out, (x, pos), dout) if backward else out
        return run

    stats = batch * kept * 8  # mean and rstd, fp32
    return {
        "mask_sets": (noise.numel() * 4 + masked.numel() + keep_index.numel() * 8,
                      {"official": lambda: mask_sets_ref(noise, 128, num_masked),
                       "mage_fast": lambda: mask_sets(noise, 128, num_masked)}),
        "embed_and_drop fwd": (index_bytes + table_bytes + rows_bytes + stats,
                               {"official": encoder(embed_and_drop_ref, False),
                                "mage_fast": encoder(embed_and_drop, False)}),
        "embed_and_drop fwd+bwd": (2 * (index_bytes + table_bytes + rows_bytes + stats) + table_bytes,
                                   {"official": encoder(embed_and_drop_ref, True),
                                    "mage_fast": encoder(embed_and_drop, True)}),
        "restore fwd": (index_bytes + rows_bytes + pos.numel() * size + seq_bytes,
                        {"official": decoder(restore_ref, False), "mage_fast": decoder(restore, False)}),
        "restore fwd+bwd": (2 * (index_bytes + rows_bytes + pos.numel() * size + seq_bytes),
                            {"official": decoder(restore_ref, True), "mage_fast": decoder(restore, True)}),
    }


def main():
    args = setup(__doc__, "token_drop")
    cuda = torch.cuda.is_available()
    record = device_record()
    batch, dim = (2, 64) if args.smoke else (256, 768)
    rows = []
    for dtype in (torch.bfloat16, torch.float32) if cuda else (torch.float32,):
        for op, (nbytes, impls) in workloads(batch, dim, dtype, "cuda" if cuda else "cpu").items():
            if cuda:
                impls["mage_fast (CUDA graph)"] = capture(impls["mage_fast"])[0].replay
            case = {r["impl"]: r for r in compare(impls, {"op": op, "dtype": str(dtype).replace("torch.", "")},
                                                   record, nbytes=nbytes)}
            if cuda:  # a replay allocates nothing: the graph's pool holds what one eager call allocates
                case["mage_fast (CUDA graph)"]["peak_gib"] = case["mage_fast"]["peak_gib"]
            rows += case.values()
    finish("token_drop", rows, COLUMNS, args, record)


if __name__ == "__main__":
    main()
