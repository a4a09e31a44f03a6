"""The whole-model workloads `mage-fast bench` times side by side in one run: a training step
(tokenizer, forward, backward, AdamW) and image generation (T steps and the VQGAN decode)."""
import gc
import logging
import statistics
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..configs import CONFIGS
from ..cuda_graphs import capture
from ..model import build_model
from ..training.optim import build_optimizer, freeze_unused
from .baselines import official_generate
from .flops import sample_flops_per_image, train_flops_per_image
from .measure import time_ms

log = logging.getLogger(__name__)

# The table of model workloads: Result.as_dict's fields, in the order they are shown.
COLUMNS = ["workload", "implementation", "batch", "median_ms", "images_per_s", "tflops", "mfu", "peak_memory_gib",
           "baseline", "speedup"]


@dataclass
class Result:
    workload: str
    implementation: str
    batch: int
    ms: List[float] = field(default_factory=list)   # per step, one per repeat
    flops_per_image: float = 0.0
    peak_memory_gib: float = float("nan")          # reserved by the allocator for the whole case, graph pools included
    baseline: Optional[str] = None                  # the implementation its speed-up is taken over

    @property
    def median_ms(self):
        return statistics.median(self.ms)

    @property
    def images_per_s(self):
        return self.batch / (self.median_ms / 1e3)

    @property
    def tflops(self):
        return self.flops_per_image * self.images_per_s / 1e12

    def mfu(self, peak_tflops: Optional[float]) -> Optional[float]:
        """Model FLOPs utilisation: achieved TFLOP/s over the device's bf16 dense peak."""
        return self.tflops / peak_tflops if peak_tflops else None

    def as_dict(self, peak_tflops=None, baseline_images_per_s=None):
        return {"workload": self.workload, "implementation": self.implementation, "batch": self.batch,
                "median_ms": self.median_ms, "ms": self.ms, "images_per_s": self.images_per_s,
                "tflops": self.tflops, "mfu": self.mfu(peak_tflops), "flops_per_image": self.flops_per_image,
                "peak_memory_gib": self.peak_memory_gib, "baseline": self.baseline,
                "speedup": self.images_per_s / baseline_images_per_s if baseline_images_per_s else None}


def _measure(workload, impl, batch, fn, flops_per_image, device, warmup, repeats, baseline=None) -> Result:
    """Times fn; the peak memory is the allocator's reserved peak since the case began
    (_fresh), so a CUDA graph's pool, captured before timing, counts like eager activations."""
    ms = time_ms(fn, device, warmup, repeats)
    peak = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else float("nan")
    return Result(workload, impl, batch, ms, flops_per_image, peak, baseline)


def _release():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fresh(device):
    """Start of a case: the previous one's memory returned, the peak counters reset."""
    _release()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _train_step(model, dtype, capturable=False):
    """One optimizer step of the official recipe (AdamW 0.9/0.95, wd 0.05 off 1-D and biases,
    clipping at 3.0) on fixed images; fp16 with a loss scaler as the official code runs it."""
    freeze_unused(model)
    opt = build_optimizer(model, 1e-4, 0.05, capturable)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    device = model.mlm_layer.bias.device

    def step(images):
        opt.zero_grad(set_to_none=not capturable)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(images)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        scaler.step(opt)
        scaler.update()
        return loss
    return step


def train_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int) -> List[Result]:
    """The training step of the reference the official way (fp16 autocast, fp32 attention
    scores), the reference and the fast module under bf16 autocast, and the fast step captured
    in a CUDA graph. On CPU, fp32 only."""
    flops = train_flops_per_image(CONFIGS[model_name])
    images = torch.rand(batch, 3, 256, 256, device=device)
    if device.type == "cuda":
        cases = [("reference fp16 (official)", "reference", torch.float16, False),
                 ("reference bf16", "reference", torch.bfloat16, False),
                 ("fast bf16", "fast", torch.bfloat16, False),
                 ("fast bf16 + CUDA graph", "fast", torch.bfloat16, True)]
        baseline = "reference bf16"
    else:
        cases = [("reference fp32", "reference", torch.float32, False), ("fast fp32", "fast", torch.float32, False)]
        baseline = "reference fp32"
    results = []
    for label, impl, dtype, graph in cases:
        results.append(_largest_batch_that_fits(label, batch, device, lambda b: _train_case(
            label, model_name, impl, dtype, graph, images[:b], flops, device, warmup, repeats, baseline)))
    _release()
    return results


def _train_case(label, model_name, impl, dtype, graph, images, flops, device, warmup, repeats, baseline):
    model = build_model(model_name, impl).to(device).train()
    step = _train_step(model, dtype, capturable=graph)
    fn = capture(lambda: step(images))[0].replay if graph else (lambda: step(images))
    return _measure("train", label, len(images), fn, flops, device, warmup, repeats, baseline)


def _largest_batch_that_fits(label, batch, device, run):
    """run(batch), halving the batch on out-of-memory (the row then shows the batch it ran at:
    images/s and MFU stay comparable) rather than losing every result of the run."""
    while True:
        _fresh(device)
        try:
            return run(batch)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            log.warning("%s: out of memory at batch %d, running it at %d", label, batch, batch // 2)
        batch //= 2  # outside the handler, so the failed attempt's frames are freed first


def sample_workloads(model_name: str, batch: Optional[int], num_iter: int, device: torch.device,
                     warmup: int, repeats: int, temperature: float = 4.5) -> List[Result]:
    """Generation with the VQGAN decode: the reference the official way (fp32 eager, batch 32,
    numpy Gumbel on the host) and under bf16 at that batch; the fast module in the CUDA-graph
    sampler at that batch too (its speed-up taken over the bf16 reference: same batch, same
    precision) and at `batch` (None: the largest that fits; its speed-up over the official way)."""
    from ..sampler import Sampler, max_batch
    cfg = CONFIGS[model_name]
    flops = sample_flops_per_image(cfg, num_iter)
    name = f"sample T={num_iter}"
    small = 32 if device.type == "cuda" else 1
    official = "reference fp32 (official)"
    results = []
    _fresh(device)
    reference = build_model(model_name, "reference").to(device).eval()
    references = ((official, torch.float32),) + ((("reference bf16", torch.bfloat16),) if device.type == "cuda" else ())
    for label, dtype in references:
        results.append(_measure(name, label, small, lambda: official_generate(reference, small, num_iter, temperature, dtype),
                                flops, device, warmup, repeats, official))
    del reference
    _fresh(device)
    fast = build_model(model_name, "fast").to(device).eval()
    sampler = Sampler(fast, num_iter, temperature)
    if batch is None:
        batch = max_batch(sampler) if device.type == "cuda" else small
    label = f"fast sampler {str(sampler.dtype).replace('torch.', '')}" + (" + CUDA graph" if sampler.use_graphs else "")
    # The largest batch first: the graph pool of the small one must not shrink it.
    for b, baseline in ((batch, official),) + (((small, references[-1][0]),) if batch != small else ()):
        seeds = list(range(b))
        results.append(_measure(name, label, b, lambda: sampler.sample(seeds), flops, device, warmup, repeats, baseline))
        sampler.clear_graphs()
        _fresh(device)  # the next case's peak memory counts its own graph only
    del fast, sampler
    _release()
    return results
