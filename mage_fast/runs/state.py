"""Run checkpoints (of `mage-fast train` and `finetune`): the official format ({'model',
'optimizer', 'epoch', 'scaler', 'args'}, `model` the unwrapped module's full state_dict, so it
loads strictly into the official model and ours) plus `train_state`, what an exact resume needs
beyond it.

No RNG state is saved: every draw of a step is a function of (seed, counters) (runs.seeds),
so the global step restores them all."""
import argparse
import os
import shutil
from typing import Dict, Optional

import torch
from torch import nn

from ..checkpoint import read_file
from ..files import atomic_write
from .order import TrainOrder

LAST = "checkpoint-last.pth"


def epoch_path(out: str, epoch: int) -> str:
    return os.path.join(out, f"checkpoint-{epoch}.pth")


def save_checkpoint(path: str, model, optimizer, scaler, args: argparse.Namespace, order: TrainOrder, step: int,
                    token_cache: Optional[dict] = None, extra: Optional[dict] = None,
                    kind: Optional[Dict[str, Optional[dict]]] = None, modules: Optional[Dict[str, nn.Module]] = None):
    """Write atomically: a kill midway leaves the previous file. `epoch` is, as in the official
    files, the last completed epoch (-1 before the first ends): the official resume restarts
    the epoch in progress, ours continues at `train_state['step']`. `args` is the config as an
    argparse.Namespace of plain values, the type of the official files' `args`, which the
    official loader and our read_file accept. Without fp16 loss scaling
    `scaler` is the state of a fresh scaler: the official resume loads it into an enabled one,
    which refuses a disabled one's {}, and a disabled one (ours without fp16) ignores it.
    `token_cache`: the settings of the token cache the run reads (None: an image folder), which
    a resume must match; `extra` (plain values) joins the train_state as it is; `kind`: the
    settings of what the run trains beyond MAGE (class_conditional, contrastive: None where it
    does not), which a resume must match too; `modules`: trained modules that are no part of
    `model` (MAGE-C's projection head), each's state_dict an entry of its own beside `model`."""
    spe = order.steps_per_epoch
    if not scaler.is_enabled():
        scaler = torch.amp.GradScaler("cpu")  # "cpu": no CUDA needed; the state is plain numbers
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": step // spe - 1,
            "scaler": scaler.state_dict(),
            "args": args,
            "train_state": {"step": step, "step_in_epoch": step % spe, **order.settings,
                            **({"token_cache": token_cache} if token_cache else {}),
                            **{k: v for k, v in (kind or {}).items() if v is not None},
                            **(extra or {})},
            **{name: module.state_dict() for name, module in (modules or {}).items()}}
    with atomic_write(path) as f:
        torch.save(ckpt, f)


def keep_copy(src: str, dst: str):
    """dst becomes a copy of src that later rewrites of src (new files, os.replace) leave
    alone: a hard link where the filesystem has them."""
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def resume_path(resume: str, out: str) -> Optional[str]:
    """--resume auto: OUT/checkpoint-last.pth if there is one; none: no resume; else a file."""
    if resume == "none":
        return None
    if resume == "auto":
        last = os.path.join(out, LAST)
        return last if os.path.exists(last) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return resume


def resume_file(resume: str, out: str, ctx) -> Optional[str]:
    """resume_path, the same on every rank: on several nodes OUT must be shared."""
    path = resume_path(resume, out)
    found = int(path is not None)
    if ctx.min_int(found) != -ctx.min_int(-found):
        raise ValueError(f"only some ranks see {os.path.join(out, LAST)}: put --out on a shared filesystem")
    return path


def restore(path: str, model, optimizer, scaler, order: TrainOrder, token_cache: Optional[dict] = None,
            kind: Optional[Dict[str, Optional[dict]]] = None, modules: Optional[Dict[str, nn.Module]] = None) -> dict:
    """Load a checkpoint of `mage-fast train` or `finetune` into the run (`modules` too, as
    save_checkpoint took them); returns its train_state: the step to continue at and any
    `extra`. The data order and source (`token_cache`) and the `kind` settings must be those
    the checkpoint was made with (the world size may change if the global batch stays the same)."""
    ckpt = read_file(path)
    state = ckpt.get("train_state") if isinstance(ckpt, dict) else None
    if state is None:
        raise ValueError(f"{path} is not a checkpoint of `mage-fast train` or `finetune` (no train_state); "
                         "to start from its weights, pass it as --ckpt with --resume none")
    # an image folder's checkpoint has no token_cache, an unconditional one no class_conditional: None
    now = {**order.settings, "token_cache": token_cache, "class_conditional": None, "contrastive": None,
           **(kind or {})}
    diff = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
    if diff:
        raise ValueError(f"{path} was made with other data-order settings {diff} (checkpoint, now): "
                         "resume with the same seed, image folder or token cache, global batch and accumulation, "
                         "and class-conditional and contrastive settings")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit this model (another --model?): {e}") from None
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # earlier versions' groups left out the parameters freeze_unused freezes
        raise ValueError(f"{path}: its optimizer state does not fit this optimizer ({e}); it may come from an "
                         "earlier mage-fast. To start from its weights: --ckpt PATH --resume none") from None
    for name, module in (modules or {}).items():
        module.load_state_dict(ckpt[name])  # present: the kind settings, which match, say the run had it
    if ckpt["scaler"]:  # empty in files of earlier versions run without fp16: a fresh scale
        scaler.load_state_dict(ckpt["scaler"])  # ignored without fp16
    return state
