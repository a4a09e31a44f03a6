"""MAGE pretraining: the official recipe (docs/mage.md#recipe) as reusable pieces and the loop of
`mage-fast train`."""
from .batches import TrainOrder, TrainSamples, seed_of
from .loop import train
from .optim import freeze_unused, lr_at, param_groups, scaled_lr
from .state import LAST, restore, save_checkpoint

__all__ = ["LAST", "TrainOrder", "TrainSamples", "freeze_unused",
           "lr_at", "param_groups", "restore", "save_checkpoint", "scaled_lr", "seed_of", "train"]
