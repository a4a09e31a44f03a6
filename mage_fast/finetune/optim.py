"""Layer-wise lr decay (BEiT's, as the official util/lr_decay.py applies it) and the fine-tuning
optimizer: AdamW (0.9, 0.999) over one group per (layer, decay or not), each at the run's lr
times its lr_scale (runs.set_lr)."""
from typing import List

import torch
from torch import nn

from ..recognition.classifier import UNUSED_BY_CLASSIFIER
from ..runs.optim import adamw

BETAS = (0.9, 0.999)
NO_WEIGHT_DECAY = ("cls_token", "pos_embed")  # timm's ViT.no_weight_decay()


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings (the token embedding and the ViT's unused ones), i + 1 for block i,
    num_layers (= depth + 1) for everything after the blocks (norm, fc_norm, head)."""
    if name in ("cls_token", "pos_embed") or name.startswith(("patch_embed", "token_emb")):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(model: nn.Module, weight_decay: float, layer_decay: float) -> List[dict]:
    """One group per (layer id, decay or not), in the order first met over named_parameters(),
    with lr_scale = layer_decay ** (num_layers - layer id): 1 for the head, decaying towards the
    input. No weight decay for 1-D parameters and NO_WEIGHT_DECAY. The classifier registers its
    parameters in the official model's order, so these are the official groups, in order, with
    the same parameters: an optimizer's state names parameters by position, and this is what
    lets the official misc.load_model load ours. Frozen parameters are left out, except the
    unused ones that the official run trains (and AdamW skips, as they never get a gradient)."""
    num_layers = len(model.blocks) + 1
    groups = {}
    for name, p in model.named_parameters():
        if not (p.requires_grad or name.startswith(UNUSED_BY_CLASSIFIER)):
            continue
        no_decay = p.ndim == 1 or name in NO_WEIGHT_DECAY
        layer = layer_id(name, num_layers)
        group = groups.setdefault(f"layer_{layer}_{'no_decay' if no_decay else 'decay'}", {
            "lr_scale": layer_decay ** (num_layers - layer), "weight_decay": 0.0 if no_decay else weight_decay,
            "params": []})
        group["params"].append(p)
    return list(groups.values())


def layer_decay_optimizer(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> torch.optim.AdamW:
    """AdamW (0.9, 0.999) over param_groups_lrd."""
    return adamw(param_groups_lrd(model, weight_decay, layer_decay), lr, BETAS)
