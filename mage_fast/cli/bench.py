"""`mage-fast bench`: training, fine-tuning and sampling throughput of MAGE on this machine, the
fast module timed side by side with the reference in one run, plus the per-kernel benchmarks.

For each workload: images/s, ms per step, TFLOP/s, MFU against the device's bf16 peak, peak
memory and the speed-up over its baseline (training from images: the reference under the same
autocast; training from cached token ids: the same module's step from images; fine-tuning and
sampling: the reference run as the official scripts run it). The tokenizer alone, as
`mage-fast tokenize` runs it, gets a row too (its MFU: the fraction of the roofline its FLOPs
reach). Device telemetry (NVML: name, driver, clocks, power, temperature) is recorded before
and after. On CUDA the model is MAGE-B;
on CPU the tiny test configuration, whose numbers only show that everything runs.

Each table shows the p20-p80 of a row's times beside its median; a speed-up marked "(noisy)" is
taken from a row (or a baseline) whose p20-p80 spans more than a fifth of its median, and its bar
in the plot is grey. Warnings raised while timing are listed after the tables.
"""
import os
import subprocess
import sys
import time
import warnings

import torch

from ..configs import CONFIGS
from ..distributed import check_device
from ..validation import NUM_ITER, PRECISIONS
from .common import add_device, non_negative_int, number, positive_int

KERNEL_SCRIPTS = ("attention", "vq", "token_drop", "decode_step", "mlm_loss")
BENCHMARKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "benchmarks")


def register(sub):
    p = sub.add_parser("bench", help="time MAGE training, sampling and the kernels on this machine",
                       description=__doc__)
    p.add_argument("--what", choices=("train", "finetune", "sample", "kernels", "all"), default="all",
                   help="which workloads (default: all; kernels need the repository's benchmarks/ folder)")
    p.add_argument("--model", choices=sorted(CONFIGS), default=None,
                   help="model size (default: mage_vit_base_patch16 on CUDA, mage_vit_tiny_test on CPU)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="training and fine-tuning images per step (default: 256 on CUDA, 2 on CPU)")
    p.add_argument("--sample-batch", type=positive_int, default=None,
                   help="the fast sampler's batch (default: the largest that fits on CUDA, 1 on CPU)")
    p.add_argument("--num-iter", type=number(NUM_ITER), default=12,
                   help="decoding steps of the sampling workload (default 12)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="precision of the fast module and of the reference it is compared with (default: bf16 on "
                        "CUDA, fp32 on CPU); the official-way baselines keep their own (fp16 training, fp32 sampling)")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timed repeats per workload (the median is reported)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls before timing")
    add_device(p)
    p.add_argument("--out", metavar="DIR", default="bench-results",
                   help="write each part's <device>-<date>-<part>.{json,md} there and merge that day's into "
                        "<device>-<date>.{json,md,png} (the plot needs matplotlib) (default: %(default)s)")
    p.set_defaults(func=run)


def run_kernel_scripts(out_dir, smoke):
    """Run each benchmarks/bench_<kernel>.py, which prints its table and writes its results to
    out_dir."""
    if not os.path.isdir(BENCHMARKS_DIR):
        print(f"kernels: skipped, the benchmark scripts are not here ({BENCHMARKS_DIR} is missing: "
              "run from a checkout of the repository)")
        return
    for name in KERNEL_SCRIPTS:
        cmd = [sys.executable, f"bench_{name}.py", "--results-dir", out_dir] + (["--smoke"] if smoke else [])
        print(f"\n== kernel benchmark: {name}", flush=True)
        proc = subprocess.run(cmd, cwd=BENCHMARKS_DIR, text=True)
        if proc.returncode:
            raise SystemExit(f"benchmarks/bench_{name}.py failed (exit {proc.returncode})")


def timed(label, workloads, *args, **kwargs):
    """Run one group of model workloads with a line as it starts and one per result as it ends:
    on CPU a group takes minutes."""
    print(f"{label} ...", flush=True)
    start = time.perf_counter()
    results = workloads(*args, **kwargs)
    results = results if isinstance(results, list) else [results]
    for r in results:
        print(f"  {r.workload}, {r.implementation}, batch {r.batch}: {r.median_ms:.1f} ms a step", flush=True)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def run(args):
    from ..bench.measure import device_record, roofline_peak
    from ..bench.report import collect, describe, describe_nvml, print_warnings, stem, table, write
    from ..bench.workloads import (
        COLUMNS,
        as_rows,
        class_conditional_workloads,
        contrastive_workloads,
        finetune_workloads,
        guided_sample_workloads,
        sample_workloads,
        tokenize_workload,
        train_workloads,
    )
    from ..telemetry import nvml_snapshot
    device = torch.device(check_device(args.device))
    cuda = device.type == "cuda"
    model = args.model or ("mage_vit_base_patch16" if cuda else "mage_vit_tiny_test")
    if not cuda:
        print(f"No GPU: timing {model} on CPU. These numbers show that everything runs; they say nothing "
              "about GPU throughput.")
    dtype = PRECISIONS[args.dtype] if args.dtype else None
    record = device_record()
    print(describe(record))
    peak = roofline_peak(record, "bf16_tflops") if cuda else None
    results = []
    batch = args.batch or (256 if cuda else 2)
    common = (device, args.warmup, args.repeats)
    # Warnings (a fallback, a deprecation) are listed after the tables rather than inside them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        if args.what in ("train", "all"):
            results += timed("training steps", train_workloads, model, batch, *common, dtype)
            results += timed("class-conditional training step", class_conditional_workloads, model, batch, *common,
                             dtype)
            results += timed("MAGE-C training step", contrastive_workloads, model, batch, *common, dtype)
            results += timed("tokenizer", tokenize_workload, model, batch, *common, dtype)
        if args.what in ("finetune", "all"):
            results += timed("fine-tuning steps", finetune_workloads, model, batch, *common, dtype)
        if args.what in ("sample", "all"):
            results += timed("sampling", sample_workloads, model, args.sample_batch, args.num_iter, *common,
                             dtype=dtype)
            results += timed("guided sampling", guided_sample_workloads, model, args.sample_batch, args.num_iter,
                             *common, dtype=dtype)
    rows = as_rows(results, peak)
    if args.what in ("kernels", "all"):
        run_kernel_scripts(os.path.abspath(args.out), smoke=not cuda)  # the scripts run in benchmarks/
    record["nvml_after"] = nvml_snapshot()
    print(f"\nafter the run: {describe_nvml(record['nvml_after'])}.")
    record["model"] = model
    if rows:
        print(f"\n{model} on {record['device']}\n{table(rows, COLUMNS)}")
        # Like each kernel script, the model workloads get their own file; collect merges them all.
        write(args.out, record, {f"workloads-{model}": (rows, COLUMNS)}, f"workloads-{model}")
    print_warnings(caught, "the model workloads")
    print("wrote " + ", ".join(collect(args.out, stem(record))))

