"""What each pretraining step sees, as pure functions of the run's seed and of counters
(runs.seeds): an image's crop and flip by (epoch, image) (from a token cache: which of its views
by (epoch, image), a view's crop by (image, view)), the mask ratio by the global micro-batch,
the noise that picks the dropped and masked tokens by (micro-batch, row of the global
micro-batch), and a class-conditional run's label dropout by (micro-batch, row) too. The keys
come from runs.TrainOrder, so W processes at batch b see the images, crops, mask ratios and
noise that one process at batch W*b sees, and a resumed run the draws of an uninterrupted one.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..configs import NUM_TOKENS
from ..data import ImageFolder, TrainTransform
from ..reference.model import drop_labels
from ..runs.seeds import CROP, LABEL_DROP, NOISE, RATIO, VIEW, VIEW_CROP, generator
from .token_cache import TokenCache


def noise_of(seed: int, micro: int, row: int) -> torch.Tensor:
    """The noise [256] of a row of a global micro-batch for the model's forward: a random
    permutation of 0..255 / 256. The masks depend only on the order of the noise, which a
    permutation draws uniformly, and having no ties, it never needs the official redraw."""
    return torch.randperm(NUM_TOKENS, generator=generator(seed, NOISE, micro, row)).float() / NUM_TOKENS


@dataclass(frozen=True)
class Labels:
    """The labels a class-conditional run trains on, label dropout applied: image i's label
    becomes num_classes ("no class") where a uniform keyed by (seed, micro-batch, row) is below
    `drop`, so the drops, like the noise, do not depend on a resume or on how a global batch is
    split among processes."""
    labels: Sequence[int]       # of every image, as the folder or the token cache lists them
    num_classes: int
    drop: float
    seed: int

    def __call__(self, index: int, micro: int, row: int) -> int:
        u = torch.rand((), dtype=torch.float64, generator=generator(self.seed, LABEL_DROP, micro, row))
        return int(drop_labels(torch.tensor(self.labels[index]), u, self.drop, self.num_classes))


class TrainSamples(torch.utils.data.Dataset):
    """(image, noise) of a key from TrainOrder: the image cropped and flipped by the pretraining
    transform, and its row's noise (noise_of); with `labels` (a class-conditional run), also
    its label after label dropout: (image, noise, label)."""

    def __init__(self, folder: ImageFolder, seed: int, transform: TrainTransform = TrainTransform(),
                 labels: Optional[Labels] = None):
        self.folder, self.seed, self.transform, self.labels = folder, seed, transform, labels

    def __len__(self):
        return len(self.folder)

    def crop(self, epoch: int, index: int) -> torch.Generator:
        """The generator of an image's crop and flip in an epoch."""
        return generator(self.seed, CROP, epoch, index)

    def __getitem__(self, key):
        epoch, index, micro, row = key
        image = self.transform(self.folder.load(index), generator=self.crop(epoch, index))
        if self.labels is None:
            return image, noise_of(self.seed, micro, row)
        return image, noise_of(self.seed, micro, row), self.labels(index, micro, row)


def view_generator(seed: int, image: int, view: int) -> torch.Generator:
    """The generator of the crop and flip of view `view` of image `image` in a token cache."""
    return generator(seed, VIEW_CROP, image, view)


def views_of_epoch(seed: int, epoch: int, num_images: int, num_views: int) -> np.ndarray:
    """The view of each image a run from a token cache trains on in an epoch, uniform over the
    K views: a function of (seed, epoch, image), drawn as one vector per epoch (int64 [N])."""
    return torch.randint(num_views, (num_images,), generator=generator(seed, VIEW, epoch)).numpy()


class TokenBatches(torch.utils.data.Dataset):
    """Whole micro-batches from a token cache: the keys of a TrainOrder micro-batch ->
    (ids int16 [b, 256], noise [b, 256]), and with `labels` (a class-conditional run) their
    labels after label dropout, int64 [b]. The ids of the batch are one read of the memory map;
    int16 holds every codebook id and moves a quarter of int64's bytes to the device."""

    def __init__(self, cache: TokenCache, seed: int, labels: Optional[Labels] = None):
        self.cache, self.seed, self.labels = cache, seed, labels
        self._epoch, self._views = None, None

    def __len__(self):
        return self.cache.num_images

    def views(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._views = epoch, views_of_epoch(self.seed, epoch, len(self), self.cache.num_views)
        return self._views

    def __getitem__(self, keys):
        epochs, images, micros, rows = (np.array(column) for column in zip(*keys))
        if (epochs != epochs[0]).any():
            raise ValueError("a micro-batch spans two epochs")  # TrainOrder never makes one
        ids = self.cache.read(images, self.views(int(epochs[0]))[images])
        noise = torch.stack([noise_of(self.seed, int(m), int(r)) for m, r in zip(micros, rows)])
        if self.labels is None:
            return torch.from_numpy(ids.view(np.int16)), noise
        labels = torch.tensor([self.labels(int(i), int(m), int(r)) for i, m, r in zip(images, micros, rows)])
        return torch.from_numpy(ids.view(np.int16)), noise, labels


def mask_ratio(model, seed: int, micro: int) -> float:
    """The mask ratio of a global micro-batch: one draw, the same on every rank."""
    return model.sample_mask_ratio(generator(seed, RATIO, micro))
