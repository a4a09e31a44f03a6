"""One training step, the same for `mage-fast train`, `mage-fast finetune` and the training rows
of `mage-fast bench`: what differs between them (the model, its input, the loss) comes in as
`loss_of`."""
import contextlib
from typing import Callable, Iterator, List, Optional

import torch

from ..validation import PRECISIONS
from .optim import Optimization, optimizer_step


def autocast(device: torch.device, precision: str):
    """The forward's mixed precision: autocast to `precision`'s dtype, off for fp32."""
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


def train_step(batches: Iterator, accum: int, loss_of: Callable[[object, int], torch.Tensor],
               optimization: Optimization, ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
               ) -> List[torch.Tensor]:
    """One optimizer step over `accum` micro-batches from `batches`: each's loss_of(batch, m)
    (m its index in the step) backpropagated at 1/accum through the loss scaler, then
    optimizer_step. Under DDP the gradients are all-reduced once per step, in the last
    micro-batch's backward (no_sync before). Returns the micro-batches' losses."""
    losses = []
    for m in range(accum):
        batch = next(batches)
        with ddp.no_sync() if ddp is not None and m < accum - 1 else contextlib.nullcontext():
            loss = loss_of(batch, m)
            optimization.scaler.scale(loss / accum).backward()
        losses.append(loss)
    optimizer_step(optimization)
    return losses
