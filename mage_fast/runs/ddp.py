"""DistributedDataParallel as every run wraps its model, and the freezing that lets it."""
import inspect
from typing import Optional, Tuple

from torch import nn
from torch.nn.parallel import DistributedDataParallel


def freeze_unused(model: nn.Module, unused: Tuple[str, ...]):
    """Take the parameters the forward never uses (names starting with one of `unused`) out of
    training.

    The official code leaves them trainable, but they never get a gradient, so AdamW skips
    them and they never change: freezing them changes no result. What it buys is that every
    trainable parameter gets a gradient in every step, so DDP can run with
    find_unused_parameters=False (no autograd-graph walk after each forward, as the official
    find_unused_parameters=True costs) and no parameter's gradient is missing from the sync.
    The optimizer's groups still list them, so they stay the official ones."""
    for name, p in model.named_parameters():
        if name.startswith(unused):
            p.requires_grad_(False)


# No buffer broadcast before each forward. Newer torch warns on broadcast_buffers and names the
# setting forward_sync_buffers, which also syncs the buffers once at init: harmless, as every
# rank's buffers start equal.
NO_BUFFER_SYNC = {"forward_sync_buffers" if "forward_sync_buffers" in
                  inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers": False}


def wrap(model: nn.Module, ctx) -> Optional[DistributedDataParallel]:
    """The DDP wrapper of `model` on a run of several processes (None alone). Every trainable
    parameter gets a gradient in every step (freeze_unused), hence find_unused_parameters=False;
    MAGE's only buffer is constant (the token position ids) and MAGE-C's head's BatchNorm
    statistics are the same on every rank (it runs on the gathered global batch): no broadcast
    before every forward."""
    if ctx.world_size == 1:
        return None
    return DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                   **NO_BUFFER_SYNC)

