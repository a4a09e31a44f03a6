"""Iterative decoding at scale: the whole T-step loop and the VQGAN decode, captured in one
CUDA graph per batch size and replayed; eager on CPU.

Every random number comes from the decoding-step op's Philox streams keyed by each image's
seed, so an image depends on its seed (and, class-conditional, its label) alone. Guidance runs
the conditional and the unconditional pass as one batch inside the graph. On a GPU that holds for a given batch size:
cuBLAS and cuDNN choose kernels by shape, and another batch size may round differently, so
`mage-fast sample` pins the batch size of a run (docs/reproducibility.md#batch-invariance).
"""
import logging
from typing import Dict, Optional, Sequence, Union

import torch

from ..configs import MASK_ID, NUM_TOKENS
from ..cuda_graphs import capture
from ..ops.decode_step import decode_step
from ..reference.model import guidance_at
from ..validation import FLOAT_TYPES, PRECISIONS, check_decoding, check_guidance, check_images, default_precision

log = logging.getLogger("mage_fast")


class Sampler:
    def __init__(self, model, num_iter: int = 12, choice_temperature: float = 4.5,
                 dtype: Optional[torch.dtype] = None, cuda_graphs: bool = True, guidance_scale: float = 0.0,
                 guidance_schedule: str = "constant"):
        """guidance_scale, guidance_schedule: classifier-free guidance of a class-conditional
        model (see MAGE.generate); run() then takes one label per seed."""
        check_decoding(num_iter, choice_temperature)
        check_guidance(guidance_scale, guidance_schedule)
        if guidance_scale and not model.class_conditional:
            raise ValueError("guidance_scale needs a class-conditional model")
        self.guidance_scale, self.guidance_schedule = guidance_scale, guidance_schedule
        self.model = model.eval()
        self.device = model.token_emb.word_embeddings.weight.device
        self.dtype = dtype or PRECISIONS[default_precision(self.device.type)]
        if self.dtype not in FLOAT_TYPES:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype}")
        self.num_iter, self.choice_temperature = num_iter, choice_temperature
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: Dict[int, tuple] = {}
        if self.device.type == "cuda":
            model.vqgan.decoder.to(memory_format=torch.channels_last)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    # ------------------------------------------------------------ the computation
    def _decode_loop(self, ids, seeds, labels, num_initial_unknown=None):
        """T decoding steps from ids (MASK_ID where unknown) -> the filled ids."""
        filled = ids
        for step in range(self.num_iter):
            with self._autocast():
                logits = self._logits(ids, labels, guidance_at(self.guidance_scale, self.guidance_schedule, step,
                                                               self.num_iter))
            ids, filled = decode_step(logits, ids, seeds, step, self.num_iter, self.choice_temperature,
                                      num_initial_unknown)
        return filled

    def _logits(self, ids, labels, scale):
        """The transformer's logits [B, 256, 1024], guided by `scale`: one batched forward on a
        GPU; on CPU one image at a time (with guidance, its two passes), so that an image's numbers
        cannot depend on its batch. MKL and oneDNN choose their kernels, and with them the
        rounding, by the matrices' shapes on some CPUs (the batch size is one of them), as the
        VQGAN decode below does too."""
        if self.device.type == "cuda":
            return self.model.guided_logits(ids, labels, scale)
        return torch.cat([self.model.guided_logits(ids[i: i + 1], None if labels is None else labels[i: i + 1], scale)
                          for i in range(ids.shape[0])])

    def _to_pixels(self, ids):
        """ids [B, 256] -> uint8 [B, 256, 256, 3], as the official script writes them:
        clip(x * 255, 0, 255) truncated to uint8."""
        vqgan = self.model.vqgan
        z = vqgan.quantize.lookup(ids)
        with self._autocast():
            if self.device.type == "cuda":
                x = vqgan.decoder(z.contiguous(memory_format=torch.channels_last))
            else:
                # oneDNN picks its convolution by batch size, and rounding with it: one image
                # at a time keeps an image's pixels independent of its batch.
                x = torch.cat([vqgan.decoder(z[i: i + 1]) for i in range(z.shape[0])])
        x = (x.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)  # float -> uint8 truncates
        return x.permute(0, 2, 3, 1).contiguous()

    def _generate(self, seeds, labels):
        ids = torch.full((seeds.shape[0], NUM_TOKENS), MASK_ID, dtype=torch.long, device=self.device)
        filled = self._decode_loop(ids, seeds, labels)
        return filled, self._to_pixels(filled)

    def _some_labels(self, batch: int) -> Optional[torch.Tensor]:
        """Labels of the right kind for a batch (class 0; none unconditional): the inputs a graph
        is captured with and the sizing runs of max_batch take."""
        return torch.zeros(batch, dtype=torch.long, device=self.device) if self.model.class_conditional else None

    # ------------------------------------------------------------ graphs
    def _graph(self, batch: int):
        """(graph, static seeds, static labels, static outputs) for a batch size: captured once,
        then replayed."""
        if batch not in self._graphs:
            seeds, labels = torch.zeros(batch, dtype=torch.long, device=self.device), self._some_labels(batch)
            with torch.no_grad(), torch.cuda.device(self.device):
                graph, outputs = capture(lambda: self._generate(seeds, labels), warmup=1)
            self._graphs[batch] = (graph, seeds, labels, outputs)
            log.info("captured the sampling graph for batch %d", batch)
        return self._graphs[batch]

    def clear_graphs(self):
        """Drop the captured graphs and give their memory back."""
        self._graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _inputs(self, seeds, labels):
        """seeds and labels (one per seed, class-conditional models only) checked, on the device."""
        seeds, labels = self.model.check_generation(seeds, labels, self.guidance_scale, self.guidance_schedule)
        return seeds.to(self.device), None if labels is None else labels.to(self.device)

    @torch.no_grad()
    def run(self, seeds: Union[Sequence[int], torch.Tensor],
            labels: Optional[Union[Sequence[int], torch.Tensor]] = None):
        """One image per seed (and label, class-conditional) -> (ids [B, 256] int64, images uint8
        [B, 256, 256, 3])."""
        seeds, labels = self._inputs(seeds, labels)
        if not self.use_graphs:
            return self._generate(seeds, labels)
        graph, static_seeds, static_labels, (ids, images) = self._graph(seeds.shape[0])
        static_seeds.copy_(seeds)
        if labels is not None:
            static_labels.copy_(labels)
        graph.replay()
        return ids.clone(), images.clone()

    def generate(self, seeds, labels=None):
        """One image per seed -> token ids [B, 256]."""
        return self.run(seeds, labels)[0]

    def sample(self, seeds, labels=None):
        """One image per seed -> uint8 images [B, 256, 256, 3]."""
        return self.run(seeds, labels)[1]

    @torch.no_grad()
    def edit(self, images: torch.Tensor, token_mask: torch.Tensor, seeds, labels=None):
        """Inpainting/outpainting: the tokens of `images` under `token_mask` ([B, 256] bool, True
        = regenerate) are decoded anew, the schedule counted over those tokens; the rest are kept.
        Returns (ids, uint8 images). Eager: editing is interactive, not throughput-bound."""
        check_images(images)
        seeds, labels = self._inputs(seeds, labels)
        if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (images.shape[0], NUM_TOKENS):
            raise ValueError(f"token_mask must be bool [{images.shape[0]}, {NUM_TOKENS}], got "
                             f"{token_mask.dtype} {list(token_mask.shape)}")
        if seeds.shape[0] != images.shape[0]:
            raise ValueError(f"need one seed per image: {seeds.shape[0]} seeds, {images.shape[0]} images")
        token_mask = token_mask.to(self.device)
        ids = torch.where(token_mask, MASK_ID, self.model.tokenize(images.to(self.device)))
        filled = self._decode_loop(ids, seeds, labels, token_mask.sum(1))
        return filled, self._to_pixels(filled)


