"""What each pretraining step sees, as pure functions of the run's seed and of counters
(runs.seeds): an image's crop and flip by (epoch, image) (from a token cache: which of its views
by (epoch, image), a view's crop by (image, view)), the mask ratio by the global micro-batch,
the noise that picks the dropped and masked tokens by (micro-batch, row of the global
micro-batch), and a class-conditional run's label dropout by (micro-batch, row) too. A
contrastive run takes two views of each image: view v's augmentation by (epoch, image, v) (from
a token cache: which two of its views by (epoch, image)), its noise by (micro-batch, row, v).
The keys come from runs.TrainOrder, so W processes at batch b see the images, crops, mask ratios
and noise that one process at batch W*b sees, and a resumed run the draws of an uninterrupted one.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..configs import NUM_TOKENS
from ..data import ImageFolder, TrainTransform
from ..reference.model import drop_labels
from ..runs.seeds import CONTRAST_VIEW, CROP, LABEL_DROP, NOISE, RATIO, VIEW, VIEW_CROP, VIEW_PAIR, generator
from .token_cache import TokenCache
from .views import ViewTransform

VIEWS = 2  # a contrastive run's views of each image


def noise_of(seed: int, micro: int, row: int, view: int = 0) -> torch.Tensor:
    """The noise [256] of a row of a global micro-batch for the model's forward: a random
    permutation of 0..255 / 256. The masks depend only on the order of the noise, which a
    permutation draws uniformly, and having no ties, it never needs the official redraw. View
    v > 0 of a contrastive run's row has its own; view 0's is MAGE's (the key without a view)."""
    keys = (seed, NOISE, micro, row) + ((view,) if view else ())
    return torch.randperm(NUM_TOKENS, generator=generator(*keys)).float() / NUM_TOKENS


def pair_noise(seed: int, micro: int, row: int) -> torch.Tensor:
    """The noise [2, 256] of a contrastive run's row: one per view."""
    return torch.stack([noise_of(seed, micro, row, v) for v in range(VIEWS)])


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


class ContrastiveSamples(torch.utils.data.Dataset):
    """(views [2, 3, 256, 256], noise [2, 256]) of a key from TrainOrder: two views of the image
    (one decode), view v drawn by `transform` from (seed, epoch, image, v), and their noise."""

    def __init__(self, folder: ImageFolder, seed: int, transform: ViewTransform):
        self.folder, self.seed, self.transform = folder, seed, transform

    def __len__(self):
        return len(self.folder)

    def view(self, epoch: int, index: int, view: int) -> torch.Generator:
        """The generator of a view of an image in an epoch."""
        return generator(self.seed, CONTRAST_VIEW, epoch, index, view)

    def __getitem__(self, key):
        epoch, index, micro, row = key
        image = self.folder.load(index)
        views = torch.stack([self.transform(image, generator=self.view(epoch, index, v)) for v in range(VIEWS)])
        return views, pair_noise(self.seed, micro, row)


def view_generator(seed: int, image: int, view: int) -> torch.Generator:
    """The generator of the crop and flip of view `view` of image `image` in a token cache."""
    return generator(seed, VIEW_CROP, image, view)


def views_of_epoch(seed: int, epoch: int, num_images: int, num_views: int) -> np.ndarray:
    """The view of each image a run from a token cache trains on in an epoch, uniform over the
    K views: a function of (seed, epoch, image), drawn as one vector per epoch (int64 [N])."""
    return torch.randint(num_views, (num_images,), generator=generator(seed, VIEW, epoch)).numpy()


def view_pairs_of_epoch(seed: int, epoch: int, num_images: int, num_views: int) -> np.ndarray:
    """The two views of each image a contrastive run from a token cache trains on in an epoch,
    uniform over the ordered pairs of two different views of the K: a function of (seed, epoch,
    image), drawn as two vectors per epoch (int64 [N, 2]). Needs K >= 2."""
    g = generator(seed, VIEW_PAIR, epoch)
    first = torch.randint(num_views, (num_images,), generator=g)
    second = torch.randint(num_views - 1, (num_images,), generator=g)
    second += second >= first  # uniform over the K - 1 views other than the first
    return torch.stack([first, second], 1).numpy()


class TokenBatches(torch.utils.data.Dataset):
    """Whole micro-batches from a token cache: the keys of a TrainOrder micro-batch ->
    (ids int16 [b, 256], noise [b, 256]), and with `labels` (a class-conditional run) their
    labels after label dropout, int64 [b]; with `pairs` (a contrastive run), two different
    views of each image, (ids int16 [b, 2, 256], noise [b, 2, 256]). The ids of the batch are
    one read of the memory map; int16 holds every codebook id and moves a quarter of int64's
    bytes to the device."""

    def __init__(self, cache: TokenCache, seed: int, labels: Optional[Labels] = None, pairs: bool = False):
        self.cache, self.seed, self.labels, self.pairs = cache, seed, labels, pairs
        self._epoch, self._views = None, None

    def __len__(self):
        return self.cache.num_images

    def views(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            draw = view_pairs_of_epoch if self.pairs else views_of_epoch
            self._epoch, self._views = epoch, draw(self.seed, epoch, len(self), self.cache.num_views)
        return self._views

    def __getitem__(self, keys):
        epochs, images, micros, rows = (np.array(column) for column in zip(*keys))
        if (epochs != epochs[0]).any():
            raise ValueError("a micro-batch spans two epochs")  # TrainOrder never makes one
        views = self.views(int(epochs[0]))[images]
        if self.pairs:  # [b, 2] views: read as 2b rows, image by image
            ids = self.cache.read(np.repeat(images, VIEWS), views.reshape(-1)).reshape(len(images), VIEWS, NUM_TOKENS)
            noise = torch.stack([pair_noise(self.seed, int(m), int(r)) for m, r in zip(micros, rows)])
            return torch.from_numpy(ids.view(np.int16)), noise
        ids = self.cache.read(images, views)
        noise = torch.stack([noise_of(self.seed, int(m), int(r)) for m, r in zip(micros, rows)])
        if self.labels is None:
            return torch.from_numpy(ids.view(np.int16)), noise
        labels = torch.tensor([self.labels(int(i), int(m), int(r)) for i, m, r in zip(images, micros, rows)])
        return torch.from_numpy(ids.view(np.int16)), noise, labels


def mask_ratio(model, seed: int, micro: int) -> float:
    """The mask ratio of a global micro-batch: one draw, the same on every rank."""
    return model.sample_mask_ratio(generator(seed, RATIO, micro))
