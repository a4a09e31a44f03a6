"""Timing and the record that makes a timing reproducible."""
import datetime
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from ..roofline import roofline_for
from ..telemetry import nvml_snapshot, versions


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Wall time of each of `repeats` calls of fn, in ms, after `warmup` calls: CUDA events on a
    GPU (for whole steps, which dwarf the L2 cache), perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_ms(fn, warmup=25, rep=100):
    """Median, 20th and 80th percentile ms of a kernel-sized fn: triton.testing.do_bench (CUDA
    events, L2 flushed between calls) on a GPU; perf_counter on CPU, for smoke runs only."""
    if torch.cuda.is_available():
        import triton.testing
        p50, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return {"ms": p50, "ms_p20": p20, "ms_p80": p80}
    times = time_ms(fn, torch.device("cpu"), warmup=1, repeats=3)
    return {"ms": statistics.median(times), "ms_p20": min(times), "ms_p80": max(times)}


def peak_memory_gib(fn) -> Optional[float]:
    """Peak CUDA memory of one call of fn above what was allocated before (None off GPU)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def roofline_peak(record: dict, key: str) -> Optional[float]:
    """The device's 'bf16_tflops' or 'hbm_tbps' from a device_record, None where unknown."""
    return record["roofline"][key] if record.get("roofline") else None


def attainable_tflops(record: dict, flop: float, nbytes: float) -> Optional[float]:
    """The roofline at a kernel's arithmetic intensity: min(bf16 peak, FLOP/byte x HBM TB/s),
    None where unknown. The model rows use it; attention's own bound, recounted with its padding
    and recomputation, is in docs/kernels.md#attention-roofline."""
    peak, bandwidth = roofline_peak(record, "bf16_tflops"), roofline_peak(record, "hbm_tbps")
    return min(peak, flop / nbytes * bandwidth) if peak else None


def compare(impls: Dict[str, Callable[[], object]], case: Dict, record: dict, *,
            flop: Optional[float] = None, nbytes: Optional[float] = None) -> List[Dict]:
    """Time each of impls {name: fn} side by side; the first is the baseline. One row each: the
    case's fields, impl, ms (median, p20, p80), tflops (given flop) or gb_s (given nbytes) and
    the fraction of the device's roofline, peak_gib, baseline and speedup (the baseline's ms
    over this ms: above 1 is faster)."""
    rows = []
    for name, fn in impls.items():
        row = {**case, "impl": name, **bench_ms(fn)}
        seconds = row["ms"] * 1e-3
        if flop is not None:
            row["tflops"] = flop / seconds / 1e12
            peak = roofline_peak(record, "bf16_tflops")
            row["of_peak"] = row["tflops"] / peak if peak else None
        if nbytes is not None:
            row["gb_s"] = nbytes / seconds / 1e9
            peak = roofline_peak(record, "hbm_tbps")
            row["of_hbm"] = row["gb_s"] / (peak * 1e3) if peak else None
        row["peak_gib"] = peak_memory_gib(fn)
        row["baseline"] = next(iter(impls))
        row["speedup"] = rows[0]["ms"] / row["ms"] if rows else 1.0
        rows.append(row)
    return rows


def device_record() -> dict:
    """Device, driver, clocks, power and temperature (NVML), versions, date and roofline."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    roof = roofline_for(name)
    return {"device": name, "date": datetime.date.today().isoformat(), "versions": versions(),
            "nvml": nvml_snapshot(), "roofline": roof.__dict__ if roof else None}
