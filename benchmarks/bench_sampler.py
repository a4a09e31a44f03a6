"""Sampling throughput of MAGE-B (256x256, VQGAN decode included): the CUDA-graph sampler at
its maximum batch against the reference run as the official script runs it (fp32 eager, batch
32, torch Categorical + numpy Gumbel) and the reference under bf16 autocast at that batch.
MFU from the spec's FLOP counts: T x ~78 GFLOP (transformer) + ~187 GFLOP (VQGAN decoder)."""
import argparse
import sys
import time

import torch

from bench_decode_step import official_step
from common import device_record, write_results
from mage_fast.benchmark import detokenizer_flops
from mage_fast.configs import CONFIGS, MASK_ID, SEQ_LEN, flops_per_image
from mage_fast.reference import mage_from_config
from mage_fast.sampler import Sampler, max_batch


def official_generate(model, batch, num_iter, temperature, dtype):
    ids = torch.full((batch, 256), MASK_ID, device="cuda" if torch.cuda.is_available() else "cpu")
    with torch.no_grad(), torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
        for step in range(num_iter):
            ids, filled = official_step(model.logits_unchecked(ids), ids, step, num_iter, temperature)
        return model.vqgan.decode(filled)


def images_per_s(fn, images, repeats):
    fn()  # warm-up (and graph capture)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images * repeats / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mage_vit_base_patch16", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, to check the script runs")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("bench_sampler needs a CUDA device (or --smoke for a CPU check of the script)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = "mage_vit_tiny_test" if args.smoke else args.model
    cfg = CONFIGS[name]
    model = mage_from_config(cfg).to(device).eval()
    record = device_record()
    peak = record["roofline"]["bf16_tflops"] if record["roofline"] else None
    rows = []
    for num_iter in ((2,) if args.smoke else (20, 12)):
        flops = num_iter * flops_per_image(cfg, SEQ_LEN) + detokenizer_flops(cfg)
        base_batch = 1 if args.smoke else 32
        runs = [("official: reference fp32 eager", base_batch,
                 lambda: official_generate(model, base_batch, num_iter, 6.0, torch.float32)),
                ("reference bf16 eager", base_batch,
                 lambda: official_generate(model, base_batch, num_iter, 6.0, torch.bfloat16))]
        sampler = Sampler(model, num_iter=num_iter, choice_temperature=6.0)
        batch = max_batch(sampler) if device == "cuda" else 1
        runs.append((f"graph sampler ({sampler.dtype})", batch, lambda: sampler.sample(list(range(batch)))))
        results = {label: (b, images_per_s(fn, b, args.repeats)) for label, b, fn in runs}
        official = results["official: reference fp32 eager"][1]
        for label, (b, ips) in results.items():
            tflops = ips * flops / 1e12
            rows.append({"num_iter": num_iter, "impl": label, "batch": b, "images/s": ips, "TFLOP/s": tflops,
                         "MFU": tflops / peak if peak else float("nan"), "vs official": ips / official})
    write_results(f"sampler-{name}", rows, ["num_iter", "impl", "batch", "images/s", "TFLOP/s", "MFU", "vs official"],
                  record, save=not args.smoke)


if __name__ == "__main__":
    main()
