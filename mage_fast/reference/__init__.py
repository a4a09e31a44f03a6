"""The pure-PyTorch reference MAGE: the oracle every fast path is held to."""
from .decoding import decoding_step, sample_categorical, schedule
from .layers import attention_official
from .model import MAGE, mage_from_config, mage_vit_base_patch16, mage_vit_large_patch16, mage_vit_tiny_test
from .vqgan import VQGAN, nearest_code

__all__ = ["MAGE", "VQGAN", "attention_official", "decoding_step", "mage_from_config",
           "mage_vit_base_patch16", "mage_vit_large_patch16", "mage_vit_tiny_test",
           "nearest_code", "sample_categorical", "schedule"]
