"""Benchmark of the decoding-step op against the reference and the official script's step.

The op reads each unknown row of logits once: at step 0 (everything unknown) its traffic is
B*256*V*itemsize bytes of logits plus the ids and outputs, reported as GB/s and as a fraction
of the device's HBM bandwidth.
"""
import argparse
import math
import sys

import numpy as np
import torch

from common import bench_ms, device_record, write_results
from mage_fast.configs import MASK_ID
from mage_fast.ops import decode_step
from mage_fast.reference import decoding_step


def official_step(logits, ids, step, num_iter, temperature):
    """gen_img_uncond.py's step: torch Categorical, softmax, numpy Gumbel on the host, sort."""
    unknown = ids == MASK_ID
    sampled = torch.distributions.Categorical(logits=logits.float()).sample()
    sampled = torch.where(unknown, sampled, ids)
    ratio = (step + 1) / num_iter
    probs = torch.softmax(logits.float(), -1)
    selected = torch.gather(probs, -1, sampled.unsqueeze(-1)).squeeze(-1)
    selected = torch.where(unknown, selected.double(), math.inf).float()
    mask_len = torch.tensor([math.floor(256 * math.cos(math.pi / 2 * ratio))], device=ids.device)
    mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(unknown.sum(-1, keepdim=True) - 1, mask_len))
    noise = torch.tensor(temperature * (1 - ratio) * np.random.gumbel(size=selected.shape), device=ids.device)
    confidence = torch.log(selected) + noise
    cut = torch.sort(confidence, -1).values[:, mask_len[0].long() - 1: mask_len[0].long()]
    return torch.where(confidence <= cut, MASK_ID, sampled), sampled


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, to check the script runs")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("bench_decode_step needs a CUDA device (or --smoke for a CPU check of the script)")
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
    write_results("decode_step", rows, ["dtype", "batch", "impl", "ms", "GB/s", "of HBM", "op speed-up"],
                  record, save=not args.smoke)


if __name__ == "__main__":
    main()
