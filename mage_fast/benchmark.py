"""Throughput measurement of whole-model workloads: timing, FLOP accounting and the table."""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List

import torch

from .configs import NUM_TOKENS, SEQ_LEN, MAGEConfig, flops_per_image


@dataclass
class Result:
    workload: str
    implementation: str
    batch: int
    ms: List[float] = field(default_factory=list)     # per repeat
    flops_per_step: float = 0.0
    peak_memory_gib: float = float("nan")

    @property
    def median_ms(self):
        return statistics.median(self.ms)

    @property
    def images_per_s(self):
        return self.batch / (self.median_ms / 1e3)

    @property
    def tflops(self):
        return self.flops_per_step / (self.median_ms / 1e3) / 1e12

    def as_dict(self):
        return {"workload": self.workload, "implementation": self.implementation, "batch": self.batch,
                "median_ms": self.median_ms, "ms": self.ms, "images_per_s": self.images_per_s,
                "tflops": self.tflops, "flops_per_step": self.flops_per_step,
                "peak_memory_gib": self.peak_memory_gib}


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Wall time of fn per call, in ms: CUDA events on a GPU, perf_counter on CPU."""
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


def train_flops(cfg: MAGEConfig, batch: int) -> float:
    """fwd + bwd (3x forward) of the transformer, the encoder on the 129 kept tokens, plus the
    frozen tokenizer's forward."""
    return (3 * flops_per_image(cfg, SEQ_LEN - NUM_TOKENS // 2) + tokenizer_flops(cfg)) * batch


def conv_flops(build: Callable[[], torch.nn.Module], input_shape) -> float:
    """Multiply-add FLOPs (x2) of every Conv2d in one forward of build() on input_shape,
    counted on the meta device (shapes only, no compute)."""
    total = 0

    def count(m, _inputs, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    with torch.device("meta"):
        module = build()
        for m in module.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(count)
        module(torch.empty(input_shape))
    return float(total)


def tokenizer_flops(cfg: MAGEConfig) -> float:
    from .reference.vqgan import Encoder
    return conv_flops(lambda: Encoder(cfg.vqgan), (1, 3, 256, 256))


def detokenizer_flops(cfg: MAGEConfig) -> float:
    from .reference.vqgan import Decoder
    return conv_flops(lambda: Decoder(cfg.vqgan), (1, cfg.vqgan.z_channels, 16, 16))


def format_table(results: List[Result], title: str) -> str:
    head = f"{'workload':28s} {'impl':18s} {'batch':>5s} {'ms/step':>9s} {'images/s':>9s} {'TFLOP/s':>8s} {'peak GiB':>8s}"
    lines = [title, head, "-" * len(head)]
    for r in results:
        peak = "-" if r.peak_memory_gib != r.peak_memory_gib else f"{r.peak_memory_gib:.2f}"  # NaN off GPU
        lines.append(f"{r.workload:28s} {r.implementation:18s} {r.batch:5d} {r.median_ms:9.2f} "
                     f"{r.images_per_s:9.2f} {r.tflops:8.3f} {peak:>8s}")
    return "\n".join(lines)


def _measure(name, impl, batch, fn, flops, device, warmup, repeats) -> Result:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    ms = time_ms(fn, device, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return Result(name, impl, batch, ms, flops, peak)


def reference_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int):
    """The reference model's training step (tokenizer, forward, backward) and one generation
    step (forward over 257 tokens and the decoding step), fp32 eager as the official code runs."""
    from .configs import CONFIGS
    from .reference import decoding_step, mage_from_config
    cfg = CONFIGS[model_name]
    model = mage_from_config(cfg).to(device)
    images = torch.rand(batch, 3, 256, 256, device=device)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(images).backward()

    ids = torch.full((batch, NUM_TOKENS), 2024, dtype=torch.long, device=device)
    seeds = torch.arange(batch, device=device)

    def generation_step():
        with torch.no_grad():
            decoding_step(model.logits(ids), ids, seeds, 0, 12, 4.5)

    model.train()
    results = [_measure("train step", "reference fp32", batch, train_step, train_flops(cfg, batch),
                        device, warmup, repeats)]
    model.eval()
    results.append(_measure("generation step", "reference fp32", batch, generation_step,
                            flops_per_image(cfg, SEQ_LEN) * batch, device, warmup, repeats))
    return results
