"""Which MAGE implementation trains. Both build from a config name with the same constructor
arguments and have the same state_dict keys, so checkpoints move freely between them."""
import importlib
import importlib.util

from ..configs import CONFIGS

# The module whose mage_from_config(cfg, **kwargs) builds each implementation.
IMPLS = {"reference": "mage_fast.reference", "fast": "mage_fast.model"}


def default_impl() -> str:
    return "fast" if importlib.util.find_spec(IMPLS["fast"]) else "reference"


def build_model(name: str, impl: str, **kwargs):
    """The model `name` (a key of CONFIGS) from implementation `impl`; kwargs go to its
    constructor (e.g. dropout)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
    if not importlib.util.find_spec(IMPLS[impl]):
        raise ValueError(f"the {impl} implementation ({IMPLS[impl]}) is not available here; use --impl reference")
    return importlib.import_module(IMPLS[impl]).mage_from_config(CONFIGS[name], **kwargs)
