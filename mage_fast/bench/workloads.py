"""The whole-model workloads `mage-fast bench` times side by side in one run: a training step
from images (tokenizer, forward, backward, AdamW) and from cached token ids (no tokenizer), a
class-conditional step over a frozen encoder, a MAGE-C step (two views, the contrastive
head), the tokenizer alone, a fine-tuning step and image
generation (T steps and the VQGAN decode), unguided and guided.

The training and fine-tuning rows time the step `mage-fast train` and `finetune` take: the run
layer's train_step (runs.steps), with the recipe's optimizer, clipping and loss scaling, the
gradients cleared after each step; each row says so in its `step`."""
import dataclasses
import gc
import itertools
import logging
import statistics
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ..configs import CONFIGS
from ..cuda_graphs import capture
from ..finetune.config import FinetuneConfig
from ..finetune.optim import layer_decay_optimizer
from ..model import build_model
from ..recognition.classifier import UNUSED_BY_CLASSIFIER, build_classifier
from ..runs import Optimization, autocast, freeze_unused, steps
from ..training.config import TrainConfig
from ..training.contrastive import ContrastiveMAGE
from ..training.optim import UNUSED_BY_MAGE, pretraining_optimizer
from ..validation import PRECISIONS, default_precision, precision_name
from .baselines import official_generate
from .flops import (
    class_conditional_train_flops,
    contrastive_train_flops,
    finetune_flops_per_image,
    sample_flops_per_image,
    tokenizer_flops,
    train_flops_per_image,
)
from .measure import time_ms

log = logging.getLogger(__name__)
ROTATE = 3  # timed calls cycle through this many inputs, so none is served from a cache
# The recipes' settings of the optimizer, as the runs take them by default.
PRETRAINING = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
FINETUNING = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
TRAIN_STEP = "runs.steps.train_step, as `mage-fast {}` runs it: forward, backward, {}AdamW, loss scale"

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
    peak_memory_gib: Optional[float] = None        # reserved by the allocator for the whole case, graph pools included
    baseline: Optional[str] = None                  # the implementation its speed-up is taken over
    baseline_workload: Optional[str] = None         # the baseline's workload, if not this one
    step: Optional[str] = None                      # what a timed call runs, where it is a run's step

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
        baseline = f"{self.baseline_workload}: {self.baseline}" if self.baseline_workload else self.baseline
        return {"workload": self.workload, "implementation": self.implementation, "batch": self.batch,
                "median_ms": self.median_ms, "ms": self.ms, "images_per_s": self.images_per_s,
                "tflops": self.tflops, "mfu": self.mfu(peak_tflops), "flops_per_image": self.flops_per_image,
                "peak_memory_gib": self.peak_memory_gib, "baseline": baseline,
                "speedup": self.images_per_s / baseline_images_per_s if baseline_images_per_s else None,
                **({"step": self.step} if self.step else {})}


def as_rows(results: List[Result], peak_tflops: Optional[float]) -> List[dict]:
    """The table rows of results, each speed-up taken over its baseline's images/s (in its
    baseline_workload, by default its own)."""
    speed = {(r.workload, r.implementation): r.images_per_s for r in results}
    return [r.as_dict(peak_tflops, speed.get((r.baseline_workload or r.workload, r.baseline))) for r in results]


def _measure(workload, impl, batch, fn, flops_per_image, device, warmup, repeats, baseline=None,
             baseline_workload=None, step=None) -> Result:
    """Times fn; the peak memory is the allocator's reserved peak since the case began
    (_fresh), so a CUDA graph's pool, captured before timing, counts like eager activations."""
    ms = time_ms(fn, device, warmup, repeats)
    peak = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    return Result(workload, impl, batch, ms, flops_per_image, peak, baseline, baseline_workload, step)


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


