"""`mage-fast sample`: generate images for FID, at the largest batch the GPU holds.

Image i is generated from seed (--seed << 32) + i and written to OUT/{i:06d}.png atomically,
so a killed run resumes where it stopped: missing images are made, existing ones kept, none
duplicated. The run's settings are recorded in OUT/manifest.json; a resume must match them
(the batch size included, since a GPU's kernels may round differently at another batch size).
Under torchrun the batches are shared among the ranks.
"""
import argparse
import glob
import json
import logging
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write
from ..validation import PRECISIONS, default_precision
from .common import add_model_args, load_model, non_negative_float, positive_int

log = logging.getLogger("mage_fast")
MANIFEST = "manifest.json"


def register(sub):
    p = sub.add_parser("sample", help="generate images for FID (CUDA graphs, maximum batch, resumable)",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--num-images", type=positive_int, default=50000, help="images to generate (default 50000)")
    p.add_argument("--num-iter", type=positive_int, default=12,
                   help="decoding steps (default 12; the paper's FID used 20)")
    p.add_argument("--temperature", type=non_negative_float, default=4.5,
                   help="choice temperature of the confidence noise (default 4.5; the paper's FID used 6.0)")
    p.add_argument("--seed", type=int, default=0, help="run seed in [0, 2^31): image i uses (seed << 32) + i")
    p.add_argument("--batch-size", type=batch_size, default="auto",
                   help="images per batch, or 'auto' for the largest that fits the GPU (default; 4 on CPU)")
    p.add_argument("--dtype", choices=sorted(PRECISIONS), default=None,
                   help="transformer and VQGAN precision (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--out", required=True, help="output folder of PNGs (what torch-fidelity reads)")
    p.add_argument("--npz", action="store_true",
                   help="also write OUT.npz: uint8 [N, 256, 256, 3] under key arr_0 (ADM's evaluator format)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the loop eagerly (for debugging)")
    p.set_defaults(func=run)


def batch_size(text):
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}") from None


def image_path(out, index):
    return os.path.join(out, f"{index:06d}.png")


def seed_of(run_seed, index):
    return (run_seed << 32) + index


def write_png_atomic(path, pixels: np.ndarray):
    with atomic_write(path) as f:
        Image.fromarray(pixels).save(f, format="PNG", compress_level=1)  # lossless; speed over size


def manifest(args, batch, device):
    """The settings that decide the images, the machine's included: a GPU model or a build
    other than the run's may round differently."""
    from ..backends import backend_report
    path = lambda p: os.path.abspath(p) if p else None  # noqa: E731
    return {"model": args.model, "impl": args.impl, "ckpt": path(args.ckpt), "vqgan_ckpt": path(args.vqgan_ckpt),
            "num_iter": args.num_iter, "temperature": args.temperature, "seed": args.seed,
            "dtype": args.dtype, "batch_size": batch,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "backends": {op: r["implementation"] for op, r in backend_report(device.type).items()}}


def previous_manifest(out):
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def npz_path(out):
    return out.rstrip("/") + ".npz"


def write_npz(out, num_images):
    """OUT.npz as np.savez writes it (arr_0, uncompressed), streamed one image at a time: 50,000
    images are 9.8 GB, which need not fit in memory."""
    shape = (num_images, 256, 256, 3)
    with atomic_write(npz_path(out)) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive, \
            archive.open("arr_0.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for i in tqdm(range(num_images), unit="img", desc="npz"):
            with Image.open(image_path(out, i)) as img:
                pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
            if pixels.shape != shape[1:]:
                raise SystemExit(f"{image_path(out, i)} is {pixels.shape}, not {shape[1:]}: not this run's image")
            member.write(pixels.tobytes())
    return shape


def run(args):
    from .. import distributed
    from ..sampler import Sampler, max_batch
    if not 0 <= args.seed < 2**31:
        raise SystemExit("--seed must be in [0, 2^31)")
    ctx = distributed.init(args.device)
    args.dtype = args.dtype or default_precision(ctx.device.type)
    os.makedirs(args.out, exist_ok=True)
    if ctx.is_main:  # leftovers of writes a kill interrupted
        for path in glob.glob(os.path.join(glob.escape(args.out), "*.tmp*")) + \
                glob.glob(glob.escape(npz_path(args.out)) + ".tmp*"):
            os.remove(path)
    model = load_model(args, ctx.device)
    sampler = Sampler(model, args.num_iter, args.temperature, PRECISIONS[args.dtype],
                      cuda_graphs=not args.no_cuda_graphs)

    before = previous_manifest(args.out)
    batch = args.batch_size
    if batch == "auto":
        batch = before["batch_size"] if before else max_batch(sampler) if ctx.device.type == "cuda" else 4
    agreed = ctx.min_int(batch)
    if agreed != batch:  # another rank holds less memory: free this rank's larger graph first
        sampler.clear_graphs()
    batch = agreed
    now = manifest(args, batch, ctx.device)
    if before:  # every rank checks, so none waits at a barrier for a failed one
        diff = {k: (before[k], now[k]) for k in before.keys() & now.keys() if before[k] != now[k]}
        if diff:
            raise SystemExit(f"{args.out} holds a run with other settings {diff} (before, now): use another --out, "
                             "or the same settings to resume")
        if now.keys() - before.keys() and ctx.is_main:
            log.warning("%s was begun by an earlier mage-fast that did not record %s: those are not checked",
                        args.out, ", ".join(sorted(now.keys() - before.keys())))
    if ctx.is_main:
        if not before:
            with atomic_write(os.path.join(args.out, MANIFEST)) as f:
                f.write(json.dumps(now, indent=2).encode())
        print(f"batch size {batch}, {args.num_images} images, {args.num_iter} steps, "
              f"temperature {args.temperature}, {args.dtype}, {ctx.world_size} process(es)")
    ctx.barrier()

    batches = range(ctx.rank, -(-args.num_images // batch), ctx.world_size)
    todo = [k for k in batches
            if not all(os.path.exists(image_path(args.out, i)) for i in range(k * batch, min((k + 1) * batch, args.num_images)))]
    made, start = 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) // max(ctx.world_size, 1))) as pool, \
            tqdm(total=sum(min(batch, args.num_images - k * batch) for k in todo), unit="img",
                 disable=not ctx.is_main, desc="sampling") as bar:
        pending = []
        for k in todo:
            # the last batch is padded with seeds past num_images: every batch has the same shape
            seeds = [seed_of(args.seed, k * batch + j) for j in range(batch)]
            images = sampler.sample(seeds).cpu().numpy()
            count = min(batch, args.num_images - k * batch)
            pending += [pool.submit(write_png_atomic, image_path(args.out, k * batch + j), images[j]) for j in range(count)]
            while len(pending) > 4 * batch:  # keep the writers at most a few batches behind
                pending.pop(0).result()
            made += count
            bar.update(count)
        for f in pending:
            f.result()
    ctx.barrier()
    if ctx.is_main:
        missing = [i for i in range(args.num_images) if not os.path.exists(image_path(args.out, i))]
        if missing:
            raise SystemExit(f"{len(missing)} images are missing (first: {missing[0]}); run again to finish")
        if args.npz:
            print(f"wrote {npz_path(args.out)} {write_npz(args.out, args.num_images)}")
        elapsed = time.perf_counter() - start
        print(f"{made} new images in {elapsed:.1f} s ({made / max(elapsed, 1e-9):.1f} images/s on this rank)")
    distributed.shutdown()
