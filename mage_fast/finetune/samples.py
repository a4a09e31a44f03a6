"""What each fine-tuning step sees, every random draw a function of (seed, counters) as in
pretraining (runs.seeds), so a resumed run takes the same steps:

- the crop and flip of an image by (epoch, image), from torch generators, resized bicubically;
- its RandAugment by (epoch, image): timm draws from Python's `random` and numpy's global RNG,
  so both are seeded for the call and restored after;
- mixup/cutmix by (micro-batch, rank): timm's Mixup draws from numpy's global RNG;
- drop path and the embedding dropout by (micro-batch, rank), from torch's (seed_dropout).

Mixup, cutmix, RandAugment and the soft-target loss are timm's (the optional extra
mage-fast[finetune]), imported only when turned on. Mixup and cutmix act here on images in
[0, 1], in the official code on normalised ones that it denormalises afterwards: a convex
combination or a pasted box commutes with the per-channel affine map, so the tokenizer sees the
same images.
"""
import contextlib
import random

import numpy as np
import torch
from PIL import Image

from ..data import ImageFolder, TrainTransform, to_tensor
from ..reference.layers import label_smoothed_nll
from ..runs.seeds import AUGMENT, CROP, MIXUP, generator, seed_of
from .config import FinetuneConfig


def require_timm(what: str):
    """timm, or an ImportError that says how to get it (or do without)."""
    try:
        import timm
        import timm.data
        import timm.loss  # noqa: F401
    except Exception as e:  # a torchvision that does not match torch fails in other ways than ImportError
        raise ImportError(f"{what} comes from timm, which does not import here ({type(e).__name__}: {e}): "
                          "pip install 'mage-fast[finetune]', or turn it off with --mixup 0 --cutmix 0 --aa none"
                          ) from None
    return timm


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Python's `random` and numpy's global RNG seeded from `seed` inside the block; their
    states are restored after it."""
    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def rand_augment(policy: str, size: int):
    """timm's RandAugment as the official create_transform builds it for this policy: geometric
    ops translate up to 45% of the image size, fill with the ImageNet mean and resample bicubically."""
    require_timm("RandAugment (--aa)")
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.constants import IMAGENET_DEFAULT_MEAN
    hparams = dict(translate_const=int(size * 0.45), interpolation=Image.BICUBIC,
                   img_mean=tuple(min(255, round(255 * m)) for m in IMAGENET_DEFAULT_MEAN))
    try:
        return rand_augment_transform(policy, hparams)
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"timm does not understand the RandAugment policy {policy!r} ({e!r})") from None


class FinetuneSamples(torch.utils.data.Dataset):
    """(image in [0, 1], label) of a key (epoch, image, micro-batch, row) from TrainOrder:
    RandomResizedCrop(256, 0.2-1, bicubic) and flip, then RandAugment (augment, if given)."""

    def __init__(self, folder: ImageFolder, seed: int, augment=None,
                 transform: TrainTransform = TrainTransform(interpolation="bicubic")):
        self.folder, self.seed, self.augment, self.transform = folder, seed, augment, transform

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, key):
        epoch, index, _, _ = key
        img = self.transform.crop_and_flip(self.folder.load(index), generator(self.seed, CROP, epoch, index))
        if self.augment is not None:
            with seeded_global_rngs(seed_of(self.seed, AUGMENT, epoch, index)):
                img = self.augment(img)
        return to_tensor(img), self.folder.labels[index]


class Objective:
    """The official criterion and the targets it takes: with mixup or cutmix, timm's Mixup
    (batch mode: one draw per batch, mixed with its reverse) gives label-smoothed soft targets
    for timm's SoftTargetCrossEntropy; otherwise the labels go to label-smoothed cross-entropy
    (timm's LabelSmoothingCrossEntropy, which is label_smoothed_nll; plain CE at smoothing 0)."""

    def __init__(self, cfg: FinetuneConfig, num_classes: int):
        self.seed, self.smoothing, self.mixup = cfg.seed, cfg.smoothing, None
        if cfg.mixing:
            require_timm("mixup/cutmix (--mixup, --cutmix)")
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                               num_classes=num_classes)
            self.soft_loss = SoftTargetCrossEntropy()

    def targets(self, images: torch.Tensor, labels: torch.Tensor, micro: int, rank: int):
        """(images, targets) of a micro-batch: mixed in place, with soft targets, when mixing."""
        if self.mixup is None:
            return images, labels
        with seeded_global_rngs(seed_of(self.seed, MIXUP, micro, rank)):
            return self.mixup(images, labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.mixup is not None:
            return self.soft_loss(logits, targets)
        return label_smoothed_nll(logits, targets, self.smoothing).mean()
