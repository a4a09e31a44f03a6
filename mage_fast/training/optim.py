"""The official optimisation recipe (LTH14/mage main_pretrain.py, MAE-style): which parameters
train and which decay, the learning-rate scaling rule and its per-iteration schedule."""
import math

import torch
from torch import nn

BETAS = (0.9, 0.95)
# Registered by MAGE only so that checkpoints load strictly; its forward never reads them
# (docs/mage.md#transformer). pos_embed and decoder_pos_embed are frozen already.
UNUSED = ("cls_token", "mask_token", "patch_embed.", "decoder_pred.")


def freeze_unused(model: nn.Module, unused=UNUSED):
    """Take the parameters the forward never uses (names starting with one of `unused`) out of
    training.

    The official code leaves them trainable, but they never get a gradient, so AdamW skips
    them and they never change: freezing them changes no result. What it buys is that every
    trainable parameter gets a gradient in every step, so DDP can run with
    find_unused_parameters=False (no autograd-graph walk after each forward, as the official
    find_unused_parameters=True costs) and no parameter's gradient is missing from the sync.
    param_groups still lists them, so the optimizer's groups stay the official ones."""
    for name, p in model.named_parameters():
        if name.startswith(unused):
            p.requires_grad_(False)


# The official model's submodules in the order its __init__ assigns them, which is the order of
# its named_parameters() (after its own parameters, which ours registers alike). Ours assigns
# decoder_pred before the blocks, the official one after decoder_norm.
OFFICIAL_ORDER = ("vqgan", "token_emb", "patch_embed", "blocks", "norm", "decoder_embed", "decoder_blocks",
                  "decoder_norm", "decoder_pred", "mlm_layer")
# A class-conditional model's parameters, which the official model lacks: after all of its.
CLASS_PARAMETERS = ("class_emb", "class_pos_embed")


def param_groups(model: nn.Module, weight_decay: float):
    """timm's add_weight_decay as the official code applies it: the parameters the official model
    trains (freeze_unused's too: AdamW skips them, having no gradient, as in the official run); no
    decay for those with ndim <= 1 or whose name ends with ".bias" (so mlm_layer.bias, [1, 1,
    2025], gets none). The no-decay group first, as timm orders them, each in the official
    model's order: an optimizer's state_dict names parameters by position, so these groups are
    what lets the official misc.load_model load ours."""
    def rank(item):
        name = item[0]
        if name.split(".")[0] in CLASS_PARAMETERS:
            return len(OFFICIAL_ORDER) + 1
        return OFFICIAL_ORDER.index(name.split(".")[0]) + 1 if "." in name else 0
    decay, no_decay = [], []
    for name, p in sorted(model.named_parameters(), key=rank):  # a stable sort
        if p.requires_grad or name.startswith(UNUSED):
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.AdamW:
    """capturable: keep the step count on the device, so a CUDA graph can capture the step."""
    fused = next(model.parameters()).device.type == "cuda"  # one kernel for all params on GPU
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=BETAS, fused=fused,
                             capturable=capturable)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params, clip_grad: float):
    """The end of a step: unscale and clip the accumulated gradients to norm clip_grad (0: no
    clipping), step, update the loss scale, clear the gradients."""
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def scaled_lr(blr: float, effective_batch: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256, where the effective batch is
    the per-GPU batch * world size * gradient-accumulation steps."""
    return blr * effective_batch / 256


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at a fractional epoch (epoch + step / steps_per_epoch): linear warm-up
    from 0, then a half cycle of cosine from lr down to min_lr at `epochs`."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