def _train_step(model, dtype, capturable=False, input="images", trained=None):
    """The step of `mage-fast train` (runs.steps.train_step) with the recipe's optimizer (AdamW
    0.9/0.95, wd 0.05 off 1-D and biases), clipping at 3.0 and, under fp16, a loss scaler. The
    step takes its batch as the forward's `input`: images, or tokens (ids). `trained`: the
    module whose forward the step runs where it is not `model` (MAGE-C's ContrastiveMAGE, whose
    head trains too)."""
    freeze_unused(model, UNUSED_BY_MAGE)
    precision = precision_name(dtype)
    optimizer = pretraining_optimizer(model, PRETRAINING["blr"], PRETRAINING["weight_decay"], capturable,
                                      extra=trained.head if trained is not None else None)
    optimization = Optimization.of(optimizer, precision, PRETRAINING["clip_grad"])
    device = model.mlm_layer.bias.device
    forward = trained if trained is not None else model

    def step(batch, mask_ratio=None, **labels):
        def loss_of(batch, m):
            with autocast(device, precision):
                return forward(**{input: batch}, mask_ratio=mask_ratio, **labels)
        return steps.train_step(iter([batch]), 1, loss_of, optimization)[0]
    return step


FROM_IMAGES, FROM_TOKENS = "train from images", "train from tokens"


def train_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int,
                    dtype: torch.dtype = None) -> List[Result]:
    """The training step from images of the reference and of the fast module under `dtype`
    autocast (default: bf16 on CUDA, fp32 on CPU) and, on CUDA, of the reference the official
    way (fp16 autocast, fp32 attention scores) and the fast step captured in a CUDA graph; then
    the fast steps from token ids (`train --tokens`: int16 ids, no tokenizer), each's speed-up
    over the same step from images."""
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    cfg = CONFIGS[model_name]
    images = [torch.rand(batch, 3, 256, 256, device=device) for _ in range(ROTATE)]
    ids = [torch.randint(0, cfg.vqgan.codebook_size, (batch, 256), dtype=torch.int16, device=device)
           for _ in range(ROTATE)]
    name = precision_name(dtype)
    baseline = f"reference {name}"
    cases = [(baseline, "reference", dtype, False), (f"fast {name}", "fast", dtype, False)]
    if device.type == "cuda":
        cases = [("reference fp16 (official)", "reference", torch.float16, False)] + cases + \
                [(f"fast {name} + CUDA graph", "fast", dtype, True)]
    runs = [(FROM_IMAGES, "images", images, train_flops_per_image(cfg), case, baseline, None) for case in cases]
    runs += [(FROM_TOKENS, "tokens", ids, train_flops_per_image(cfg, tokenizer=False), case, case[0], FROM_IMAGES)
             for case in cases if case[1] == "fast"]
    results = []
    for workload, input, inputs, flops, (label, impl, case_dtype, graph), base, base_workload in runs:
        results.append(_largest_batch_that_fits(label, batch, device, lambda b: _train_case(
            workload, label, model_name, impl, case_dtype, graph, input, [x[:b] for x in inputs], flops, device,
            warmup, repeats, base, base_workload)))
    _release()
    return results


def _train_case(workload, label, model_name, impl, dtype, graph, input, inputs, flops, device, warmup, repeats,
                baseline, baseline_workload):
    """Each call trains on the next of the rotating batches. Eager steps draw the mask ratio
    on the host, as the official code and `mage-fast train` do (the head then runs on the
    masked rows only); a graph replays one shape, so its ratio is drawn on the device."""
    model = build_model(model_name, impl).to(device).train()
    step = _train_step(model, dtype, capturable=graph, input=input)
    batches = itertools.cycle(inputs)
    if graph:
        static = inputs[0].clone()
        replay = capture(lambda: step(static))[0].replay
        fn = lambda: (static.copy_(next(batches)), replay())  # noqa: E731
    else:
        ratios = torch.Generator().manual_seed(0)
        fn = lambda: step(next(batches), model.sample_mask_ratio(ratios))  # noqa: E731
    return _measure(workload, label, len(inputs[0]), fn, flops, device, warmup, repeats, baseline, baseline_workload,
                    TRAIN_STEP.format("train", "clipping, "))


CLASS_CONDITIONAL = "train class-conditional"


