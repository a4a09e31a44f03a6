"""A sampling run: the images of a SampleConfig written to its folder, resumable, its batches
shared among the processes of a torchrun group."""
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from tqdm import tqdm

from .. import distributed
from ..validation import PRECISIONS
from .config import SampleConfig
from .folder import (
    image_label,
    image_path,
    image_seed,
    manifest,
    npz_path,
    previous_manifest,
    remove_leftovers,
    write_manifest,
    write_npz,
    write_png_atomic,
)
from .sampler import Sampler, max_batch

log = logging.getLogger("mage_fast")


def _batch_size(config, sampler, before, ctx) -> int:
    """The run's batch: the one OUT's manifest pins, else the given one, else the largest whose
    graph fits (4 on CPU); the smallest of every rank's."""
    batch = config.batch_size
    if batch == "auto":
        batch = before["batch_size"] if before else max_batch(sampler) if ctx.device.type == "cuda" else 4
    agreed = ctx.min_int(batch)
    if agreed != batch:  # another rank holds less memory: free this rank's larger graph first
        sampler.clear_graphs()
    return agreed


def _check_resume(config, before, now, ctx):
    """A run OUT holds must have been made with the same settings."""
    diff = {k: (before[k], now[k]) for k in before.keys() & now.keys() if before[k] != now[k]}
    # a setting only the folder's run has (class-conditional sampling) is one this run lacks
    diff.update({k: (before[k], None) for k in before.keys() - now.keys()})
    if diff:
        raise ValueError(f"{config.out} holds a run with other settings {diff} (before, now): use another out "
                         "folder, or the same settings to resume")
    if now.keys() - before.keys() and ctx.is_main:
        log.warning("%s was begun by an earlier mage-fast that did not record %s: those are not checked",
                    config.out, ", ".join(sorted(now.keys() - before.keys())))


def sample(config: SampleConfig, ctx: Optional[distributed.Dist] = None) -> int:
    """Generate the images of `config` that its folder lacks: image i from seed
    (config.seed << 32) + i (class-conditional: of class classes[i // images_per_class]),
    written to OUT/{i:06d}.png atomically, so a killed run resumes
    where it stopped, and OUT.npz at the end if config.npz. The settings are pinned in
    OUT/manifest.json, and a resume with others is refused. Without `ctx`, the process joins
    the torchrun group if it runs under torchrun, and otherwise samples alone on
    config.device. Returns the number of images this process made."""
    ctx = ctx or distributed.init(config.device)
    config = config.for_device(ctx.device.type)
    os.makedirs(config.out, exist_ok=True)
    if ctx.is_main:
        remove_leftovers(config.out)
    model = config.load(ctx.device, config.class_conditional)
    classes = config.class_list(model.num_classes)
    sampler = Sampler(model, config.num_iter, config.temperature, PRECISIONS[config.dtype],
                      cuda_graphs=config.cuda_graphs, guidance_scale=config.guidance_scale,
                      guidance_schedule=config.guidance_schedule)
    before = previous_manifest(config.out)
    batch = _batch_size(config, sampler, before, ctx)
    now = manifest(config, batch, ctx.device, classes, model.num_classes)
    if before:  # every rank checks, so none waits at a barrier for a failed one
        _check_resume(config, before, now, ctx)
    if ctx.is_main:
        if not before:
            write_manifest(config.out, now)
        guided = (f", {len(classes)} classes x {config.per_class()}, guidance {config.guidance_scale} "
                  f"({config.guidance_schedule})") if classes else ""
        print(f"batch size {batch}, {config.image_count(classes)} images{guided}, {config.num_iter} steps, "
              f"temperature {config.temperature}, {config.dtype}, {ctx.world_size} process(es)")
    ctx.barrier()

    n = config.image_count(classes)

    def labels_of(indices):  # a function of the image index, like the seed
        return [image_label(classes, config.per_class(), i) for i in indices] if classes else None
    todo = [k for k in range(ctx.rank, -(-n // batch), ctx.world_size)
            if not all(os.path.exists(image_path(config.out, i)) for i in range(k * batch, min((k + 1) * batch, n)))]
    made, start = 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) // max(ctx.world_size, 1))) as pool, \
            tqdm(total=sum(min(batch, n - k * batch) for k in todo), unit="img",
                 disable=not ctx.is_main, desc="sampling") as bar:
        pending = []
        for k in todo:
            # the last batch is padded with seeds past num_images: every batch has the same shape
            indices = range(k * batch, (k + 1) * batch)
            images = sampler.sample([image_seed(config.seed, i) for i in indices], labels_of(indices)).cpu().numpy()
            count = min(batch, n - k * batch)
            pending += [pool.submit(write_png_atomic, image_path(config.out, k * batch + j), images[j])
                        for j in range(count)]
            while len(pending) > 4 * batch:  # keep the writers at most a few batches behind
                pending.pop(0).result()
            made += count
            bar.update(count)
        for f in pending:
            f.result()
    ctx.barrier()
    if ctx.is_main:
        missing = [i for i in range(n) if not os.path.exists(image_path(config.out, i))]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images are missing (first: {image_path(config.out, missing[0])}); "
                                    "run again to finish")
        if config.npz:
            print(f"wrote {npz_path(config.out)} {write_npz(config.out, n)}")
        elapsed = time.perf_counter() - start
        print(f"{made} new images in {elapsed:.1f} s ({made / max(elapsed, 1e-9):.1f} images/s on this rank)")
    return made
