"""Pretraining's optimizer (LTH14/mage main_pretrain.py, MAE-style): which parameters train and
which decay, in the official groups. The schedule and the step are the run layer's (runs.optim)."""
from typing import Optional

import torch
from torch import nn

from ..runs.optim import adamw

BETAS = (0.9, 0.95)
# Registered by MAGE only so that checkpoints load strictly; its forward never reads them
# (docs/mage.md#transformer): runs.freeze_unused takes them out of training. pos_embed and
# decoder_pos_embed are frozen already.
UNUSED_BY_MAGE = ("cls_token", "mask_token", "patch_embed.", "decoder_pred.")

# The official model's submodules in the order its __init__ assigns them, which is the order of
# its named_parameters() (after its own parameters, which ours registers alike). Ours assigns
# decoder_pred before the blocks, the official one after decoder_norm.
OFFICIAL_ORDER = ("vqgan", "token_emb", "patch_embed", "blocks", "norm", "decoder_embed", "decoder_blocks",
                  "decoder_norm", "decoder_pred", "mlm_layer")
# A class-conditional model's parameters, which the official model lacks: after all of its.
CLASS_PARAMETERS = ("class_emb", "class_pos_embed")


def param_groups(model: nn.Module, weight_decay: float, extra: Optional[nn.Module] = None):
    """timm's add_weight_decay as the official code applies it: the parameters the official model
    trains (freeze_unused's too: AdamW skips them, having no gradient, as in the official run); no
    decay for those with ndim <= 1 or whose name ends with ".bias" (so mlm_layer.bias, [1, 1,
    2025], gets none). The no-decay group first, as timm orders them, each in the official
    model's order: an optimizer's state_dict names parameters by position, so these groups are
    what lets the official misc.load_model load ours. `extra` (MAGE-C's projection head): its
    parameters after the model's in each group, by the same rule (its BatchNorms undecayed)."""
    def rank(item):
        name = item[0]
        if name.split(".")[0] in CLASS_PARAMETERS:
            return len(OFFICIAL_ORDER) + 1
        return OFFICIAL_ORDER.index(name.split(".")[0]) + 1 if "." in name else 0
    decay, no_decay = [], []
    named = sorted(model.named_parameters(), key=rank)  # a stable sort
    for name, p in named + (list(extra.named_parameters()) if extra is not None else []):
        if p.requires_grad or name.startswith(UNUSED_BY_MAGE):
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def pretraining_optimizer(model: nn.Module, lr: float, weight_decay: float, capturable: bool = False,
                          extra: Optional[nn.Module] = None) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95) over param_groups."""
    return adamw(param_groups(model, weight_decay, extra), lr, BETAS, capturable)