def class_conditional_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int,
                                dtype: torch.dtype = None) -> List[Result]:
    """The class-conditional training step as `train --tokens --class-conditional` runs it:
    int16 ids and labels (label dropout drawn by the loader), the encoder frozen (forward under
    no_grad, out of the optimizer), the decoder over 258 tokens; the fast module under `dtype`
    autocast, eager and, on CUDA, captured in a CUDA graph. Each speed-up is over the same
    unconditional step from ids (train_workloads' row: same module, batch and precision)."""
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randint(0, CONFIGS[model_name].vqgan.codebook_size, (batch, 256), generator=g).to(torch.int16),
               torch.randint(0, 1001, (batch,), generator=g)) for _ in range(ROTATE)]
    inputs = [(ids.to(device), labels.to(device)) for ids, labels in inputs]
    label = f"fast {precision_name(dtype)}"
    cases = [(label, False)] + ([(f"{label} + CUDA graph", True)] if device.type == "cuda" else [])
    results = [_largest_batch_that_fits(case, batch, device, lambda b: _class_conditional_case(
        case, model_name, dtype, graph, [(ids[:b], labels[:b]) for ids, labels in inputs], device, warmup, repeats))
        for case, graph in cases]
    _release()
    return results


def _class_conditional_case(label, model_name, dtype, graph, inputs, device, warmup, repeats):
    """As _train_case, with labels, the model class-conditional and its encoder frozen."""
    model = build_model(model_name, "fast", class_conditional=True).to(device).train()
    model.freeze_encoder()
    step = _train_step(model, dtype, capturable=graph, input="tokens")
    batches = itertools.cycle(inputs)
    if graph:
        ids, labels = (t.clone() for t in inputs[0])
        replay = capture(lambda: step(ids, labels=labels))[0].replay
        fn = lambda: ([s.copy_(t) for s, t in zip((ids, labels), next(batches))], replay())  # noqa: E731
    else:
        ratios = torch.Generator().manual_seed(0)

        def fn():
            ids, labels = next(batches)
            return step(ids, model.sample_mask_ratio(ratios), labels=labels)
    return _measure(CLASS_CONDITIONAL, label, len(inputs[0][0]), fn, class_conditional_train_flops(CONFIGS[model_name]),
                    device, warmup, repeats, label, FROM_TOKENS, TRAIN_STEP.format("train", "clipping, "))


CONTRASTIVE = "train MAGE-C"


def contrastive_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int,
                          dtype: torch.dtype = None) -> List[Result]:
    """The MAGE-C step as `train --tokens --contrastive` runs it with its default settings: two
    views of int16 ids per image through the fast module, the projection head and NT-Xent,
    under `dtype` autocast. Its speed-up is over MAGE's step from ids at the same batch of
    images (train_workloads' row), which sees one view of each: the ratio shows what the second
    view and the head cost."""
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    settings = TrainConfig(tokens="-", out="-", contrastive=True).contrastive_settings
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, CONFIGS[model_name].vqgan.codebook_size, (batch, 2, 256), generator=g)
              .to(torch.int16).to(device) for _ in range(ROTATE)]
    label = f"fast {precision_name(dtype)}"
    flops = contrastive_train_flops(CONFIGS[model_name], settings.layers, settings.hidden, settings.dim)

    def case(b):
        mage = build_model(model_name, "fast").to(device).train()
        model = ContrastiveMAGE(mage, settings).to(device).train()
        step = _train_step(mage, dtype, input="tokens", trained=model)
        batches, ratios = itertools.cycle([x[:b] for x in inputs]), torch.Generator().manual_seed(0)
        fn = lambda: step(next(batches), mage.sample_mask_ratio(ratios))  # noqa: E731
        return _measure(CONTRASTIVE, label, b, fn, flops, device, warmup, repeats, label, FROM_TOKENS,
                        TRAIN_STEP.format("train --contrastive", "clipping, "))
    results = [_largest_batch_that_fits(label, batch, device, case)]
    _release()
    return results


