"""The settings a fine-tuning run takes on its training set: the official recipe as given, or,
on a small set, the recipe adapted where the official one cannot learn in the steps such a set
gives.

The official recipe is sized for ImageNet: 1.28M images at 1,024 per step, ~125,000 steps at a
peak lr of 1e-3 (blr 2.5e-4 x 1024 / 256), 5 of 100 epochs of warm-up, and mixup, cutmix and
RandAugment, which make each image a different problem every epoch. A set of fewer than
`small_set` images (default 1,000: less than one published step per epoch) breaks it:

- a batch larger than the set leaves no step at all (the run refused it), and a batch that is the
  whole set gives one step per epoch and per validation: the batch is capped so that an epoch has
  at least STEPS_PER_EPOCH steps;
- the linear scaling rule lowers the lr of a small batch because a large set gives it
  proportionally more steps; a small set does not. At batch 16 it gave 1.6e-5, and an AdamW step
  moves each weight by about the lr: in the steps a small set gives, the head (drawn with std
  2e-5) stays too small to move the loss off ln(classes). The lr is the published run's peak,
  blr x 1024 / 256: on 8 images of two flat colours (the tiny test model, 12 steps of 2), 1.6e-5
  left the validation loss at 0.6925 (ln 2 = 0.6931), 1e-3 brought it to 0.35-0.59 (8 seeds);
- the warm-up is the official 5% of the run, not 5 epochs, which --epochs 8 made 62% of it (and
  --epochs 3 an error);
- mixup, cutmix and RandAugment are off: they make each image a new problem every epoch, a
  regulariser for 125,000 steps that a run of a few hundred cannot afford (RandAugment's colour
  operations can even turn one class of a colour-defined set into another). The run then needs
  no timm.

Each adaptation applies only to the settings not given explicitly (FinetuneConfig.fixed), and
small_set=0 keeps the official recipe whatever the size."""
import dataclasses
from typing import Tuple

from ..runs.optim import scaled_lr
from .config import ADAPTED, NO_AUGMENT, FinetuneConfig

PUBLISHED_BATCH = 1024      # the official ViT-B command: 32 images x 32 GPUs
STEPS_PER_EPOCH = 4         # at least, on a small set
WARMUP_FRACTION = 0.05      # the official 5 of 100 epochs
AUGMENTATIONS = (("mixup", "mixup"), ("cutmix", "cutmix"), ("aa", "RandAugment"))   # (setting, name)


def _batch(cfg: FinetuneConfig, num_images: int, world_size: int, mixing: bool) -> int:
    """The largest batch up to cfg.batch_size that gives STEPS_PER_EPOCH steps (at least 1; even
    where mixing pairs each image with another)."""
    batch = max(1, min(cfg.batch_size, num_images // (STEPS_PER_EPOCH * world_size * cfg.accum_iter)))
    return max(2, batch - batch % 2) if mixing else batch


def for_training_set(cfg: FinetuneConfig, num_images: int, world_size: int = 1) -> Tuple[FinetuneConfig, str]:
    """(the config the run takes on a training set of num_images images over world_size
    processes, a line saying which recipe that is and what was adapted)."""
    if not cfg.small_set or num_images >= cfg.small_set:
        cfg.check_joint()
        return cfg, (f"the official recipe ({num_images} training images, " + (
            f"at least --small-set {cfg.small_set})" if cfg.small_set else "--small-set 0)"))
    free = set(ADAPTED) - set(cfg.fixed)
    off = [label for name, label in AUGMENTATIONS if name in free and getattr(cfg, name) not in (0, NO_AUGMENT)]
    changes = {name: NO_AUGMENT if name == "aa" else 0.0 for name, label in AUGMENTATIONS if label in off}
    notes = []
    if "batch_size" in free:
        mixing = changes.get("mixup", cfg.mixup) > 0 or changes.get("cutmix", cfg.cutmix) > 0
        changes["batch_size"] = _batch(cfg, num_images, world_size, mixing)
        notes.append(f"batch {changes['batch_size']} (at least {STEPS_PER_EPOCH} steps an epoch)")
    if "lr" in free and "blr" not in cfg.fixed:
        changes["lr"] = scaled_lr(cfg.blr, PUBLISHED_BATCH)
        notes.append(f"lr {changes['lr']:.3g} (blr x {PUBLISHED_BATCH} / 256, the published run's)")
    if "warmup_epochs" in free:
        changes["warmup_epochs"] = WARMUP_FRACTION * cfg.epochs
        notes.append(f"warm-up {changes['warmup_epochs']:g} of {cfg.epochs} epochs ({WARMUP_FRACTION:.0%})")
    if off:
        notes.append(f"no {'/'.join(off)}")
    adapted = dataclasses.replace(cfg, **changes)
    adapted.check_joint()
    return adapted, (f"the small-set recipe ({num_images} training images, under --small-set {cfg.small_set}): "
                     + (", ".join(notes) if notes else "every setting it adapts was given")
                     + "; --small-set 0 for the official one")
