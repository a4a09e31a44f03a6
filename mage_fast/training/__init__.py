"""MAGE pretraining on the run layer (mage_fast.runs): the official recipe's model, data and
loss (docs/mage.md#recipe) and the loop of `mage-fast train`, driven from Python by its settings:
`train(TrainConfig(data="imagenet/train", out="runs/mage-b", vqgan_ckpt=...))`; token caches
(`mage-fast tokenize`) to train from."""
from .batches import TokenBatches, TrainSamples
from .config import TrainConfig
from .loop import train
from .optim import UNUSED_BY_MAGE, param_groups, pretraining_optimizer
from .token_cache import TokenCache, tokenizer_sha256
from .tokenize import tokenize_folder

__all__ = ["TokenBatches", "TokenCache", "TrainConfig", "TrainSamples", "UNUSED_BY_MAGE", "param_groups",
           "pretraining_optimizer", "tokenize_folder", "tokenizer_sha256", "train"]