def tokenize_workload(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int,
                      dtype: torch.dtype = None) -> Result:
    """The tokenizer as `mage-fast tokenize` runs it (tokenize_crops: the whole batch on a GPU,
    one crop at a time on CPU) under `dtype` autocast; its MFU is the fraction of the device's
    bf16 roofline that the VQGAN encoder's FLOPs reach. The crops are ready on the device:
    decoding images is not timed."""
    from ..training.tokenize import tokenize_crops
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    label = f"fast {precision_name(dtype)}"
    model = build_model(model_name, "fast").eval()
    model.vqgan.to(device)  # all that tokenizing runs

    def case(b):
        crops = itertools.cycle([torch.rand(b, 3, 256, 256, device=device) for _ in range(ROTATE)])

        def fn():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return tokenize_crops(model, next(crops))
        # No baseline: nothing else tokenizes, and a row over itself would show a speed-up of 1.
        return _measure("tokenize", label, b, fn, tokenizer_flops(CONFIGS[model_name]), device, warmup, repeats)
    result = _largest_batch_that_fits(label, batch, device, case)
    model = None  # released before the next case (not `del`: the timed closure names it)
    _release()
    return result


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


def finetune_workloads(model_name: str, batch: int, device: torch.device, warmup: int, repeats: int,
                       dtype: torch.dtype = None, num_classes: int = 1000) -> List[Result]:
    """A fine-tuning step (tokenizer, the classifier over all 257 tokens with drop path 0.1, the
    soft-target loss that mixup gives, backward, AdamW with layer-wise lr decay) of the fast
    classifier under `dtype` autocast (default: bf16 on CUDA, fp32 on CPU) and, on CUDA, of the
    reference classifier under it too; each timed over the reference run the official way on
    CUDA (fp16 autocast with loss scaling, fp32 attention scores materialised), on CPU over the
    reference under `dtype`."""
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    name = precision_name(dtype)
    cases = [(f"reference {name}", "reference", dtype), (f"fast {name}", "fast", dtype)]
    if device.type == "cuda":
        cases = [("reference fp16 (official)", "reference", torch.float16)] + cases
    baseline = cases[0][0]
    flops = finetune_flops_per_image(CONFIGS[model_name], num_classes)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(batch, 3, 256, 256, generator=generator).to(device) for _ in range(ROTATE)]
    targets = [torch.rand(batch, num_classes, generator=generator).softmax(-1).to(device) for _ in range(ROTATE)]

    def run(label, impl, case_dtype, b):
        model = build_classifier(model_name, num_classes, impl=impl).to(device).train()
        step = _finetune_step(model, case_dtype)
        batches = itertools.cycle(list(zip(images, targets)))
        return _measure("finetune", label, b, lambda: step(*[t[:b] for t in next(batches)]), flops, device,
                        warmup, repeats, baseline, step=TRAIN_STEP.format("finetune", ""))
    results = [_largest_batch_that_fits(label, batch, device, lambda b: run(label, impl, case_dtype, b))
               for label, impl, case_dtype in cases]
    _release()
    return results


def _finetune_step(model, dtype):
    """The step of `mage-fast finetune` (runs.steps.train_step) with the recipe's optimizer
    (AdamW 0.9/0.999 with layer-wise lr decay), no clipping (its default) and, under fp16, a
    loss scaler; the loss over soft targets, as mixup gives them."""
    freeze_unused(model, UNUSED_BY_CLASSIFIER)
    precision = precision_name(dtype)
    optimizer = layer_decay_optimizer(model, FINETUNING["blr"], FINETUNING["weight_decay"], FINETUNING["layer_decay"])
    optimization = Optimization.of(optimizer, precision, FINETUNING["clip_grad"])
    device = model.head.weight.device

    def step(images, targets):
        def loss_of(images, m):
            with autocast(device, precision):
                logits = model(images)
            return -(targets * logits.float().log_softmax(-1)).sum(-1).mean()
        return steps.train_step(iter([images]), 1, loss_of, optimization)[0]
    return step


