"""MAGE pretraining: the official recipe (MAGE_SPEC 3) as reusable pieces and the loop of
`mage-fast train`."""
from .batches import TrainOrder, TrainSamples, seed_of
from .loop import train
from .models import IMPLS, build_model, default_impl
from .optim import freeze_unused, lr_at, param_groups, scaled_lr
from .state import LAST, restore, save_checkpoint

__all__ = ["IMPLS", "LAST", "TrainOrder", "TrainSamples", "build_model", "default_impl", "freeze_unused",
           "lr_at", "param_groups", "restore", "save_checkpoint", "scaled_lr", "seed_of", "train"]
