"""Typed settings: the fields of a run's configuration (a frozen dataclass: training.TrainConfig,
sampling.SampleConfig) with what each allows, declared once beside the field.

A config checks its fields when it is built (`check_settings` in its __post_init__): a
ValueError names the field and what it must be. That is the guard for Python callers. The
command line makes its flags from the same fields (cli.common.add_setting): a number's rule
becomes the flag's argparse type and a choice its `choices`, so the CLI refuses bad input
before any work with the rule the library holds, never a copy of it.
"""
import argparse
import dataclasses
import logging
import os
import typing
from typing import Optional

from .checkpoint import load_states, read_states
from .configs import CONFIGS
from .model import IMPLEMENTATIONS, build_model
from .reference.model import CLASS_KEYS
from .validation import Numbers

log = logging.getLogger("mage_fast")

RANDOM_WEIGHTS_WARNING = """
################################################################################
#  No --ckpt given: the model has RANDOM WEIGHTS. Outputs are meaningless; use  #
#  this only to test the pipeline. Official checkpoints: mage-vitb-1600.pth,    #
#  mage-vitl-1600.pth (LTH14/mage).                                             #
################################################################################"""


def setting(default=dataclasses.MISSING, numbers: Optional[Numbers] = None, choices=None, path: bool = False):
    """A config field: its default (none: the field is required) and what it allows: the
    numbers of a rule, one of `choices`, or a path (a str; an os.PathLike becomes its str). A
    field whose default is None also takes None: chosen later, or off."""
    return dataclasses.field(default=default, metadata={"numbers": numbers, "choices": choices, "path": path})


def _plain_type(annotation):
    """str for Optional[str], and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def check_settings(config):
    """Check every field of a config against its declaration (see `setting`) and its annotation
    where that is str or bool. Paths are stored as str: a checkpoint keeps a run's settings,
    and a checkpoint holds plain values only."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if value is None and f.default is None:
            continue
        if meta.get("path"):
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise ValueError(f"{f.name} must be a path, got {value!r}")
            object.__setattr__(config, f.name, os.fspath(value))  # frozen: set once, while it is built
        elif _plain_type(f.type) in (str, bool) and not isinstance(value, _plain_type(f.type)):
            raise ValueError(f"{f.name} must be a {_plain_type(f.type).__name__}, got {value!r}")
        if meta.get("numbers"):
            meta["numbers"].check(f.name, value)
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ValueError(f"{f.name} must be one of {', '.join(sorted(meta['choices']))}, got {value!r}")


def as_namespace(config, **extra) -> argparse.Namespace:
    """A run's settings (and `extra` values) as the `args` entry of a checkpoint: the official
    files pickle their argparse arguments, which the official loader and our read_file accept."""
    return argparse.Namespace(**{**dataclasses.asdict(config), **extra})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The model of a run: its size (a key of CONFIGS), implementation ("fast", or the
    pure-PyTorch "reference"), and the checkpoints its weights come from: an official MAGE
    checkpoint `ckpt`, and/or the tokenizer's `vqgan_ckpt` (which wins for the vqgan.* keys)."""
    model: str = setting("mage_vit_base_patch16", choices=CONFIGS)
    impl: str = setting("fast", choices=IMPLEMENTATIONS)
    ckpt: Optional[str] = setting(None, path=True)
    vqgan_ckpt: Optional[str] = setting(None, path=True)

    def __post_init__(self):
        check_settings(self)

    def load(self, device, class_conditional: bool = False):
        """The model with its checkpoints loaded strictly, in eval mode on `device`. Without
        `ckpt` the transformer keeps random weights drawn from seed 0, and a warning says so.
        class_conditional: the class-conditional model, its number of classes read off the
        checkpoint's class_emb.weight (1000 with random weights)."""
        state = read_states(self.ckpt, self.vqgan_ckpt) if self.ckpt or self.vqgan_ckpt else {}
        model = build_model(self.model, self.impl, **class_settings(state, self.ckpt, class_conditional))
        if state:
            log.info("checkpoint: %s", load_states(model, state, self.ckpt is not None))
        if not self.ckpt:
            log.warning(RANDOM_WEIGHTS_WARNING)
        return model.to(device).eval()


def class_settings(state: dict, ckpt: Optional[str], class_conditional: bool) -> dict:
    """The constructor arguments of the model that a checkpoint's tensors `state` (from `ckpt`,
    None: random weights) load into: class-conditional with class_emb.weight's rows - 1
    classes, or not; a checkpoint of the other kind is a ValueError naming the key."""
    key = CLASS_KEYS[0]
    if not class_conditional:
        if key in state:
            raise ValueError(f"{ckpt} is class-conditional (it has {key}): load it as one "
                             "(mage-fast sample --class-conditional)")
        return {}
    if not ckpt:
        return {"class_conditional": True}
    if key not in state:
        raise ValueError(f"{ckpt} is not class-conditional: it has no {key} (make one with "
                         f"`mage-fast train --class-conditional --ckpt {ckpt}`)")
    return {"class_conditional": True, "num_classes": state[key].shape[0] - 1}
