"""mage-fast: a performance-engineered MAGE (Masked Generative Encoder, CVPR 2023).

`mage_fast.MAGE` (and its factories) is the fast module; `mage_fast.reference` is the
pure-PyTorch oracle, faithful to the official code, whose API and state_dict keys it mirrors.
"""
from . import reference
from .backends import backend_report
from .checkpoint import load_checkpoint
from .configs import CONFIGS, MAGE_B, MAGE_L, TINY_TEST, MAGEConfig, VQGANConfig
from .model import MAGE, mage_from_config, mage_vit_base_patch16, mage_vit_large_patch16, mage_vit_tiny_test
from .sampling.sampler import Sampler

__version__ = "0.1.0"
__all__ = ["CONFIGS", "MAGE", "MAGEConfig", "MAGE_B", "MAGE_L", "Sampler", "TINY_TEST", "VQGANConfig",
           "backend_report", "load_checkpoint", "mage_from_config", "mage_vit_base_patch16",
           "mage_vit_large_patch16", "mage_vit_tiny_test", "reference"]
