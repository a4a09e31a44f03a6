"""Loading official checkpoints: `mage-vit{b,l}-1600.pth` (a dict whose "model" entry holds
every key, the tokenizer included) and the tokenizer file `vqgan_jax_strongaug.ckpt`."""
import argparse
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    loaded: int = 0
    initialised: List[str] = field(default_factory=list)  # absent keys the model starts fresh (its class_keys)

    def __str__(self):
        lines = [f"loaded {self.loaded} tensors"]
        if self.initialised:
            lines.append(f"initialised ({len(self.initialised)}): " + ", ".join(self.initialised))
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        return "; ".join(lines)


def read_file(path: str, trusted: bool = False):
    """What a checkpoint file holds, on the CPU. Official MAGE checkpoints (and ours) also
    pickle their argparse arguments, which are allowed; other objects need trusted=True (a
    full unpickle: only for files you trust)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=not trusted)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint not found: {path}") from None
        except Exception as e:  # an UnpicklingError names the offending global
            if trusted:
                raise
            raise ValueError(f"{path} holds objects beyond tensors ({e}); if you trust the "
                             "file, load it with trusted=True") from None


def read_state_dict(path: str, trusted: bool = False) -> dict:
    """The tensors of a checkpoint file: its "model" or "state_dict" entry if it has one."""
    ckpt = read_file(path, trusted)
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
    bad_shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if bad_shapes:
        raise ValueError("checkpoint does not fit this model (wrong config?): " + "; ".join(bad_shapes))
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"checkpoint keys do not match the model: {report}")
    usable = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(usable, strict=False)
    if fresh:
        model.init_class_parameters()
    report.loaded = len(usable)
    return report
