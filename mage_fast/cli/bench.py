"""`mage-fast bench`: images/s and TFLOP/s of MAGE workloads on the local device."""
import json

import torch

from ..configs import CONFIGS


def register(sub):
    p = sub.add_parser("bench", help="time MAGE training and generation steps on this machine",
                       description=__doc__ + " On CUDA the default model is MAGE-B; on CPU the tiny "
                       "test configuration (its numbers say nothing about GPU speed).")
    p.add_argument("--model", choices=sorted(CONFIGS), default=None,
                   help="model size (default: mage_vit_base_patch16 on CUDA, mage_vit_tiny_test on CPU)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 32 on CUDA, 2 on CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per workload (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args):
    from ..benchmark import format_table, reference_workloads
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_name = args.model or ("mage_vit_base_patch16" if device.type == "cuda" else "mage_vit_tiny_test")
    batch = args.batch or (32 if device.type == "cuda" else 2)
    if batch < 1:
        raise SystemExit("--batch must be >= 1")
    if device.type == "cpu":
        print(f"No GPU: timing {model_name} on CPU. These numbers check that the workloads run; "
              "they say nothing about GPU throughput.")
    results = reference_workloads(model_name, batch, device, args.warmup, args.repeats)
    title = f"{model_name} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
    print(format_table(results, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model_name, "device": title, "results": [r.as_dict() for r in results]}, f, indent=2)
