"""Sampling runs: a folder of generated images (PNGs, and an .npz) for FID, resumable and
shared among torchrun processes, driven from Python by its settings:
`sample(SampleConfig(out="samples/mage-b", ckpt="mage-vitb-1600.pth", num_iter=20))`.
The decoding itself is sampling.sampler.Sampler (CUDA graphs, the largest batch that fits)."""
from .config import SampleConfig
from .folder import MANIFEST, image_label, image_path, image_seed, npz_path
from .run import sample

__all__ = ["MANIFEST", "SampleConfig", "image_label", "image_path", "image_seed", "npz_path", "sample"]
