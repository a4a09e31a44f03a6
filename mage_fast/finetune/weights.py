"""Weights for the classifier: a pretraining checkpoint loaded the way the official --finetune
loads it, and fine-tuned checkpoints (official or ours) whose model they describe."""
import logging
import re
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import LoadReport, load_state, read_file, read_states
from ..configs import CONFIGS
from ..recognition.classifier import MAGEClassifier
from ..recognition.encoder import OPTIONAL_KEYS

log = logging.getLogger(__name__)
HEAD = ("head.weight", "head.bias")
HEAD_INIT_STD = 2e-5  # the official trunc_normal_(model.head.weight, std=2e-5) after loading


@dataclass
class PretrainedReport(LoadReport):
    dropped: List[str] = field(default_factory=list)       # checkpoint keys removed before loading
    interpolated: Optional[str] = None                     # how pos_embed was resampled

    def __str__(self):
        lines = [super().__str__()]
        if self.dropped:
            lines.append("removed (shape differs from the model's): " + ", ".join(self.dropped))
        if self.interpolated:
            lines.append(self.interpolated)
        return "; ".join(lines)


def resample_pos_embed(table: torch.Tensor, rows: int) -> torch.Tensor:
    """The official interpolate_pos_embed: a [1, 1 + g*g, D] table to [1, rows, D], the first
    row kept, the g x g grid resized bicubically (align_corners=False) to the new square grid."""
    old, new = int((table.shape[1] - 1) ** 0.5), int((rows - 1) ** 0.5)
    if old == new:
        return table
    grid = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False).to(table.dtype)
    return torch.cat([table[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


def load_pretrained(model: MAGEClassifier, ckpt: str, vqgan_ckpt: Optional[str] = None, trusted: bool = False,
                    seed: int = 0) -> PretrainedReport:
    """Load a pretraining checkpoint as the official main_finetune.py --finetune does: a head of
    another shape is removed, pos_embed is resampled to the model's grid, the rest loads
    non-strictly, the only missing keys allowed are the head's and fc_norm's (a ValueError
    names any other), and the head's weight is drawn afresh (trunc-normal, std 2e-5, from
    `seed`). The tokenizer file `vqgan_ckpt`, if given, wins over the checkpoint's vqgan.*."""
    state = read_states(ckpt, vqgan_ckpt, trusted)
    own = model.state_dict()
    dropped = [k for k in HEAD if k in state and state[k].shape != own[k].shape]
    for k in dropped:
        del state[k]
    interpolated = None
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        before = list(state["pos_embed"].shape)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], own["pos_embed"].shape[1])
        interpolated = f"pos_embed resampled from {before} to {list(state['pos_embed'].shape)}"
    report = load_state(model, state, strict=False)
    fresh = set(HEAD) | ({"fc_norm.weight", "fc_norm.bias"} if model.global_pool else set())
    missing = [k for k in report.missing if k not in fresh and k not in OPTIONAL_KEYS]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        hint = ("; it holds no tokenizer: give the VQGAN checkpoint too (--vqgan-ckpt)"
                if any(k.startswith("vqgan.") for k in missing) else "")
        raise ValueError(f"{ckpt} lacks {len(missing)} tensors the classifier needs: {shown}{hint}")
    with torch.no_grad():
        nn.init.trunc_normal_(model.head.weight, std=HEAD_INIT_STD, generator=torch.Generator().manual_seed(seed))
    return PretrainedReport(report.missing, report.unexpected, report.loaded, dropped=dropped,
                            interpolated=interpolated)


@dataclass(frozen=True)
class ClassifierSpec:
    """What a fine-tuned checkpoint's tensors say about its model."""
    model: str
    num_classes: int
    global_pool: bool


def describe_finetuned(state: dict, path: str = "checkpoint") -> ClassifierSpec:
    """The model of a fine-tuned state_dict: the encoder size from the embedding width and the
    number of blocks, the classes from the head, the pooling from fc_norm (global) or norm."""
    if "head.weight" not in state or "token_emb.word_embeddings.weight" not in state:
        raise ValueError(f"{path} is not a fine-tuned MAGE classifier (no head.weight or token embedding): "
                         "evaluate takes the checkpoints of `mage-fast finetune` or the official fine-tuned ones")
    width = state["token_emb.word_embeddings.weight"].shape[1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    names = [n for n, c in CONFIGS.items() if (c.embed_dim, c.depth) == (width, depth)]
    if not names:
        raise ValueError(f"{path}: no known model has width {width} and {depth} blocks "
                         f"(known: {', '.join(sorted(CONFIGS))})")
    if "fc_norm.weight" not in state and "norm.weight" not in state:
        raise ValueError(f"{path} has neither fc_norm (global pool) nor norm (class token): not a classifier")
    return ClassifierSpec(names[0], int(state["head.weight"].shape[0]), "fc_norm.weight" in state)


def read_finetuned(path: str, trusted: bool = False):
    """(state_dict, its ClassifierSpec, the class names the run recorded or None)."""
    ckpt = read_file(path, trusted)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    classes = getattr(ckpt.get("args"), "classes", None)
    return state, describe_finetuned(state, path), classes
