"""Peak bf16 dense throughput and HBM bandwidth of the GPUs we report on (docs/kernels.md#peak-figures),
to state achieved TFLOP/s and GB/s as a fraction of what the device can do."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Roofline:
    name: str
    bf16_tflops: float     # dense tensor-core peak
    hbm_tbps: float        # memory bandwidth, TB/s


# Checked in order: the first whose every word appears in the device name wins.
_TABLE = [
    (("H200",), Roofline("H200", 989.0, 4.8)),
    (("H100", "PCIe"), Roofline("H100 PCIe", 756.0, 2.0)),
    (("H100",), Roofline("H100 SXM", 989.0, 3.35)),
    (("A100", "40GB"), Roofline("A100 SXM 40GB", 312.0, 1.555)),
    (("A100",), Roofline("A100 SXM 80GB", 312.0, 2.04)),
]


def roofline_for(device_name: str) -> Optional[Roofline]:
    for words, roof in _TABLE:
        if all(w in device_name for w in words):
            return roof
    return None

