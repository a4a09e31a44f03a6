"""Benchmark of the decoding-step op against the reference and the official script's step.

The op reads each unknown row of logits once: at step 0 (everything unknown) its traffic is
B*256*V*itemsize bytes of logits plus the ids and outputs, reported as GB/s and as a fraction
of the device's HBM bandwidth.
"""
import torch

from common import bench_ms, device_record, finish, setup
from mage_fast.bench.baselines import official_step
from mage_fast.configs import MASK_ID
from mage_fast.ops import decode_step
from mage_fast.reference import decoding_step


def main():
    args = setup(__doc__, "decode_step")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = device_record()
    hbm = record["roofline"]["hbm_tbps"] if record["roofline"] else None
    rows = []
    batches = [2] if args.smoke else [64, 256, 512]
    for dtype in (torch.float32, torch.bfloat16):
        for b in batches:
            logits = torch.randn(b, 256, 1024, device=device, dtype=dtype) * 3
            ids = torch.full((b, 256), MASK_ID, device=device)
            seeds = torch.arange(b, device=device)
            traffic = logits.numel() * logits.element_size() + ids.numel() * 8 * 3 + seeds.numel() * 8
            candidates = {
                "mage_fast op": lambda: decode_step(logits, ids, seeds, 0, 12, 4.5),
                "reference (torch ops)": lambda: decoding_step(logits, ids, seeds, 0, 12, 4.5),
                "official step": lambda: official_step(logits, ids, 0, 12, 4.5),
            }
            times = {name: bench_ms(fn)["ms"] for name, fn in candidates.items()}
            for name, ms in times.items():
                gbps = traffic / (ms * 1e-3) / 1e9
                rows.append({"dtype": str(dtype).split(".")[-1], "batch": b, "impl": name, "ms": ms,
                             "GB/s": gbps, "of HBM": gbps / (hbm * 1e3) if hbm else float("nan"),
                             "op speed-up": ms / times["mage_fast op"]})
    finish("decode_step", rows, ["dtype", "batch", "impl", "ms", "GB/s", "of HBM", "op speed-up"], args, record)


if __name__ == "__main__":
    main()
