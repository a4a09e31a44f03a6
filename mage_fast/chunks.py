"""Work over a dataset in fixed chunks of consecutive items: resumable, and shared among the
processes of a torch.distributed group (torchrun).

The work is built in a `<out>.partial/` folder with a manifest of what shapes its content. Each
finished chunk is written there atomically as its own .npy file, so a rerun after a kill skips
the chunks already there. Batches never cross a chunk boundary, so a chunk's content does not
depend on which process computed it or on how often the run was interrupted. Process r of W
takes chunks r, r + W, ...; after a barrier, process 0 merges the chunks in dataset order.
Each process writes only files of its own: safe on a filesystem shared by several nodes too.
"""
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import shard
from .files import atomic_write, write_json

log = logging.getLogger(__name__)
CHUNK_MANIFEST = "manifest.json"


def rank_and_world() -> Tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def check_sizes(batch_size: int, chunk_size: int):
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")


def chunk_path(partial: str, k: int) -> str:
    return os.path.join(partial, f"chunk_{k:06d}.npy")


def prepare_partial(partial: str, manifest: dict):
    """On process 0: keep the chunks of an interrupted run with the same manifest (JSON values);
    start over, with a warning, where the folder holds another run's."""
    path = os.path.join(partial, CHUNK_MANIFEST)
    if os.path.isdir(partial):
        try:
            with open(path) as f:
                if json.load(f) == manifest:
                    return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        log.warning("%s holds chunks of a different run (other model, data or settings): starting over", partial)
        shutil.rmtree(partial)
    os.makedirs(partial)
    write_json(path, manifest, indent=1)


@dataclass(frozen=True)
class Plan:
    """This process's part of the work in `partial`: the `chunks` (ranges of item indices),
    which are `done`, which are `mine`, and my pending `batches`: (chunk, items, whether the
    batch ends its chunk)."""
    partial: str
    chunks: List[range]
    done: List[bool]
    mine: List[int]
    batches: List[Tuple[int, range, bool]]

    def run(self, dataset, compute: Callable[[object], np.ndarray], desc: str, workers: int = 0,
            pin_memory: bool = False):
        """compute(a batch of dataset, as a DataLoader collates it) -> its rows; each chunk's
        rows written atomically once all its batches are done. A progress bar counts items."""
        rank, _ = rank_and_world()
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[list(items) for _, items, _ in self.batches],
                                             num_workers=workers, pin_memory=pin_memory)
        mine = sum(len(self.chunks[k]) for k in self.mine)
        with tqdm(total=mine, initial=sum(len(self.chunks[k]) for k in self.mine if self.done[k]), unit="img",
                  desc=desc, disable=rank != 0) as bar:
            rows = []
            for (k, items, last), batch in zip(self.batches, loader):
                rows.append(compute(batch))
                bar.update(len(items))
                if last:
                    with atomic_write(chunk_path(self.partial, k)) as f:
                        np.save(f, np.concatenate(rows))
                    rows = []

    def merge(self, allocate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """On process 0, after a barrier: every chunk's rows in dataset order, in the array
        allocate(first chunk) returns (filled in place: concatenating the chunks would double
        the peak memory)."""
        out = None
        for k, items in enumerate(self.chunks):
            part = np.load(chunk_path(self.partial, k))
            if len(part) != len(items):
                raise RuntimeError(f"{chunk_path(self.partial, k)} holds {len(part)} rows, expected {len(items)}")
            if out is None:
                out = allocate(part)
            out[items.start:items.stop] = part
        return out


def plan(partial: str, num_items: int, chunk_size: int, batch_size: int) -> Plan:
    """Chunks of chunk_size consecutive items, this process's share and its pending batches of
    at most batch_size items. Call it after prepare_partial and a barrier."""
    rank, world = rank_and_world()
    chunks = [range(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]
    done = [os.path.exists(chunk_path(partial, k)) for k in range(len(chunks))]
    if rank == 0 and any(done):
        log.info("resuming: %d of %d chunks already done", sum(done), len(chunks))
    mine = list(shard(len(chunks), rank, world))
    batches = [(k, chunks[k][i:i + batch_size], i + batch_size >= len(chunks[k]))
               for k in mine if not done[k] for i in range(0, len(chunks[k]), batch_size)]
    return Plan(partial, chunks, done, mine, batches)
