"""Device facts from NVML (nvidia-ml-py) and torch, for bug reports and benchmark records."""
import platform
import sys

import torch


def nvml_snapshot() -> dict:
    """Name, driver, memory, clocks, power and temperature of each GPU, or {"error": why}."""
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:  # NVMLError_LibraryNotFound on machines without a driver
        return {"error": f"NVML unavailable: {e}"}
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu = {"index": i}
            # Each query on its own: MIG slices and virtual GPUs answer some with NotSupported.
            for key, query in (
                    ("name", lambda: _str(pynvml.nvmlDeviceGetName(h))),
                    ("memory_total_gib", lambda: round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 2)),
                    ("memory_used_gib", lambda: round(pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**30, 2)),
                    ("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                    ("mem_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
                    ("sm_clock_max_mhz", lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
                    ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000),
                    ("temperature_c", lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))):
                try:
                    gpu[key] = query()
                except pynvml.NVMLError as e:
                    gpu[key] = f"n/a ({e})"
            gpus.append(gpu)
        return {"driver": _str(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus}
    except pynvml.NVMLError as e:
        return {"error": f"NVML query failed: {e}"}
    finally:
        pynvml.nvmlShutdown()


def _str(x):
    return x.decode() if isinstance(x, bytes) else x


def versions() -> dict:
    import numpy

    from .backends import extension_info, triton_version
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version(),
        "numpy": numpy.__version__,
        "extension": extension_info(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
