"""Shared by the per-kernel benchmark scripts: timing, the device record, result files."""
import datetime
import json
import os
import statistics
import time

import torch

from mage_fast.roofline import roofline_for
from mage_fast.telemetry import nvml_snapshot, versions

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench_ms(fn, warmup=25, rep=100):
    """Median, 20th and 80th percentile ms of fn: triton.testing.do_bench (CUDA events, L2
    flushed between calls) on a GPU; perf_counter on CPU, for smoke runs only."""
    if torch.cuda.is_available():
        import triton.testing
        p50, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return {"ms": p50, "ms_p20": p20, "ms_p80": p80}
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_p20": min(times), "ms_p80": max(times)}


def device_record():
    """What a result needs to be reproducible: device, driver, clocks, versions, date."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    roof = roofline_for(name)
    return {"device": name, "date": datetime.date.today().isoformat(), "versions": versions(),
            "nvml": nvml_snapshot(), "roofline": roof.__dict__ if roof else None}


def peak_memory_gib(fn):
    """Peak CUDA memory of one call of fn (NaN off GPU)."""
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def markdown_table(rows, columns):
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name, rows, columns, record=None, save=True):
    """Print the table and (if save) write benchmarks/results/<device>-<date>-<name>.{json,md}."""
    record = record or device_record()
    table = markdown_table(rows, columns)
    print(table)
    if not save:
        return None
    stem = f"{record['device'].replace(' ', '_')}-{record['date']}-{name}"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as f:
        json.dump({**record, "benchmark": name, "rows": rows}, f, indent=2, default=str)
    with open(os.path.join(RESULTS, stem + ".md"), "w") as f:
        f.write(f"# {name} on {record['device']} ({record['date']})\n\n{table}\n")
    return stem
