"""`mage-fast sample`: generate images for FID, at the largest batch the GPU holds.

Image i is generated from seed (--seed << 32) + i and written to OUT/{i:06d}.png atomically,
so a killed run resumes where it stopped: missing images are made, existing ones kept, none
duplicated. The run's settings are recorded in OUT/manifest.json; a resume must match them
(the batch size included, since a GPU's kernels may round differently at another batch size).
Under torchrun the batches are shared among the ranks.
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .common import add_model_args, load_model

MANIFEST = "manifest.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register(sub):
    p = sub.add_parser("sample", help="generate images for FID (CUDA graphs, maximum batch, resumable)",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--num-images", type=int, default=50000, help="images to generate (default 50000)")
    p.add_argument("--num-iter", type=int, default=12, help="decoding steps (default 12; the paper's FID used 20)")
    p.add_argument("--temperature", type=float, default=4.5,
                   help="choice temperature of the confidence noise (default 4.5; the paper's FID used 6.0)")
    p.add_argument("--seed", type=int, default=0, help="run seed in [0, 2^31): image i uses (seed << 32) + i")
    p.add_argument("--batch-size", default="auto",
                   help="images per batch, or 'auto' for the largest that fits the GPU (default; 4 on CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="transformer and VQGAN precision (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--out", required=True, help="output folder of PNGs (what torch-fidelity reads)")
    p.add_argument("--npz", action="store_true",
                   help="also write OUT.npz: uint8 [N, 256, 256, 3] under key arr_0 (ADM's evaluator format)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run the loop eagerly (for debugging)")
    p.set_defaults(func=run)


def image_path(out, index):
    return os.path.join(out, f"{index:06d}.png")


def seed_of(run_seed, index):
    return (run_seed << 32) + index


def write_png_atomic(path, pixels: np.ndarray):
    tmp = path + ".tmp"
    Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)  # lossless; speed over size
    os.replace(tmp, path)


def write_manifest_or_check(args, out, batch):
    """Record the settings that decide the images; a resume must agree with them."""
    settings = {"model": args.model, "impl": args.impl, "ckpt": os.path.abspath(args.ckpt) if args.ckpt else None,
                "num_iter": args.num_iter, "temperature": args.temperature, "seed": args.seed,
                "dtype": args.dtype, "batch_size": batch}
    path = os.path.join(out, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if diff:
            raise SystemExit(f"{out} holds a run with other settings {diff} (before, now): use another --out, "
                             "or the same settings to resume")
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=2)
    os.replace(tmp, path)


def previous_batch_size(out):
    path = os.path.join(out, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)["batch_size"]
    return None


def write_npz(out, num_images):
    images = np.empty((num_images, 256, 256, 3), dtype=np.uint8)
    for i in range(num_images):
        images[i] = np.asarray(Image.open(image_path(out, i)).convert("RGB"))
    tmp = out.rstrip("/") + ".tmp.npz"
    np.savez(tmp, images)
    os.replace(tmp, out.rstrip("/") + ".npz")
    return images.shape


def run(args):
    from .. import distributed
    from ..sampler import Sampler, max_batch
    if not 0 <= args.seed < 2**31:
        raise SystemExit("--seed must be in [0, 2^31)")
    if args.num_images < 1:
        raise SystemExit("--num-images must be >= 1")
    ctx = distributed.init(args.device)
    args.dtype = args.dtype or ("bf16" if ctx.device.type == "cuda" else "fp32")
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):  # leftovers of writes a kill interrupted
        if name.endswith(".tmp") and ctx.is_main:
            os.remove(os.path.join(args.out, name))
    model = load_model(args, ctx.device)
    sampler = Sampler(model, args.num_iter, args.temperature, DTYPES[args.dtype],
                      cuda_graphs=not args.no_cuda_graphs)

    batch = previous_batch_size(args.out) if args.batch_size == "auto" else int(args.batch_size)
    if batch is None:
        batch = max_batch(sampler) if ctx.device.type == "cuda" else 4
    batch = ctx.min_int(batch)
    if batch < 1:
        raise SystemExit("--batch-size must be >= 1")
    if ctx.is_main:
        write_manifest_or_check(args, args.out, batch)
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
            print(f"wrote {args.out.rstrip('/')}.npz {write_npz(args.out, args.num_images)}")
        elapsed = time.perf_counter() - start
        print(f"{made} new images in {elapsed:.1f} s ({made / max(elapsed, 1e-9):.1f} images/s on this rank)")
    distributed.shutdown()
