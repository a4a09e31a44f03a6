"""Few-shot classification on cached features: k training images per class, drawn with a seed,
and a multinomial logistic regression on L2-normalised features, solved by L-BFGS. The
objective is scikit-learn's LogisticRegression(C=1/l2): summed cross-entropy plus
l2/2 * |W|^2 (bias not penalised); being strictly convex, it has one solution, found from zero
whatever the seed.
"""
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .store import FeatureSet, labelled_pair


def sample_shots(labels: torch.Tensor, shots: int, num_classes: int, generator: torch.Generator,
                 class_names: Sequence[str] = ()) -> torch.Tensor:
    """Indices of `shots` random examples of each class. One permutation per class and seed,
    so with the same generator seed the 1-shot set lies inside the 5-shot set, and so on."""
    picked = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < shots:
            name = f" ({class_names[c]})" if c < len(class_names) else ""
            raise ValueError(f"class {c}{name} has {len(members)} training examples, fewer than {shots} shots")
        picked.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picked)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1.0,
                 max_iter: int = 1000):
    """(W [D, C], b [C]) minimising sum_i CE(x_i W + b, y_i) + l2/2 |W|^2."""
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # Divided by N for conditioning: the same minimiser.
        loss = (F.cross_entropy(x @ w + b, y, reduction="sum") + 0.5 * l2 * w.pow(2).sum()) / len(x)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def few_shot(train: FeatureSet, val: FeatureSet, shots: Sequence[int] = (1, 5, 10), seeds: int = 5,
             l2: float = 1.0, device="cpu") -> dict:
    """{k: {"mean", "std", "top1": [one per seed]}} top-1 percentages on all of `val`, for
    each number of shots k, over seeds 0 .. seeds-1 (std over seeds, 0 for one seed)."""
    num_classes = labelled_pair(train, val)
    if seeds < 1 or not shots or min(shots) < 1 or l2 <= 0:
        raise ValueError(f"need seeds >= 1, shots >= 1 and l2 > 0, got {seeds}, {list(shots)}, {l2}")

    def normalised(fs):
        return F.normalize(torch.from_numpy(fs.features).float().to(device), dim=1), torch.from_numpy(fs.labels)

    (x, y), (x_val, y_val) = normalised(train), normalised(val)
    y_val = y_val.to(device)
    results = {}
    for k in shots:
        accs = []
        for seed in range(seeds):
            idx = sample_shots(y, k, num_classes, torch.Generator().manual_seed(seed), train.classes)
            w, b = fit_logistic(x[idx.to(device)], y[idx].to(device), num_classes, l2)
            accs.append(100.0 * ((x_val @ w + b).argmax(dim=1) == y_val).float().mean().item())
        results[k] = {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)) if seeds > 1 else 0.0,
                      "top1": accs}
    return results
