"""Per-image outputs of a model over an image folder (features; a classifier's predictions):
batched, resumable, and split over processes with torch.distributed (torchrun), in chunks of
images as mage_fast.chunks does them; process 0 merges the chunks in dataset order.
"""
import json
import shutil
from typing import Optional

import numpy as np
import torch

from ..chunks import barrier, check_sizes, plan, prepare_partial, rank_and_world
from ..data import ImageFolder, files_sha1
from ..files import to_json
from .store import FeatureSet, check_format, save_features


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
    """Everything that changes a chunk's content: a rerun with other settings must not reuse it.
    JSON values only (what a round trip through JSON gives), so it compares equal to the stored one."""
    return json.loads(to_json({**meta, "batch_size": batch_size, "chunk_size": chunk_size, "images": len(dataset),
                               "files_sha1": files_sha1(dataset.files)}))


def map_chunks(fn, model, dataset: ImageFolder, partial: str, meta: dict, batch_size: int, chunk_size: int,
               device=None, workers: int = 0, desc: str = "images") -> Optional[np.ndarray]:
    """fn(images) -> rows (a tensor) for every image of `dataset`, in model's eval mode under
    no_grad (bf16 autocast on CUDA), each finished chunk kept in `partial` (mage_fast.chunks).
    The rows in dataset order on process 0, None on the others; the caller writes them and
    removes `partial`."""
    check_sizes(batch_size, chunk_size)
    device = torch.device(device or "cpu")
    model.to(device).eval()
    rank, _ = rank_and_world()
    if rank == 0:
        prepare_partial(partial, chunk_manifest(meta, dataset, batch_size, chunk_size))
    barrier()

    def rows(batch):
        images, _ = batch
        return fn(images.to(device, non_blocking=True)).cpu().numpy()

    work = plan(partial, len(dataset), chunk_size, batch_size)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        work.run(dataset, rows, desc, workers, pin_memory=device.type == "cuda")
    barrier()
    if rank != 0:
        return None
    return work.merge(lambda part: np.empty((len(dataset),) + part.shape[1:], dtype=part.dtype))