def sample_workloads(model_name: str, batch: Optional[int], num_iter: int, device: torch.device,
                     warmup: int, repeats: int, temperature: float = 4.5, dtype: torch.dtype = None) -> List[Result]:
    """Generation with the VQGAN decode: the reference the official way (fp32 eager, batch 32,
    numpy Gumbel on the host) and, on CUDA, under `dtype` autocast at that batch; the fast
    module in the CUDA-graph sampler in `dtype` (default: bf16 on CUDA, fp32 on CPU) at that
    batch too (its speed-up taken over the reference in the same precision at the same batch)
    and at `batch` (None: the largest that fits; its speed-up over the official way). Each call
    draws new images: the seeds move on by a batch."""
    from ..sampling.sampler import Sampler, max_batch
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    cfg = CONFIGS[model_name]
    flops = sample_flops_per_image(cfg, num_iter)
    name = f"sample T={num_iter}"
    small = 32 if device.type == "cuda" else 1
    official = "reference fp32 (official)"
    results = []
    _fresh(device)
    reference = build_model(model_name, "reference").to(device).eval()
    references = [(official, torch.float32)]
    if device.type == "cuda" and dtype != torch.float32:
        references.append((f"reference {precision_name(dtype)}", dtype))
    for label, ref_dtype in references:
        def generate(ref_dtype=ref_dtype):
            return official_generate(reference, small, num_iter, temperature, ref_dtype)
        results.append(_measure(name, label, small, generate, flops, device, warmup, repeats, official))
    reference = None  # released before the fast cases (not `del`: the timed closures name it)
    _fresh(device)
    fast = build_model(model_name, "fast").to(device).eval()
    sampler = Sampler(fast, num_iter, temperature, dtype)
    if batch is None:
        batch = max_batch(sampler) if device.type == "cuda" else small
    label = f"fast sampler {precision_name(dtype)}" + (" + CUDA graph" if sampler.use_graphs else "")
    # The largest batch first: the graph pool of the small one must not shrink it.
    for b, baseline in ((batch, official),) + (((small, references[-1][0]),) if batch != small else ()):
        calls = itertools.count()
        results.append(_measure(name, label, b, lambda: sampler.sample(torch.arange(b) + next(calls) * b),
                                flops, device, warmup, repeats, baseline))
        sampler.clear_graphs()
        _fresh(device)  # the next case's peak memory counts its own graph only
    fast = sampler = None
    _release()
    return results


def guided_sample_workloads(model_name: str, batch: Optional[int], num_iter: int, device: torch.device,
                            warmup: int, repeats: int, temperature: float = 4.5, guidance_scale: float = 3.0,
                            dtype: torch.dtype = None) -> List[Result]:
    """Class-conditional generation with guidance (both passes in one batch, in the CUDA graph
    on a GPU) by the fast sampler, at `batch` (None: the largest whose graph fits; 1 on CPU);
    its speed-up is over the unguided fast sampler's row of sample_workloads (the same T and
    precision). Image i of a call is of class i mod 1000; each call draws new images."""
    from ..sampling.sampler import Sampler, max_batch
    dtype = dtype or PRECISIONS[default_precision(device.type)]
    _fresh(device)
    model = build_model(model_name, "fast", class_conditional=True).to(device).eval()
    sampler = Sampler(model, num_iter, temperature, dtype, guidance_scale=guidance_scale)
    if batch is None:
        batch = max_batch(sampler) if device.type == "cuda" else 1
    label = f"fast sampler {precision_name(dtype)}" + (" + CUDA graph" if sampler.use_graphs else "")
    flops = sample_flops_per_image(CONFIGS[model_name], num_iter, guided=True)

    def case(b):
        calls = itertools.count()

        def fn():
            seeds = torch.arange(b) + next(calls) * b
            return sampler.sample(seeds, seeds % 1000)
        try:
            return _measure(f"sample T={num_iter} guided", label, b, fn, flops, device, warmup, repeats, label,
                            f"sample T={num_iter}")
        finally:
            sampler.clear_graphs()
    result = _largest_batch_that_fits(label, batch, device, case)
    _release()
    return [result]
