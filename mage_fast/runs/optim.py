"""What pretraining and fine-tuning share of the optimisation recipe (LTH14/mage, MAE-style):
the linear scaling rule, the per-iteration schedule (linear warm-up, half-cycle cosine), the
one way a run sets the learning rate, AdamW, and the end of a step. Which parameters train,
in which groups, is each run's own (training.optim, finetune.optim)."""
import math
from dataclasses import dataclass, field
from typing import List

import torch


def scaled_lr(blr: float, effective_batch: int) -> float:
    """The linear scaling rule: lr = blr * effective batch / 256, where the effective batch is
    the per-GPU batch * world size * gradient-accumulation steps."""
    return blr * effective_batch / 256


def warmup_cosine_lr(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at a fractional epoch (epoch + step / steps_per_epoch): linear warm-up
    from 0, then a half cycle of cosine from lr down to min_lr at `epochs`."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    """Each group at lr times its lr_scale (layer-wise decay; 1 where a group has none), as the
    official adjust_learning_rate sets it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def adamw(groups: List[dict], lr: float, betas, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over parameter groups; fused (one kernel for all parameters) on a GPU. capturable:
    keep the step count on the device, so a CUDA graph can capture the step."""
    fused = groups[0]["params"][0].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused, capturable=capturable)


@dataclass
class Optimization:
    """What the end of a step updates the weights with: the optimizer, the loss scaler (enabled
    for fp16 only), and the gradient-norm clip (0: none) over the parameters that train."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    clip_grad: float = 0.0
    params: List[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, precision: str, clip_grad: float = 0.0) -> "Optimization":
        device = optimizer.param_groups[0]["params"][0].device
        return cls(optimizer, torch.amp.GradScaler(device.type, enabled=precision == "fp16"), clip_grad)


def optimizer_step(optimization: Optimization):
    """The end of a step: unscale and clip the accumulated gradients, step, update the loss
    scale, clear the gradients."""
    optimizer, scaler = optimization.optimizer, optimization.scaler
    if optimization.clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(optimization.params, optimization.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
