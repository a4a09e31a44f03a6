"""Sampling throughput (256x256, VQGAN decode included) at num_iter 20 and 12: the fast module in
the CUDA-graph sampler at its maximum batch, against the reference run as the official script
runs it (fp32 eager, batch 32, torch Categorical + numpy Gumbel) and the reference under bf16
autocast at that batch; the fast sampler at batch 32 too, against that bf16 reference. MFU
from MAGE_SPEC's FLOP counts: T x ~78 GFLOP + ~187 GFLOP (MAGE-B).

    python benchmarks/bench_sampler.py [--model mage_vit_base_patch16] [--batch N]
"""
import torch

from common import device_record, finish, roofline_peak, setup
from mage_fast.bench.workloads import COLUMNS, sample_workloads
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
        results = sample_workloads(model, args.batch, num_iter, device, warmup=1, repeats=args.repeats)
        base = {r.implementation: r.images_per_s for r in results}
        rows += [r.as_dict(peak, base[r.baseline]) for r in results]
    finish(f"sampler-{model}", rows, COLUMNS, args, record)


if __name__ == "__main__":
    main()
