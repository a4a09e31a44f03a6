"""Input checks shared by the reference and the fast modules: bad input raises a ValueError
that says what was expected."""
import math
import numbers
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import torch

from .configs import CODEBOOK_SIZE, IMAGE_SIZE, MASK_ID, NUM_TOKENS

FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_TYPES = (torch.int32, torch.int64)
# The names the command line gives the precisions it offers.
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Numbers:
    """The values a numeric setting allows: integers (kind int) or finite numbers (kind float)
    from `low` to `high`, an end excluded where it is open, plus the `words` it also takes
    (e.g. "auto"). Its str says so in words, for error messages. A rule is written once: the
    configs check their fields with it and the command line parses its flags with it
    (mage_fast.settings, mage_fast.cli.common.number)."""
    kind: type
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    words: Tuple[str, ...] = ()

    def __str__(self):
        what = "an integer" if self.kind is int else "a finite number"
        if self.high < math.inf:
            what += f" in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low > -math.inf:
            what += f" {'>' if self.low_open else '>='} {self.low}"
        return " or ".join([*map(repr, self.words), what])

    def allows(self, value) -> bool:
        if isinstance(value, str):
            return value in self.words
        # A SymInt or SymFloat where torch.compile traces an op's checks.
        kinds = (numbers.Integral, torch.SymInt) if self.kind is int else (numbers.Real, torch.SymInt, torch.SymFloat)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(-math.inf < value < math.inf and above and below)  # nan fails every comparison

    def check(self, name: str, value):
        """value, or a ValueError naming `name` and the rule."""
        if not self.allows(value):
            raise ValueError(f"{name} must be {self}, got {value!r}")
        return value


INTEGER = Numbers(int)
COUNT = Numbers(int, 1)
NON_NEGATIVE_INT = Numbers(int, 0)
NON_NEGATIVE = Numbers(float, 0)
POSITIVE = Numbers(float, 0, low_open=True)
# Iterative decoding: at least one step; the confidence noise's temperature.
NUM_ITER = COUNT
CHOICE_TEMPERATURE = NON_NEGATIVE
# Classifier-free guidance: its scale s (0: none) and how s is spread over the steps.
GUIDANCE_SCALE = NON_NEGATIVE
GUIDANCE_SCHEDULES = ("constant", "linear")


def check_decoding(num_iter: int, choice_temperature: float, where: str = ""):
    """The decoding loop's settings, as every entry point (generate, Sampler, the decoding-step
    op, the command line) takes them; `where` prefixes the message."""
    NUM_ITER.check(f"{where}num_iter", num_iter)
    CHOICE_TEMPERATURE.check(f"{where}choice_temperature", choice_temperature)


def check_guidance(scale: float, schedule: str):
    GUIDANCE_SCALE.check("guidance_scale", scale)
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"guidance_schedule must be one of {', '.join(GUIDANCE_SCHEDULES)}, got {schedule!r}")


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
        raise ValueError(f"images must have shape [B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}] with B >= 1, "
                         f"got {list(images.shape)}")
    if values and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError("images must lie in [0, 1] (no mean/std normalisation), and contain no NaN")


def check_ids(ids, allow_mask: bool, values: bool = True):
    """Token ids [B, 256]: codebook ids in [0, 1024), plus MASK_ID (2024) where allowed.
    values=False skips the range check, whose host sync a GPU training step avoids."""
    what = f"codebook ids in [0, {CODEBOOK_SIZE})" + (f" or the mask id {MASK_ID}" if allow_mask else "")
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be an integer tensor [B, {NUM_TOKENS}] of {what}, got {describe(ids)}")
    if ids.dim() != 2 or ids.shape[1] != NUM_TOKENS or ids.shape[0] == 0:
        raise ValueError(f"ids must have shape [B, {NUM_TOKENS}] with B >= 1, got {list(ids.shape)}")
    if not values:
        return
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


def check_labels(labels, batch: int, num_classes: int, values: bool = True):
    """Class labels [batch], int64, in [0, num_classes] (num_classes: no class). values=False
    skips the range check, whose host sync a GPU training step avoids."""
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be an int64 tensor [{batch}], got {describe(labels)}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"labels must have shape [{batch}] (one per image), got {list(labels.shape)}")
    if values and not bool(((labels >= 0) & (labels <= num_classes)).all()):
        raise ValueError(f"labels must lie in [0, {num_classes}] ({num_classes}: no class), got "
                         f"{labels.min().item()}..{labels.max().item()}")


def check_noise(noise, batch: int, values: bool = True):
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a float tensor [{batch}, {NUM_TOKENS}], got {describe(noise)}")
    if tuple(noise.shape) != (batch, NUM_TOKENS):
        raise ValueError(f"noise must have shape [{batch}, {NUM_TOKENS}], got {list(noise.shape)}")
    if values and not bool(((noise >= 0) & (noise < 1)).all()):
        raise ValueError("noise must lie in [0, 1)")
