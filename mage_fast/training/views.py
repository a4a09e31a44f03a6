"""The augmentations of a contrastive (MAGE-C) run's views, in torch alone (docs/mage.md#views).

A view is data.TrainTransform's RandomResizedCrop and flip, then, on the [3, 256, 256] float
tensor in [0, 1], the preset's colour operations, each as torchvision defines it: ColorJitter
(brightness, contrast, saturation and hue in a random order), RandomGrayscale and GaussianBlur,
each applied with its probability. Random numbers come from the generator a view is given, in
torchvision's order (the crop, the flip, then per operation whether it applies and its
parameters), so a view is a function of its generator's key (runs.seeds).
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from PIL import Image

from ..data import TrainTransform

# Luma weights of torchvision's rgb_to_grayscale on tensors (ITU-R 601-2).
LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class ViewPreset:
    """One view's augmentation. RandomResizedCrop(256, scale, ratio), bilinear, and a horizontal
    flip with probability 1/2; then each colour operation with its probability (0: the operation
    is absent and draws nothing): colour jitter with torchvision's ColorJitter strengths
    (brightness, contrast, saturation, hue), grayscale, and a Gaussian blur with sigma uniform in
    blur_sigma and a square kernel of blur_kernel times the side (made odd)."""
    scale: Tuple[float, float]
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    jitter: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_kernel: float = 0.1

    @property
    def colour(self) -> bool:
        return bool(self.jitter_p or self.grayscale_p or self.blur_p)


PRESETS = {
    # MAGE's pretraining crop and flip (docs/mage.md#recipe), drawn for each view on its own.
    "mage": ViewPreset(scale=(0.2, 1.0)),
    # SimCLR's (Chen et al. 2020, appendix A): colour distortion of strength 1, blur at half the views.
    "simclr": ViewPreset(scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5),
}


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] -> [..., 1, H, W]: the luma of each pixel."""
    r, g, b = x.unbind(-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other, factor: float) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1]: factor 1 is x, 0 is other, above 1
    moves away from other."""
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Towards black (factor < 1) or brighter (> 1)."""
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Towards the image's mean luma (factor < 1) or away from it (> 1)."""
    return _blend(x, grayscale(x).mean(), factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Towards each pixel's luma (factor < 1: 0 is grayscale) or away from it (> 1)."""
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Each pixel's hue (HSV, in turns) moved by `shift` in [-0.5, 0.5], its saturation and value
    kept. The inverse conversion is HSV's closed form: channel n (R 5, G 3, B 1) is
    v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + hue in sixths) mod 6, c the chroma."""
    v, low = x.amax(-3), x.amin(-3)
    c = v - low
    r, g, b = x.unbind(-3)
    d = torch.where(c > 0, c, torch.ones_like(c))  # a gray pixel (c = 0) comes back as v whatever its hue
    sixths = torch.where(v == r, (g - b) / d, torch.where(v == g, 2 + (b - r) / d, 4 + (r - g) / d))
    sixths = (sixths + 6 * shift) % 6
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1) + sixths.unsqueeze(-3)) % 6
    return v.unsqueeze(-3) - c.unsqueeze(-3) * torch.minimum(k, 4 - k).clamp(0, 1)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """The 1-D Gaussian kernel [size] (odd size) of standard deviation sigma, over the offsets
    -(size-1)/2 .. (size-1)/2, normalised to sum 1; float64."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """[C, H, W] in [0, 1] convolved with the size x size Gaussian (the outer product of
    gaussian_kernel, applied as its two 1-D passes), the image extended by reflection so it
    keeps its shape; in [0, 1]."""
    k = gaussian_kernel(size, sigma).to(x.dtype)
    channels, pad = x.shape[-3], size // 2
    y = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    y = F.conv2d(y, k.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)[0]
    # The float32 weights sum to 1 only within round-off: a white region can come out a few ulp
    # above 1, which the tokenizer refuses. A weighted mean of [0, 1] stays in [0, 1].
    return y.clamp_(0, 1)


JITTERS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


@dataclass(frozen=True)
class ColourDraw:
    """The random part of a view after its crop and flip: the jitter's order (indices into
    JITTERS) and factors (None: no jitter), whether it turns gray, the blur's sigma (None: no blur)."""
    jitter: Optional[Tuple[Tuple[int, ...], Tuple[float, ...]]]
    gray: bool
    sigma: Optional[float]


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return torch.empty(1).uniform_(lo, hi, generator=generator).item()


def _happens(p: float, generator: Optional[torch.Generator]) -> bool:
    return bool(torch.rand(1, generator=generator) < p)


class ViewTransform:
    """A view of a PIL image under a preset (a name of PRESETS, or a ViewPreset): [3, size, size]
    float32 in [0, 1]. Random numbers come from `generator` (else torch's global RNG)."""

    def __init__(self, preset: Union[str, ViewPreset] = "simclr", size: int = 256):
        if isinstance(preset, str) and preset not in PRESETS:
            raise ValueError(f"views must be one of {sorted(PRESETS)}, got {preset!r}")
        self.preset = PRESETS[preset] if isinstance(preset, str) else preset
        self.crop = TrainTransform(size, self.preset.scale, self.preset.ratio)
        self.blur_size = 2 * (int(size * self.preset.blur_kernel) // 2) + 1  # SimCLR's: radius side//20, odd

    @property
    def jitter_ranges(self):
        """The factors' ranges: [max(0, 1 - s), 1 + s] for brightness, contrast and saturation,
        [-s, s] for hue."""
        *scaled, hue = self.preset.jitter
        return [(max(0.0, 1 - s), 1 + s) for s in scaled] + [(-hue, hue)]

    def draw(self, generator: Optional[torch.Generator] = None) -> ColourDraw:
        """The colour operations' draws, in torchvision's order: per operation whether it
        applies, then its parameters (the jitter: a permutation of the four, then the four
        factors)."""
        p, jitter = self.preset, None
        if p.jitter_p and _happens(p.jitter_p, generator):
            order = tuple(torch.randperm(len(JITTERS), generator=generator).tolist())
            jitter = order, tuple(_uniform(lo, hi, generator) for lo, hi in self.jitter_ranges)
        gray = bool(p.grayscale_p) and _happens(p.grayscale_p, generator)
        sigma = _uniform(*p.blur_sigma, generator) if p.blur_p and _happens(p.blur_p, generator) else None
        return ColourDraw(jitter, gray, sigma)

    def colour(self, x: torch.Tensor, draw: ColourDraw) -> torch.Tensor:
        if draw.jitter:
            order, factors = draw.jitter
            for i in order:
                x = JITTERS[i](x, factors[i])
        if draw.gray:
            x = grayscale(x).expand_as(x).contiguous()
        if draw.sigma is not None:
            x = gaussian_blur(x, self.blur_size, draw.sigma)
        return x

    def __call__(self, img: Image.Image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = self.crop(img, generator)
        return self.colour(x, self.draw(generator))

    @property
    def settings(self) -> dict:
        """What a token cache's index records of its views. A crop-and-flip preset records what
        caches made before presets record, so those caches keep matching their checkpoints."""
        c, p = self.crop, self.preset
        crop = {"kind": "random_resized_crop_flip", "size": c.size, "scale": list(c.scale), "ratio": list(c.ratio),
                "interpolation": c.interpolation}
        if not p.colour:
            return crop
        return {**crop, "colour": {"jitter": list(p.jitter), "jitter_p": p.jitter_p, "grayscale_p": p.grayscale_p,
                                   "blur_p": p.blur_p, "blur_sigma": list(p.blur_sigma), "blur_size": self.blur_size}}