def pixel_mask_to_tokens(mask: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """[B, H, W] pixel mask (nonzero = edit) -> [B, grid*grid] bool: a token is regenerated if
    any pixel of its cell is masked, so the whole edited region is covered."""
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, H, W], got {list(mask.shape)}")
    cells = torch.nn.functional.adaptive_max_pool2d((mask != 0).float().unsqueeze(1), grid)
    return cells.flatten(1) > 0


def max_batch(sampler: Sampler, limit: int = 4096, safety: float = 0.9) -> int:
    """The largest batch whose sampling graph fits on the GPU (a multiple of 8 unless even 8 does
    not fit): extrapolate from the measured peak memory of two small eager batches, capture, and
    back off on out-of-memory. The graph of the returned batch stays captured if the sampler
    replays graphs."""
    if sampler.device.type != "cuda":
        raise ValueError("max_batch needs a CUDA device")
    peaks = []
    for b in (8, 16):
        torch.cuda.synchronize(sampler.device)
        torch.cuda.reset_peak_memory_stats(sampler.device)
        base = torch.cuda.memory_allocated(sampler.device)
        with torch.no_grad():
            sampler._generate(torch.arange(b, device=sampler.device), sampler._some_labels(b))
        peaks.append(torch.cuda.max_memory_allocated(sampler.device) - base)
    per_image = max((peaks[1] - peaks[0]) / 8, 1.0)
    free, _ = torch.cuda.mem_get_info(sampler.device)
    batch = _largest_that_captures(sampler, min(limit, max(8, int(free * safety / per_image) // 8 * 8)))
    log.info("maximum batch: %d (~%.1f MiB per image, %.1f GiB free)", batch, per_image / 2**20, free / 2**30)
    return batch


def _largest_that_captures(sampler: Sampler, batch: int) -> int:
    """batch, or the first that captures on the way down: 10% less, rounded down to a multiple of
    8, then halving below 8."""
    while batch >= 1:
        try:
            sampler._graph(batch)
            if not sampler.use_graphs:  # the trial capture only sized the batch: an eager run needs that memory
                sampler.clear_graphs()
            return batch
        except torch.OutOfMemoryError:
            sampler.clear_graphs()
            batch = batch * 9 // 10 // 8 * 8 if batch > 8 else batch // 2
    raise RuntimeError("not even one image fits on the GPU")
