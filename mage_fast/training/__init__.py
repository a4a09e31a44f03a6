"""MAGE pretraining: the official recipe (docs/mage.md#recipe) as reusable pieces and the loop of
`mage-fast train`, driven from Python by its settings:
`train(TrainConfig(data="imagenet/train", out="runs/mage-b", vqgan_ckpt=...))`."""
from .batches import TrainOrder, TrainSamples, seed_of
from .config import TrainConfig
from .loop import train
from .optim import freeze_unused, lr_at, param_groups, scaled_lr
from .state import LAST, restore, save_checkpoint

__all__ = ["LAST", "TrainConfig", "TrainOrder", "TrainSamples", "freeze_unused",
           "lr_at", "param_groups", "restore", "save_checkpoint", "scaled_lr", "seed_of", "train"]
