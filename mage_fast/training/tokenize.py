"""Making a token cache (token_cache.py): K views of every image of a folder, tokenized at large
batch; chunked, resumable, and shared among the processes of a torch.distributed group
(torchrun), as mage_fast.chunks does it. Process 0 then merges the chunks into tokens.npy,
writes index.json beside it and renames `<out>.partial` to `out`, so `out` appears only
complete.
"""
import os
import shutil
from typing import Optional

import numpy as np
import torch

from ..chunks import CHUNK_MANIFEST, barrier, check_sizes, chunk_path, plan, prepare_partial, rank_and_world
from ..configs import NUM_TOKENS
from ..data import EvalTransform, ImageFolder, files_sha1
from ..files import write_json
from ..validation import PRECISIONS
from .batches import view_generator
from .token_cache import DTYPE, FORMAT, INDEX, TOKENS, VERSION, TokenCache, tokenizer_sha256
from .views import PRESETS, ViewTransform


class ViewImages(torch.utils.data.Dataset):
    """Item i: the K views of image i, as the tokenizer takes them ([K, 3, 256, 256] in [0, 1]):
    view v is the preset `augment`'s view ("mage": the training transform) drawn from
    view_generator(seed, i, v), or with center_crop the evaluation transform (the FID
    preprocessing: resize 256, center crop 256)."""

    def __init__(self, folder: ImageFolder, views: int, seed: int, center_crop: bool = False, augment: str = "mage"):
        self.folder, self.views, self.seed = folder, views, seed
        self.transform = EvalTransform() if center_crop else ViewTransform(augment)

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        img = self.folder.load(i)  # decoded once for its K views
        if isinstance(self.transform, EvalTransform):
            return self.transform(img)[None]
        return torch.stack([self.transform(img, generator=view_generator(self.seed, i, v)) for v in range(self.views)])

    @property
    def settings(self) -> dict:
        t = self.transform
        if isinstance(t, EvalTransform):
            return {"kind": "center_crop", "size": t.size, "resize": t.resize, "interpolation": t.interpolation}
        return t.settings


def tokenize_crops(model, crops: torch.Tensor) -> torch.Tensor:
    """Codebook ids [B, 256] of crops [B, 3, 256, 256]. On CPU one crop at a time, each in a
    fresh allocation: oneDNN and MKL choose kernels, and with them the rounding, by shape (and
    alignment), so a crop's ids are those of model.tokenize(crop[None]) whatever batch it came
    in. On a GPU the batch is tokenized at once: cuDNN chooses kernels by shape too, so there a
    crop's ids are those of the batch it was tokenized in (they may differ in a near-tie)."""
    if crops.device.type == "cpu":
        return torch.cat([model.tokenize(crops[i:i + 1].clone()) for i in range(len(crops))])
    return model.tokenize(crops)


def tokenize_folder(model, folder: ImageFolder, out: str, views: int, seed: int = 0, center_crop: bool = False,
                    batch_size: int = 32, chunk_size: int = 1024, device=None, workers: int = 0,
                    precision: str = "fp32", meta: Optional[dict] = None, overwrite: bool = False,
                    augment: str = "mage") -> Optional[TokenCache]:
    """Write the token cache of `folder` to the folder `out`: `views` views per image of the
    preset `augment` (views.PRESETS), or 1 unaugmented with center_crop, each tokenized by
    model.tokenize (only model.vqgan is moved to `device`) under `precision` autocast,
    `batch_size` images (batch_size x views crops) per forward, resumable in chunks of
    `chunk_size` images. `meta` (JSON values: model name, where the tokenizer weights came from)
    goes into the index. Run it in every process of a torch.distributed group to share the
    chunks. Returns the cache on process 0, None on the others."""
    if views < 1 or (center_crop and views != 1):
        raise ValueError(f"views must be >= 1, and 1 with center_crop; got {views}" +
                         (" with center_crop" if center_crop else ""))
    if augment not in PRESETS:
        raise ValueError(f"augment must be one of {sorted(PRESETS)}, got {augment!r}")
    if center_crop and augment != "mage":
        raise ValueError(f"center_crop caches an unaugmented view, augment {augment!r} applies to random views")
    check_sizes(batch_size, chunk_size)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if os.path.exists(out) and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    device = torch.device(device or "cpu")
    model.vqgan.to(device)  # all that tokenize runs
    model.eval()
    rank, _ = rank_and_world()
    dataset = ViewImages(folder, views, seed, center_crop, augment)
    n = len(folder)
    # Everything that decides the ids: a rerun with other settings starts over.
    index = {"format": FORMAT, "version": VERSION, "num_images": n, "num_views": views, "seed": seed,
             "transform": dataset.settings, "augment": None if center_crop else augment, **(meta or {}),
             "tokenizer_sha256": tokenizer_sha256(model), "precision": precision, "device": device.type,
             "batch_size": batch_size, "chunk_size": chunk_size, "files_sha1": files_sha1(folder.files),
             "classes": list(folder.classes), "labels": list(folder.labels), "files": list(folder.files)}
    partial = out + ".partial"
    if rank == 0:
        prepare_partial(partial, index)
    barrier()

    def ids(crops):  # [b, K, 3, 256, 256] -> uint16 [b, K, 256]
        flat = tokenize_crops(model, crops.to(device, non_blocking=True).flatten(0, 1))
        return flat.view(len(crops), views, NUM_TOKENS).cpu().numpy().astype(DTYPE)

    work = plan(partial, n, chunk_size, batch_size)
    dtype = PRECISIONS[precision]
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        work.run(dataset, ids, "tokenize", workers, pin_memory=device.type == "cuda")
    barrier()
    if rank != 0:
        return None
    # The chunks into one array, then the index beside it, then the folder renamed: a kill
    # midway leaves the chunks, which a rerun merges again.
    array, tmp = os.path.join(partial, TOKENS), os.path.join(partial, f"{TOKENS}.tmp")
    tokens = work.merge(lambda _: np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(n, views, NUM_TOKENS)))
    tokens.flush()
    del tokens
    os.replace(tmp, array)
    write_json(os.path.join(partial, INDEX), index, indent=None)
    for k in range(len(work.chunks)):
        os.remove(chunk_path(partial, k))
    os.remove(os.path.join(partial, CHUNK_MANIFEST))
    if overwrite and os.path.exists(out):
        shutil.rmtree(out)
    os.rename(partial, out)
    return TokenCache(out)
