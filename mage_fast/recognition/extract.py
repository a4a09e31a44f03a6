"""Feature extraction (and any other per-image output, such as a classifier's predictions) over
an image folder: batched, resumable, and split over processes with torch.distributed (torchrun).

The dataset is cut into fixed chunks of consecutive images. Each finished chunk is written
atomically to `<out>.partial/`, so a rerun after a kill skips the chunks already there. Batches
never cross a chunk boundary, so a chunk's features do not depend on which process computed it
or on how often the run was interrupted. Process r of W takes chunks r, r + W, ...; process 0
merges all chunks in dataset order into `out`, atomically, and removes the partial folder.
"""
import hashlib
import json
import logging
import os
import shutil
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data import ImageFolder, shard
from ..files import atomic_write, to_json, write_json
from .store import FeatureSet, check_format, save_features

log = logging.getLogger(__name__)


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def _chunk_path(partial: str, k: int) -> str:
    return os.path.join(partial, f"chunk_{k:06d}.npy")


def _prepare_partial(partial: str, manifest: dict):
    """Keep the chunks of an interrupted run of the same extraction; drop any others."""
    path = os.path.join(partial, "manifest.json")
    if os.path.isdir(partial):
        try:
            with open(path) as f:
                if json.load(f) == manifest:
                    return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        log.warning("%s holds chunks of a different extraction (other model, data or settings): "
                    "starting over", partial)
        shutil.rmtree(partial)
    os.makedirs(partial)
    write_json(path, manifest, indent=1)


def extract_features(model, dataset: ImageFolder, out: str, pool: str = "avg", batch_size: int = 64,
                     chunk_size: int = 1024, device=None, workers: int = 0,
                     meta: Optional[dict] = None) -> Optional[FeatureSet]:
    """Features of every image of `dataset` (built with an eval transform) written to `out`
    (.npz or .pt) with labels, file names and classes. `meta` (JSON values) is stored with them
    and should name what else shapes the features (model, checkpoint, transform): a rerun
    resumes only from chunks made with the same meta, pool, sizes and files.
    bf16 autocast on CUDA, fp32 elsewhere. Run it in every process of a torch.distributed group
    (see mage_fast.distributed.init) to split the work. Returns the features on process 0, None
    on the others."""
    check_format(out)
    meta = {**(meta or {}), "pool": pool}
    features = map_chunks(lambda images: model.features(images, pool).float(), model, dataset, out + ".partial",
                          meta, batch_size, chunk_size, device, workers, "features")
    if features is None:
        return None
    fs = FeatureSet(features, np.asarray(dataset.labels, dtype=np.int64), list(dataset.files),
                    list(dataset.classes), chunk_manifest(meta, dataset, batch_size, chunk_size))
    save_features(out, fs)
    shutil.rmtree(out + ".partial")
    return fs


def chunk_manifest(meta: dict, dataset: ImageFolder, batch_size: int, chunk_size: int) -> dict:
    """Everything that changes a chunk's content: a rerun with other settings must not reuse it."""
    return json.loads(to_json({**meta, "batch_size": batch_size, "chunk_size": chunk_size, "images": len(dataset),
                                  "files_sha1": hashlib.sha1("\n".join(dataset.files).encode()).hexdigest()}))


def map_chunks(fn, model, dataset: ImageFolder, partial: str, meta: dict, batch_size: int, chunk_size: int,
               device=None, workers: int = 0, desc: str = "images") -> Optional[np.ndarray]:
    """fn(images) -> rows (a tensor) for every image of `dataset`, in model's eval mode under
    no_grad (bf16 autocast on CUDA), each finished chunk kept in `partial` (see the module's
    docstring). The rows in dataset order on process 0, None on the others; the caller writes
    them and removes `partial`."""
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    device = torch.device(device or "cpu")
    model.to(device).eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n = len(dataset)
    chunks = [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    manifest = chunk_manifest(meta, dataset, batch_size, chunk_size)
    if rank == 0:
        _prepare_partial(partial, manifest)
    _barrier()

    done = [os.path.exists(_chunk_path(partial, k)) for k in range(len(chunks))]
    if rank == 0 and any(done):
        log.info("resuming: %d of %d chunks already done", sum(done), len(chunks))
    mine = list(shard(len(chunks), rank, world))
    batches = [(k, chunks[k][i:i + batch_size], i + batch_size >= len(chunks[k]))
               for k in mine if not done[k] for i in range(0, len(chunks[k]), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(b) for _, b, _ in batches],
                                         num_workers=workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=sum(len(chunks[k]) for k in mine), initial=sum(len(chunks[k]) for k in mine if done[k]),
               unit="img", desc=desc, disable=rank != 0)
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for (k, _, last), (images, _) in zip(batches, loader):
            rows.append(fn(images.to(device, non_blocking=True)).cpu().numpy())
            bar.update(len(images))
            if last:
                with atomic_write(_chunk_path(partial, k)) as f:
                    np.save(f, np.concatenate(rows))
                rows = []
    bar.close()
    _barrier()
    return _merge(partial, chunks, n) if rank == 0 else None


def _merge(partial, chunks, n) -> np.ndarray:
    merged = None
    for k, rows in enumerate(chunks):
        part = np.load(_chunk_path(partial, k))
        if len(part) != len(rows):
            raise RuntimeError(f"{_chunk_path(partial, k)} holds {len(part)} rows, expected {len(rows)}")
        if merged is None:  # filled in place: concatenating the chunks would double peak memory
            merged = np.empty((n,) + part.shape[1:], dtype=part.dtype)
        merged[rows.start:rows.stop] = part
    return merged
