"""The order of a run's steps: which images each micro-batch of each rank takes, as a function
of (seed, epoch) alone, so a resumed run continues the exact sequence of an uninterrupted one
whatever the number of DataLoader workers, and a global batch does not depend on how it is
split: rank r of W takes rows [r*b, (r+1)*b) of each global micro-batch of W*b rows.
DistributedSampler's contract: a fresh permutation of the images every epoch, each image at
most once per epoch, the tail that does not fill a step dropped."""
from dataclasses import dataclass
from typing import Optional

import torch

from .seeds import ORDER, generator


@dataclass(frozen=True)
class TrainOrder:
    """The batch sampler of one rank: the keys (epoch, image, micro-batch, row) of each of its
    micro-batches from global step `start` to `stop` (default: the end of the first epoch).
    A step is `accum` micro-batches of `batch` images per rank."""
    num_images: int
    batch: int
    accum: int
    seed: int
    rank: int = 0
    world: int = 1
    start: int = 0
    stop: Optional[int] = None

    def __post_init__(self):
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"a step takes {self.images_per_step} images (batch {self.batch} x {self.world} "
                f"process(es) x {self.accum} accumulation steps) but the folder holds only "
                f"{self.num_images}: use a smaller --batch-size or --accum-iter")

    @property
    def images_per_step(self) -> int:
        return self.batch * self.world * self.accum

    @property
    def steps_per_epoch(self) -> int:
        return self.num_images // self.images_per_step

    @property
    def settings(self) -> dict:
        """What fixes the order of the images and the draws: a resume must keep them."""
        return {"seed": self.seed, "num_images": self.num_images, "global_batch": self.batch * self.world,
                "accum_iter": self.accum}

    def _stop(self) -> int:
        return self.steps_per_epoch if self.stop is None else self.stop

    def __len__(self):
        return (self._stop() - self.start) * self.accum

    def __iter__(self):
        spe, rows = self.steps_per_epoch, self.batch * self.world
        for step in range(self.start, self._stop()):
            epoch, in_epoch = divmod(step, spe)
            if in_epoch == 0 or step == self.start:
                order = torch.randperm(self.num_images, generator=generator(self.seed, ORDER, epoch))
            for m in range(self.accum):
                first = (in_epoch * self.accum + m) * rows + self.rank * self.batch
                yield [(epoch, int(order[first + j]), step * self.accum + m, self.rank * self.batch + j)
                       for j in range(self.batch)]
