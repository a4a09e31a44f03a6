"""MAGE-C (docs/mage.md#mage-c): MAGE's loss on two views of each image plus a contrastive loss
on the encoder's output. Each view goes through the masked MAGE forward (one forward over both
views); the encoder's output of each is pooled, projected by an MLP head, and the two views of
an image are pulled together against every other view of the global batch (SimCLR's NT-Xent,
symmetric). Under torchrun the pooled rows are gathered with their gradients
(torch.distributed.nn), and every rank runs the head on the whole global batch: its BatchNorm
then sees the global batch's statistics, with no SyncBatchNorm (which has no CPU kernel), and W
ranks at batch B compute what one process at batch W*B computes.

The head is no part of MAGE: a checkpoint keeps it apart (runs.state, `contrastive_head`), so
its `model` entry loads wherever a MAGE checkpoint does, the official scripts included."""
import dataclasses
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .views import PRESETS

POOLS = ("avg", "cls")
VIEW_PRESETS = tuple(PRESETS)  # the two views' augmentations (training.views)
HEAD_KEY = "contrastive_head"  # the checkpoint entry of the head's state_dict


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """What a MAGE-C run adds to MAGE's (TrainConfig's contrastive_* fields, checked there)."""
    weight: float       # lambda: loss = MLM + weight * contrastive
    temperature: float
    pool: str           # avg: the mean of the encoder's kept image rows; cls: its class-token row
    layers: int         # the head's linear layers
    hidden: int         # their width
    dim: int            # the embedding the loss compares
    views: str          # the views' augmentation preset (training.source)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class ProjectionHead(nn.Sequential):
    """SimCLR v2's / MoCo v3's projector: `layers` linear layers, BatchNorm and ReLU after each
    but the last (as CAN's), `hidden` wide, `dim` out. Seeded apart from the global RNG, so the
    MAGE weights a seed gives are those of a MAGE run."""

    def __init__(self, embed_dim: int, layers: int, hidden: int, dim: int, seed: int = 0):
        widths = [embed_dim] + [hidden] * (layers - 1) + [dim]
        parts = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            parts.append(nn.Linear(a, b, bias=i == layers - 1))  # a BatchNorm follows the others
            if i < layers - 1:
                parts += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        super().__init__(*parts)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self:
                if isinstance(m, nn.Linear):  # xavier as MAGE's linears, zero bias
                    m.weight.copy_(nn.init.xavier_uniform_(torch.empty(m.weight.shape), generator=g))
                    if m.bias is not None:
                        m.bias.zero_()


def pool(encoded: torch.Tensor, how: str) -> torch.Tensor:
    """[B, KEPT, D] encoder output (row 0 the class token) -> [B, D]."""
    return encoded[:, 1:].mean(dim=1) if how == "avg" else encoded[:, 0]


def gather_views(pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's pooled rows [2B, D] (B of view 0, then B of view 1) -> (the global batch's
    [2N, D], N = W*B, view 0 of every rank's images then view 1, in rank order; the indices of
    this rank's rows in it). The gather carries gradients back to every rank's rows."""
    b = pooled.shape[0] // 2
    local = torch.arange(2 * b, device=pooled.device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return pooled, local
    import torch.distributed._functional_collectives as funcol  # only where torch.distributed runs
    world, rank = dist.get_world_size(), dist.get_rank()
    # torch's functional collective with autograd: its backward reduce-scatters the gradients
    # (sums every rank's share of this rank's rows). torch.distributed.nn's all_gather does the
    # same and is deprecated in its favour.
    parts = funcol.all_gather_tensor_autograd(pooled, gather_dim=0, group=dist.group.WORLD).view(world, 2, b, -1)
    rows = torch.where(local < b, rank * b + local, world * b + rank * b + local - b)
    return parts.transpose(0, 1).reshape(2 * world * b, -1), rows


def nt_xent(z: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over z [2N, d] (view 0 of N images, then view 1): for each anchor in
    `rows`, -log of the softmax, over the 2N - 1 other rows, of its other view's cosine
    similarity / temperature; the mean over `rows` (all of them: the symmetric loss)."""
    z = F.normalize(z, dim=1)
    logits = z[rows] @ z.T / temperature
    logits = logits.masked_fill(rows[:, None] == torch.arange(len(z), device=z.device), float("-inf"))
    n = len(z) // 2
    return F.cross_entropy(logits, (rows + n) % (2 * n))


class ContrastiveMAGE(nn.Module):
    """A MAGE model and its projection head as one module (what DDP wraps, so that the head's
    gradients are averaged with the rest). forward takes the two views stacked on dim 1:
    images [B, 2, 3, H, W] or tokens [B, 2, 256], noise [B, 2, 256]; it returns the loss, and
    leaves its two parts (detached) in `parts`."""

    def __init__(self, mage: nn.Module, settings: ContrastiveSettings, seed: int = 0):
        super().__init__()
        self.mage, self.settings = mage, settings
        self.head = ProjectionHead(mage.config.embed_dim, settings.layers, settings.hidden, settings.dim, seed)
        self.parts: Dict[str, torch.Tensor] = {}

    def forward(self, images: Optional[torch.Tensor] = None, mask_ratio=None, noise: Optional[torch.Tensor] = None,
                *, tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        def both(t):  # [B, 2, ...] -> [2B, ...]: view 0's rows, then view 1's
            return None if t is None else t.transpose(0, 1).flatten(0, 1)
        for name, t in (("images", images), ("tokens", tokens), ("noise", noise)):
            if t is not None and (t.dim() < 2 or t.shape[1] != 2):
                raise ValueError(f"{name} must hold two views on dim 1 ([B, 2, ...]), got {list(t.shape)}")
        mlm, encoded = self.mage.forward_encoded(both(images), mask_ratio, both(noise), tokens=both(tokens))
        pooled, rows = gather_views(pool(encoded, self.settings.pool))
        with torch.autocast(pooled.device.type, enabled=False):  # the head and the loss in fp32
            contrastive = nt_xent(self.head(pooled.float()), rows, self.settings.temperature)
        self.parts = {"mlm": mlm.detach(), "contrastive": contrastive.detach()}
        return mlm + self.settings.weight * contrastive
