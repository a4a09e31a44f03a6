"""What both compat modules share: the official constructors' norm_layer, the official order of
submodules, and the tokenizer file their vqgan_ckpt_path names."""
from typing import Iterable, Optional, Sequence

from torch import nn

from ..checkpoint import load_checkpoint


def layer_norm_eps(norm_layer) -> float:
    """The eps of the LayerNorm that norm_layer(dim) builds: nn.LayerNorm, or a functools.partial
    of it, the only norms the official models are built with. Anything else is a ValueError
    (its parameters would not be the official keys)."""
    dim = 8
    probe = norm_layer(dim)
    if type(probe) is not nn.LayerNorm or probe.weight is None or probe.bias is None \
            or tuple(probe.normalized_shape) != (dim,):
        raise ValueError("norm_layer must build an affine nn.LayerNorm over the last dimension, as the "
                         f"official models do (e.g. functools.partial(nn.LayerNorm, eps=1e-6)); got {probe!r}")
    return probe.eps


def set_layer_norm_eps(modules: Iterable[nn.Module], eps: float):
    """Every LayerNorm inside `modules` (those the official model builds with norm_layer) gets eps."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = eps


def order_submodules(module: nn.Module, names: Sequence[str]):
    """Register module's submodules in the order `names`, the official class's. It sets the order
    of named_parameters() and state_dict(), and the official scripts' optimizers list their
    parameters in that order: a saved optimizer state is matched to parameters by position."""
    if set(names) != set(module._modules):
        raise AssertionError(f"submodules {sorted(module._modules)} are not {sorted(names)}")
    module._modules = type(module._modules)((n, module._modules[n]) for n in names)


def load_tokenizer(model: nn.Module, vqgan_ckpt_path: Optional[str]):
    """The official vqgan_ckpt_path: the tokenizer's weights from that file, every key of it
    (VQModel.init_from_ckpt loads strictly too); None leaves the random tokenizer."""
    if vqgan_ckpt_path is not None:
        load_checkpoint(model, vqgan_ckpt=vqgan_ckpt_path)


def require(ok: bool, message: str):
    """A ValueError for a constructor argument the official model takes but MAGE cannot honour."""
    if not ok:
        raise ValueError(message)
