"""Feature extraction over an image folder: batched, resumable, and split over processes with
torch.distributed (torchrun).

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
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    device = torch.device(device or "cpu")
    model.to(device).eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    n = len(dataset)
    chunks = [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    partial = out + ".partial"
    # Anything that changes a chunk's content: a rerun with other settings must not reuse it.
    manifest = json.loads(to_json({
        **(meta or {}), "pool": pool, "batch_size": batch_size, "chunk_size": chunk_size, "images": n,
        "files_sha1": hashlib.sha1("\n".join(dataset.files).encode()).hexdigest()}))
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
               unit="img", desc="features", disable=rank != 0)
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for (k, _, last), (images, _) in zip(batches, loader):
            rows.append(model.features(images.to(device, non_blocking=True), pool).float().cpu().numpy())
            bar.update(len(images))
            if last:
                with atomic_write(_chunk_path(partial, k)) as f:
                    np.save(f, np.concatenate(rows))
                rows = []
    bar.close()
    _barrier()
    if rank != 0:
        return None
    return _merge(partial, chunks, dataset, out, manifest)


def _merge(partial, chunks, dataset, out, meta) -> FeatureSet:
    features = None
    for k, rows in enumerate(chunks):
        part = np.load(_chunk_path(partial, k))
        if len(part) != len(rows):
            raise RuntimeError(f"{_chunk_path(partial, k)} holds {len(part)} rows, expected {len(rows)}")
        if features is None:  # filled in place: concatenating the chunks would double peak memory
            features = np.empty((len(dataset), part.shape[1]), dtype=np.float32)
        features[rows.start:rows.stop] = part
    fs = FeatureSet(features, np.asarray(dataset.labels, dtype=np.int64), list(dataset.files),
                    list(dataset.classes), meta)
    save_features(out, fs)
    shutil.rmtree(partial)
    return fs
