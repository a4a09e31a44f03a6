"""Peak bf16 dense throughput, HBM bandwidth and exp2 rate of the GPUs we report on
(docs/kernels.md#peak-figures), to state achieved TFLOP/s and GB/s as a fraction of what the device can do,
and a kernel's time bound as the slowest of the three units it needs (of_bound: the fraction of that
bound a measured time reaches, for every report that shows one)."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Roofline:
    name: str
    bf16_tflops: float     # dense tensor-core peak
    hbm_tbps: float        # memory bandwidth, TB/s
    exp2_tops: float       # special-function unit: SMs x 16 ex2 a clock x boost clock, 10^12 a second

    def bound_seconds(self, flop: float, nbytes: float, exp2: float) -> float:
        """The least time for flop tensor-core FLOPs, nbytes of HBM traffic and exp2 evaluations
        (each unit at its peak, all overlapped)."""
        return max(flop / (self.bf16_tflops * 1e12), nbytes / (self.hbm_tbps * 1e12), exp2 / (self.exp2_tops * 1e12))


# Checked in order: the first whose every word appears in the device name wins.
_TABLE = [
    (("H200",), Roofline("H200", 989.0, 4.8, 4.18)),
    (("H100", "PCIe"), Roofline("H100 PCIe", 756.0, 2.0, 3.20)),
    (("H100",), Roofline("H100 SXM", 989.0, 3.35, 4.18)),
    (("A100", "40GB"), Roofline("A100 SXM 40GB", 312.0, 1.555, 2.44)),
    (("A100",), Roofline("A100 SXM 80GB", 312.0, 2.04, 2.44)),
]


def roofline_for(device_name: str) -> Optional[Roofline]:
    for words, roof in _TABLE:
        if all(w in device_name for w in words):
            return roof
    return None



def of_bound(roofline: Optional[dict], work: dict, ms: float) -> Optional[float]:
    """The least time `work` allows on the device over the measured `ms`: 1 at the bound. work
    holds what the kernel executes (executed_flop, nbytes, exp2: mage_fast.bench.flops.attention_work,
    padding and recomputation counted); roofline is a device record's (Roofline's fields), None
    off a known GPU, which gives None, as the other fractions of peak do."""
    if not roofline:
        return None
    least = Roofline(**roofline).bound_seconds(work["executed_flop"], work["nbytes"], work["exp2"])
    return least * 1e3 / ms
