"""Input checks shared by the reference and the fast modules: bad input raises a ValueError
that says what was expected."""
from typing import Sequence, Union

import torch

from .configs import CODEBOOK_SIZE, IMAGE_SIZE, MASK_ID, NUM_TOKENS

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_TYPES = (torch.int32, torch.int64)
# The names the command line gives the precisions it offers.
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, d in PRECISIONS.items() if d == dtype)


def default_precision(device_type: str) -> str:
    """bf16 on a GPU (tensor cores); fp32 on CPU, where bf16 only emulates."""
    return "bf16" if device_type == "cuda" else "fp32"


def describe(x) -> str:
    """What x is, for error messages."""
    return f"{x.dtype} {list(x.shape)} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__


def values_checkable(t: torch.Tensor) -> bool:
    """Whether checking t's values is free: on CPU in eager mode. On a GPU it is a host sync,
    which a training step avoids, and under torch.compile a data-dependent branch."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_tensor(name, t, dtypes, shape, device=None):
    """t is a tensor of one of dtypes whose shape matches `shape` (None matches any size)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        raise ValueError(f"{name} must be a tensor of {', '.join(map(str, dtypes))}, got {describe(t)}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)) or t.numel() == 0:
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{want}] and be non-empty, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} like the other inputs, got {t.device}")


def check_images(images, values: bool = True):
    """values=False skips the range check, whose host sync a GPU training step avoids."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], got {describe(images)}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE) or images.shape[0] == 0:
        raise ValueError(f"images must have shape [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] with B >= 1, got {list(images.shape)}")
    if values and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError("images must lie in [0, 1] (no mean/std normalisation), and contain no NaN")


def check_ids(ids, allow_mask: bool):
    """Token ids [B, 256]: codebook ids in [0, 1024), plus MASK_ID (2024) where allowed."""
    what = f"codebook ids in [0, {CODEBOOK_SIZE})" + (f" or the mask id {MASK_ID}" if allow_mask else "")
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor [B, {NUM_TOKENS}] of {what}, got {describe(ids)}")
    if ids.dim() != 2 or ids.shape[1] != NUM_TOKENS or ids.shape[0] == 0:
        raise ValueError(f"ids must have shape [B, {NUM_TOKENS}] with B >= 1, got {list(ids.shape)}")
    valid = (ids >= 0) & (ids < CODEBOOK_SIZE)
    if allow_mask:
        valid |= ids == MASK_ID
    if not bool(valid.all()):
        raise ValueError(f"ids must be {what}")


def check_seeds(seeds: Union[Sequence[int], torch.Tensor]) -> torch.Tensor:
    """One int64 seed per image -> int64 tensor [B]."""
    try:
        t = torch.as_tensor(seeds)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"seeds must be a sequence of ints or an int tensor: {e}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"seeds must be a non-empty 1-D integer sequence, got {describe(t)}")
    return t.to(torch.int64)


def check_noise(noise, batch: int, values: bool = True):
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a float tensor [{batch}, {NUM_TOKENS}], got {describe(noise)}")
    if tuple(noise.shape) != (batch, NUM_TOKENS):
        raise ValueError(f"noise must have shape [{batch}, {NUM_TOKENS}], got {list(noise.shape)}")
    if values and not bool(((noise >= 0) & (noise < 1)).all()):
        raise ValueError("noise must lie in [0, 1)")
