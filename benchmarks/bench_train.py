"""Training-step throughput (tokenizer, forward, backward, AdamW; batch 256 per GPU): the fast
module under bf16 autocast, eager and captured in a CUDA graph, against the reference under the
same autocast and the reference run the official way (fp16 autocast, materialised fp32
attention scores); the fast steps from cached token ids (`train --tokens`: no tokenizer)
against the same steps from images; the tokenizer alone, as `mage-fast tokenize` runs it.
MFU from the FLOP count: 3x the transformer forward (+ the tokenizer's forward from images).
--workload finetune times the fine-tuning step instead (the classifier over all 257 tokens,
AdamW with layer-wise lr decay), the fast classifier against the official way.

    python benchmarks/bench_train.py [--model mage_vit_base_patch16] [--batch 256] [--workload finetune]
"""
import torch

from common import device_record, finish, roofline_peak, setup
from mage_fast.bench.workloads import COLUMNS, as_rows, finetune_workloads, tokenize_workload, train_workloads
from mage_fast.configs import CONFIGS


def main():
    def extra(p):
        p.add_argument("--model", default="mage_vit_base_patch16", choices=sorted(CONFIGS))
        p.add_argument("--batch", type=int, default=256, help="images per step (default: 256)")
        p.add_argument("--repeats", type=int, default=5)
        p.add_argument("--workload", choices=("train", "finetune"), default="train")
    args = setup(__doc__, "train", extra)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, batch = ("mage_vit_tiny_test", 1) if args.smoke else (args.model, args.batch)
    record = device_record()
    peak = roofline_peak(record, "bf16_tflops")
    if args.workload == "train":
        results = train_workloads(model, batch, device, warmup=2, repeats=args.repeats)
        results.append(tokenize_workload(model, batch, device, warmup=2, repeats=args.repeats))
    else:
        results = finetune_workloads(model, batch, device, warmup=2, repeats=args.repeats)
    finish(f"{args.workload}-{model}", as_rows(results, peak), COLUMNS, args, record)


if __name__ == "__main__":
    main()
