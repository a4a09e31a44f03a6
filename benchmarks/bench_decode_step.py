"""Benchmark of the decoding-step op against the reference and the official script's step.

The op reads each unknown row of logits once: at step 0 (everything unknown) its traffic is
B*256*V*itemsize bytes of logits plus the ids and outputs, reported as GB/s and as a fraction
of the device's HBM bandwidth; speed-ups are over the official step.
"""
import torch

from common import compare, device_record, finish, setup
from mage_fast.bench.baselines import official_step
from mage_fast.configs import MASK_ID
from mage_fast.ops.decode_step import decode_step
from mage_fast.reference import decoding_step


def main():
    args = setup(__doc__, "decode_step")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = device_record()
    rows = []
    batches = [2] if args.smoke else [64, 256, 512]
    for dtype in (torch.float32, torch.bfloat16):
        for b in batches:
            logits = torch.randn(b, 256, 1024, device=device, dtype=dtype) * 3
            ids = torch.full((b, 256), MASK_ID, device=device)
            seeds = torch.arange(b, device=device)
            traffic = logits.numel() * logits.element_size() + ids.numel() * 8 * 3 + seeds.numel() * 8
            impls = {
                "official step": lambda: official_step(logits, ids, 0, 12, 4.5),
                "reference (torch ops)": lambda: decoding_step(logits, ids, seeds, 0, 12, 4.5),
                "mage_fast op": lambda: decode_step(logits, ids, seeds, 0, 12, 4.5),
            }
            rows += compare(impls, {"dtype": str(dtype).split(".")[-1], "batch": b}, record, nbytes=traffic)
    finish("decode_step", rows, ["dtype", "batch", "impl", "ms", "gb_s", "of_hbm", "peak_gib", "speedup"], args, record)


if __name__ == "__main__":
    main()
