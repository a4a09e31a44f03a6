"""The official linear probe (MAE's, which MAGE's main_linprobe.py keeps), on cached features.

Head: BatchNorm1d(affine=False, eps=1e-6) then Linear (weight trunc-normal std 0.01, bias 0),
trained with LARS (momentum 0.9, no weight decay) on cross-entropy; lr = blr * batch / 256,
set every iteration: linear warm-up from 0, then a half-cycle cosine to 0. Batches are drawn
without replacement and the last incomplete one is dropped, as the official loader does.

Where it differs from the official run: the features are computed once from the eval crop,
while the official probe re-encodes a RandomResizedCrop + flip of each image every epoch
(with the token embedding's dropout active); it trains in fp32 rather than fp16 autocast; it
reports the accuracy after the last epoch, not the best over epochs; and a run shorter than
`min_steps` optimizer steps (a small training set: one step per epoch) is stretched to that many,
warm-up included, where the official schedule would stop before LARS's small steps converge.
A training set smaller than the batch is one batch (the whole set) and keeps the lr of the batch
asked for (`linear_probe` says why).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..runs.optim import warmup_cosine_lr
from .store import FeatureSet, labelled_pair


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose update of each matrix is rescaled to trust_coefficient * |w| /
    |update| (You et al., 2017); vectors (biases, norms) get the plain momentum update and no
    weight decay, as in the official LARS."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    # A zero weight or update has no ratio to trust: leave the step unscaled.
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["trust_coefficient"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update * trust
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                state["momentum"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum"], alpha=-group["lr"])
        return loss


def topk_hits(top: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows of `top` (predicted classes, best first) have their label among the first k."""
    return (top[:, :k] == labels[:, None]).any(dim=1).sum()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * topk_hits(top, labels, k).item() / len(labels)


def probe_schedule(num_train: int, batch: int, epochs: int, warmup: float, min_steps: int):
    """(epochs, warm-up epochs, steps per epoch) of the run. The official schedule when it takes
    at least min_steps optimizer steps; otherwise both are stretched by one factor to reach
    min_steps. LARS moves each matrix by at most lr x trust coefficient (0.001) of its norm per
    step, so the official 90 epochs, which are ~28,000 steps on ImageNet at batch 4096, leave a
    head on a few thousand features (one step per epoch) far from converged."""
    steps = num_train // batch
    if epochs * steps >= min_steps:
        return epochs, warmup, steps
    stretched = math.ceil(min_steps / steps)
    return stretched, warmup * stretched / epochs, steps


def linear_probe(train: FeatureSet, val: FeatureSet, epochs: int = 90, batch_size: int = 4096,
                 blr: float = 0.1, warmup_epochs: Optional[float] = None, seed: int = 0,
                 device="cpu", progress: bool = True, min_steps: int = 1000) -> dict:
    """Train the probe on `train`, evaluate on `val`: {"top1", "top5"} in percent, with the lr,
    batch size and schedule used. warmup_epochs defaults to epochs / 9 (10 of the official 90);
    a training set smaller than batch_size is one batch. A run of fewer than min_steps optimizer
    steps is stretched to min_steps (see `probe_schedule`); "schedule" in the result says which ran.

    lr = blr * batch_size / 256 with the batch asked for, also where the set is smaller and forms
    one batch of its own size. The linear scaling rule lowers a smaller batch's lr because its
    gradient is noisier; a batch that holds the whole set has no sampling noise at all. And a LARS
    step moves each matrix by lr x 0.001 of its norm whatever the gradient's size, so scaling the
    lr by a 36-feature batch (0.014 for the default blr, against 1.6) moved the head a hundredth as
    far in the stretched run and left it at chance on sets a nearest-mean rule classifies
    perfectly."""
    num_classes = labelled_pair(train, val)
    warmup = epochs / 9 if warmup_epochs is None else warmup_epochs
    if epochs < 1 or not 0 <= warmup < epochs:
        raise ValueError(f"need epochs >= 1 and 0 <= warmup_epochs < epochs, got {epochs}, {warmup}")
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {min_steps}")
    batch = min(batch_size, len(train.features))
    if batch < 2:  # BatchNorm needs two rows to normalise
        raise ValueError(f"the linear probe needs batches of at least 2 features, got {batch}")
    lr = blr * batch_size / 256
    run_epochs, warmup, steps = probe_schedule(len(train.features), batch, epochs, warmup, min_steps)
    generator = torch.Generator().manual_seed(seed)
    head = nn.Sequential(nn.BatchNorm1d(train.dim, affine=False, eps=1e-6), nn.Linear(train.dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01, generator=generator)
    nn.init.zeros_(head[1].bias)
    head.to(device)
    x, y = torch.from_numpy(train.features).float().to(device), torch.from_numpy(train.labels).to(device)
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=0.0, momentum=0.9)
    bar = tqdm(range(run_epochs), desc="linear probe", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(epoch + step / steps, lr, 0.0, warmup, run_epochs)
            idx = order[step * batch:(step + 1) * batch]
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)  # drawn at tqdm's own pace
    head.eval()
    with torch.no_grad():
        logits = head(torch.from_numpy(val.features).float().to(device))
    labels = torch.from_numpy(val.labels).to(device)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "lr": lr, "batch_size": batch, "epochs": run_epochs, "warmup_epochs": warmup, "steps": run_epochs * steps,
            "schedule": "official" if run_epochs == epochs else
            f"stretched: the {epochs} epochs asked for are {epochs * steps} steps, fewer than {min_steps}",
            "train": len(x), "val": len(labels), "classes": num_classes}
