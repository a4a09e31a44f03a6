"""Loading official checkpoints: `mage-vit{b,l}-1600.pth` (a dict whose "model" entry holds
every key, the tokenizer included) and the tokenizer file `vqgan_jax_strongaug.ckpt`."""
import argparse
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn

from .configs import CONFIGS

log = logging.getLogger(__name__)
SHOWN = 5  # key names a message shows; the whole list goes to the debug log (mage-fast -v)


def some(names: List[str]) -> str:
    """The first SHOWN names, and how many more."""
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    loaded: int = 0
    initialised: List[str] = field(default_factory=list)  # absent keys the model starts fresh (its class_keys)

    def __str__(self):
        lines = [f"loaded {self.loaded} tensors"]
        for what, names in (("initialised", self.initialised), ("missing", self.missing),
                            ("unexpected", self.unexpected)):
            if names:
                lines.append(f"{what} ({len(names)}): {some(names)}")
                log.debug("%s keys: %s", what, ", ".join(names))
        return "; ".join(lines)


def read_file(path: str, trusted: bool = False, mmap: bool = False):
    """What a checkpoint file holds, on the CPU. Official MAGE checkpoints (and ours) also
    pickle their argparse arguments, which are allowed; other objects need trusted=True (a
    full unpickle: only for files you trust). mmap: map the tensors' storage instead of reading it.
    A file that is no checkpoint, or a damaged one, is a ValueError saying so."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint not found: {path}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder, not a checkpoint file") from None
        except Exception as e:
            if not is_torch_file(path):  # an image, an .npz, a text file...
                raise ValueError(f"{path} is not a PyTorch checkpoint (a file of torch.save)") from None
            if trusted or not isinstance(e, pickle.UnpicklingError):
                raise ValueError(f"{path} cannot be read as a checkpoint (damaged?): "
                                 f"{str(e).splitlines()[0]}") from None
            # weights_only refused a global, which the message names
            raise ValueError(f"{path} holds objects beyond tensors ({str(e).splitlines()[0]}); if you trust "
                             "the file, load it fully: --trusted (features, evaluate, finetune), trusted=True "
                             "in Python") from None


def is_torch_file(path: str) -> bool:
    """Whether the file has torch.save's layout: a zip archive holding data.pkl, or (the legacy
    format) a pickle stream, which starts with the PROTO opcode 0x80."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def model_of(state: dict) -> Optional[str]:
    """The key of CONFIGS whose encoder a MAGE state dict (pretrained or fine-tuned) has: its
    width off the token embedding and its number of blocks; None if none fits."""
    emb = state.get("token_emb.word_embeddings.weight")
    if emb is None or emb.dim() != 2:
        return None
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    return next((name for name, c in CONFIGS.items() if (c.embed_dim, c.depth) == (emb.shape[1], depth)), None)


def model_of_file(path: str) -> Optional[str]:
    """model_of a checkpoint file's tensors, read memory-mapped (nothing is copied); None where the
    file is absent or unreadable, which loading it then reports."""
    try:
        return model_of(read_state_dict(path, mmap=True))
    except (OSError, ValueError):  # also a file of torch.save's legacy format, which cannot be mapped
        return None


def read_state_dict(path: str, trusted: bool = False, mmap: bool = False) -> dict:
    """The tensors of a checkpoint file: its "model" or "state_dict" entry if it has one."""
    ckpt = read_file(path, trusted, mmap)
    for entry in ("model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(entry), dict):
            return ckpt[entry]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(ckpt).__name__})")
    return ckpt


def load_checkpoint(model: nn.Module, ckpt: Optional[str] = None, vqgan_ckpt: Optional[str] = None,
                    strict: bool = True, trusted: bool = False,
                    prefixes: Optional[Tuple[str, ...]] = None) -> LoadReport:
    """Load an official MAGE checkpoint and/or the tokenizer checkpoint into `model`.

    The tokenizer file's keys go under `vqgan.*` and take precedence over the same keys in
    `ckpt`. With strict=True a missing or unexpected key raises a ValueError naming them
    all; either way the returned report lists them. With `prefixes`, only the model's keys
    that start with one of them are expected (and loaded); the checkpoint's others count as
    unexpected.
    """
    if ckpt is None and vqgan_ckpt is None:
        raise ValueError("give a MAGE checkpoint, a VQGAN checkpoint, or both")
    return load_states(model, read_states(ckpt, vqgan_ckpt, trusted), ckpt is not None, strict, prefixes)


def load_states(model: nn.Module, state: dict, mage: bool, strict: bool = True,
                prefixes: Optional[Tuple[str, ...]] = None) -> LoadReport:
    """load_checkpoint on the tensors read_states gave; `mage`: whether they include a MAGE
    checkpoint's (else only the tokenizer is expected)."""
    if not mage:  # a tokenizer alone: only the tokenizer is expected
        prefixes = tuple(p for p in prefixes if p.startswith("vqgan.")) if prefixes is not None else ("vqgan.",)
    return load_state(model, state, strict, prefixes)


def read_states(ckpt: Optional[str], vqgan_ckpt: Optional[str] = None, trusted: bool = False) -> dict:
    """The tensors of `ckpt` with those of the tokenizer file `vqgan_ckpt` under `vqgan.*`, which
    take precedence over the same keys in `ckpt`."""
    state = dict(read_state_dict(ckpt, trusted)) if ckpt else {}
    if vqgan_ckpt:
        state.update({f"vqgan.{k}": v for k, v in read_state_dict(vqgan_ckpt, trusted).items()})
    return state


def check_kind(state: dict, expected: dict):
    """Refuse a fine-tuned classifier (a head, no decoder) where a pretrained MAGE with its decoder
    is expected, naming the command that takes it (it would otherwise fail on a pos_embed shape)."""
    has_decoder = any(k.startswith("decoder") for k in state)
    wants_decoder = any(k.startswith("decoder") for k in expected)
    if "head.weight" in state and not has_decoder and wants_decoder:
        raise ValueError("the checkpoint is a fine-tuned classifier (a head, no decoder): `mage-fast evaluate` "
                         "takes it; this command needs a pretrained MAGE (mage-vit{b,l}-1600.pth)")


def load_state(model: nn.Module, state: dict, strict: bool = True,
               prefixes: Optional[Tuple[str, ...]] = None) -> LoadReport:
    """Load the tensors `state` into `model`, as load_checkpoint does after reading its files."""
    expected = model.state_dict()
    if prefixes is not None:
        expected = {k: v for k, v in expected.items() if k.startswith(prefixes)}
    # A class-conditional model starts from an unconditional checkpoint: its label parameters,
    # absent there, keep their fixed initial values and are reported by name.
    fresh = sorted(set(getattr(model, "class_keys", ())) & set(expected) - set(state))
    report = LoadReport(missing=sorted(set(expected) - set(state) - set(fresh)),
                        unexpected=sorted(set(state) - set(expected)), initialised=fresh)
    check_kind(state, expected)
    bad_shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if bad_shapes:
        log.debug("tensors of another shape: %s", "; ".join(bad_shapes))
        theirs, ours = model_of(state), model_of(expected)
        if theirs and ours and theirs != ours:
            raise ValueError(f"the checkpoint is a {theirs}, the model a {ours}: choose --model {theirs}")
        raise ValueError(f"checkpoint does not fit this model ({len(bad_shapes)} tensors of another shape, "
                         f"e.g. {bad_shapes[0]})")
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"checkpoint keys do not match the model: {report}")
    usable = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(usable, strict=False)
    if fresh:
        model.init_class_parameters()
    report.loaded = len(usable)
    return report
