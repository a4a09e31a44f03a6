"""MAGE pretraining: the official recipe (docs/mage.md#recipe) as reusable pieces and the loop of
`mage-fast train`, driven from Python by its settings:
`train(TrainConfig(data="imagenet/train", out="runs/mage-b", vqgan_ckpt=...))`; token caches
(`mage-fast tokenize`) to train from."""
from .batches import TokenBatches, TrainOrder, TrainSamples, seed_of
from .config import TrainConfig
from .loop import train
from .optim import freeze_unused, lr_at, param_groups, scaled_lr
from .state import LAST, restore, save_checkpoint
from .token_cache import TokenCache, tokenizer_sha256
from .tokenize import tokenize_folder

__all__ = ["LAST", "TokenBatches", "TokenCache", "TrainConfig", "TrainOrder", "TrainSamples", "freeze_unused",
           "lr_at", "param_groups", "restore", "save_checkpoint", "scaled_lr", "seed_of", "tokenize_folder",
           "tokenizer_sha256", "train"]
