"""mage-fast: a performance-engineered MAGE (Masked Generative Encoder, CVPR 2023).

`mage_fast.reference` is the pure-PyTorch oracle, faithful to the official code; the fast
modules mirror its API and state_dict keys.
"""
from . import reference
from .backends import backend_report
from .checkpoint import load_checkpoint
from .configs import CONFIGS, MAGE_B, MAGE_L, TINY_TEST, MAGEConfig, VQGANConfig

__version__ = "0.1.0"
__all__ = ["CONFIGS", "MAGEConfig", "MAGE_B", "MAGE_L", "TINY_TEST", "VQGANConfig",
           "backend_report", "load_checkpoint", "reference"]
