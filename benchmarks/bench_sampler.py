"""Sampling throughput (256x256, VQGAN decode included) at num_iter 20 and 12: the fast module in
the CUDA-graph sampler at its maximum batch, against the reference run as the official script
runs it (fp32 eager, batch 32, torch Categorical + numpy Gumbel) and the reference under bf16
autocast at that batch; the fast sampler at batch 32 too, against that bf16 reference. MFU
from the FLOP counts of docs/kernels.md#model-flop-counts: T x ~78 GFLOP + ~187 GFLOP (MAGE-B).

Also the VQGAN decode alone, in NCHW and in channels_last (the sampler's choice), time and peak
memory at batch 32: convolutions prefer channels_last on tensor cores, but a GroupNorm that
only takes NCHW would copy the activations back and forth, costing time and, through peak
memory, the maximum batch.

    python benchmarks/bench_sampler.py [--model mage_vit_base_patch16] [--batch N]
"""
import copy

import torch

from common import compare, device_record, finish, roofline_peak, setup
from mage_fast.bench.workloads import COLUMNS, as_rows, sample_workloads
from mage_fast.configs import CONFIGS


def main():
    def extra(p):
        p.add_argument("--model", default="mage_vit_base_patch16", choices=sorted(CONFIGS))
        p.add_argument("--batch", type=int, help="the sampler's batch (default: the largest that fits)")
        p.add_argument("--repeats", type=int, default=3)
    args = setup(__doc__, "sampler", extra)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = "mage_vit_tiny_test" if args.smoke else args.model
    record = device_record()
    peak = roofline_peak(record, "bf16_tflops")
    rows = []
    for num_iter in (2,) if args.smoke else (20, 12):
        rows += as_rows(sample_workloads(model, args.batch, num_iter, device, warmup=1, repeats=args.repeats), peak)
    finish(f"sampler-{model}", rows, COLUMNS, args, record)
    finish(f"sampler-decode-{model}", decode_layouts(model, 1 if args.smoke else 32, device, record),
           ["workload", "batch", "impl", "ms", "ms_p20", "ms_p80", "peak_gib", "speedup"], args, record)


def decode_layouts(model_name, batch, device, record):
    """Rows of compare(): the VQGAN decoder in NCHW (baseline) and channels_last, under the
    sampler's autocast (bf16 on a GPU)."""
    from mage_fast.reference.vqgan import VQGAN
    cfg = CONFIGS[model_name].vqgan
    vqgan = VQGAN(cfg).to(device).eval()
    z = vqgan.quantize.lookup(torch.randint(0, cfg.codebook_size, (batch, 256), device=device))

    def decode(layout):
        decoder, x = copy.deepcopy(vqgan.decoder).to(memory_format=layout), z.contiguous(memory_format=layout)

        @torch.no_grad()
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return decoder(x)
        return run
    impls = {"NCHW": decode(torch.contiguous_format), "mage_fast sampler (channels_last)": decode(torch.channels_last)}
    return compare(impls, {"workload": "vqgan decode", "batch": batch}, record)


if __name__ == "__main__":
    main()
