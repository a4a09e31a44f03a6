"""The model a command runs: its size, implementation and the checkpoints its weights come from
(ModelSettings, a settings dataclass the train, sample and edit configs share), and how a
checkpoint's tensors decide which model they load into."""
import dataclasses
import logging
from typing import Optional

from .checkpoint import load_states, read_states
from .configs import CONFIGS
from .model import IMPLEMENTATIONS, build_model
from .reference.model import CLASS_KEYS
from .settings import check_settings, setting

log = logging.getLogger("mage_fast")

RANDOM_WEIGHTS_WARNING = """
################################################################################
#  No --ckpt given: the model has RANDOM WEIGHTS. Outputs are meaningless; use  #
#  this only to test the pipeline. Official checkpoints: mage-vitb-1600.pth,    #
#  mage-vitl-1600.pth (LTH14/mage).                                             #
################################################################################"""


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
