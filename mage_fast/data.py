"""Image folders and the two MAGE image transforms, without torchvision.

MAGE takes RGB in [0, 1] with no mean/std normalisation, so both transforms end with a plain
uint8 -> float division. The crop and resize arithmetic follows torchvision (which the official
code uses), and the training transform draws its random numbers from torch in torchvision's
order, so a seeded run crops the same boxes torchvision would.
"""
import copy
import hashlib
import logging
import math
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def shard(n: int, rank: int, world_size: int) -> range:
    """The items of process `rank` of `world_size`: rank, rank + world_size, ... (no padding,
    so every item belongs to exactly one process)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return range(rank, n, world_size)


def files_sha1(files: List[str]) -> str:
    """A fingerprint of a file list (names and order), e.g. ImageFolder.files."""
    return hashlib.sha1("\n".join(files).encode()).hexdigest()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_under(folder: str) -> List[str]:
    """Image paths below `folder`, at any depth, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames if _is_image(f)]
    return sorted(found)


# What PIL raises for a file it cannot read: not an image, a broken header, a decompression bomb.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
SHOWN_UNREADABLE = 3  # files a refusal names; the count covers the rest


def unreadable_images(paths: List[str]) -> List[Tuple[str, str]]:
    """(path, why) of each file whose header PIL cannot read. Image.open reads the header only
    (format, size, mode), a few KB, not the pixels: a file whose header is sound and whose
    pixel data is cut short passes, and is refused where it is decoded."""
    bad = []
    for path in paths:
        try:
            with Image.open(path):
                pass
        except Image.UnidentifiedImageError:
            bad.append((path, "not an image PIL can read"))
        except UNREADABLE as e:
            bad.append((path, (str(e).splitlines() or [type(e).__name__])[0]))
    return bad


class ImageFolder(torch.utils.data.Dataset):
    """Images under `root`, as (image, label) pairs.

    With class subfolders (root/cat/x.jpg, root/dog/y.png, any depth below each) the label is
    the subfolder's index in sorted order and `classes` holds the names; with images directly in
    `root` and no subfolders, every label is -1 and `classes` is empty. `files` holds the paths
    relative to root ('/'-separated), in dataset order.

    Every file's header is read when the folder is built (`unreadable_images`), so that a file
    that is not an image stops a run before it starts (a ValueError naming the first few and the
    count) rather than at the step that reads it; skip_unreadable=True leaves them out instead,
    and `skipped` lists them (relative paths).
    """

    def __init__(self, root: str, transform=None, skip_unreadable: bool = False):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root, self.transform = root, transform
        entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
        self.classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
        top_level = [os.path.join(root, e) for e in entries if _is_image(e) and e not in self.classes]
        if self.classes and top_level:
            raise ValueError(f"{root} mixes images at its top level ({len(top_level)}, e.g. "
                             f"{os.path.basename(top_level[0])}) with class subfolders: use one layout")
        if self.classes:
            per_class = [_images_under(os.path.join(root, c)) for c in self.classes]
            empty = [c for c, paths in zip(self.classes, per_class) if not paths]
            if empty:
                raise ValueError(f"class folders without images in {root}: {', '.join(empty)}")
            paths = [p for paths in per_class for p in paths]
            self.labels = [i for i, paths in enumerate(per_class) for _ in paths]
        else:
            paths, self.labels = top_level, [-1] * len(top_level)
        if not paths:
            raise ValueError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        bad = unreadable_images(paths)
        if bad and not skip_unreadable:
            shown = "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in bad[:SHOWN_UNREADABLE])
            more = f" and {len(bad) - SHOWN_UNREADABLE} more" if len(bad) > SHOWN_UNREADABLE else ""
            raise ValueError(f"{len(bad)} of the {len(paths)} images in {root} cannot be read: {shown}{more}; "
                             "remove them, or skip them (--skip-unreadable)")
        if len(bad) == len(paths):
            raise ValueError(f"none of the {len(paths)} images in {root} can be read")
        unreadable = {p for p, _ in bad}
        self.labels = [label for p, label in zip(paths, self.labels) if p not in unreadable]
        self.files = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths if p not in unreadable]
        self.skipped = [os.path.relpath(p, root).replace(os.sep, "/") for p, _ in bad]
        if bad:
            log.warning("skipped %d of the %d images in %s that cannot be read (first: %s)", len(bad), len(paths),
                        root, self.skipped[0])

    def __len__(self):
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        path = os.path.join(self.root, self.files[index])
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as e:
            raise ValueError(f"cannot decode {path}: {e}") from None

    def __getitem__(self, index: int):
        img = self.load(index)
        return (self.transform(img) if self.transform else img), self.labels[index]

    def shard(self, rank: int, world_size: int) -> "ImageFolder":
        """The part of this dataset that process `rank` of `world_size` reads (see `shard`)."""
        part = copy.copy(self)
        keep = shard(len(self), rank, world_size)
        part.files = [self.files[i] for i in keep]
        part.labels = [self.labels[i] for i in keep]
        return part


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def resize_shorter(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Scale so the shorter side is `size`; the longer side is truncated as torchvision does."""
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    return img.crop((left, top, left + size, top + size))


def _check_interpolation(interpolation: str):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")


class EvalTransform:
    """Resize the shorter side to `resize`, center-crop `size`, to [0, 1] CHW. The defaults are
    the FID preprocessing (docs/mage.md#evaluation-and-published-numbers); the official linear
    probe resizes to 292 instead."""

    def __init__(self, size: int = 256, resize: int = 256, interpolation: str = "bicubic"):
        if resize < size:
            raise ValueError(f"resize ({resize}) must be >= the crop size ({size})")
        _check_interpolation(interpolation)
        self.size, self.resize, self.interpolation = size, resize, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(center_crop(resize_shorter(img, self.resize, self.interpolation), self.size))


class TrainTransform:
    """RandomResizedCrop(size, scale, ratio) then a horizontal flip with probability 1/2, to
    [0, 1] CHW: the pretraining augmentation (bilinear, as torchvision's default there;
    fine-tuning resizes bicubic).

    Random numbers come from `generator` when given, else from torch's global RNG, which a
    DataLoader seeds differently in each worker (a generator stored here would be copied into
    every worker and repeat the same crops)."""

    def __init__(self, size: int = 256, scale: Tuple[float, float] = (0.2, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bilinear"):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        _check_interpolation(interpolation)
        self.size, self.scale, self.ratio, self.interpolation = size, scale, ratio, interpolation

    def params(self, width: int, height: int, generator: Optional[torch.Generator] = None):
        """((left, top, w, h), flip) for an image of this size: torchvision's algorithm (ten
        tries at a random area and log-uniform aspect ratio, then a central crop with the ratio
        clamped), then the flip draw."""
        def uniform(lo, hi):
            return torch.empty(1).uniform_(lo, hi, generator=generator).item()

        box = None
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = width * height * uniform(*self.scale)
            aspect = math.exp(uniform(*log_ratio))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                box = (left, top, w, h)
                break
        if box is None:
            w, h = width, height
            if width / height < self.ratio[0]:
                h = round(w / self.ratio[0])
            elif width / height > self.ratio[1]:
                w = round(h * self.ratio[1])
            box = ((width - w) // 2, (height - h) // 2, w, h)
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        return box, flip

    def crop_and_flip(self, img: Image.Image, generator: Optional[torch.Generator] = None) -> Image.Image:
        """The transform before the tensor conversion (where fine-tuning adds RandAugment)."""
        (left, top, w, h), flip = self.params(*img.size, generator=generator)
        # Crop, then resize: PIL's resize(box=...) would also read pixels outside the box.
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size),
                                                              INTERPOLATIONS[self.interpolation])
        return img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img

    def __call__(self, img: Image.Image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return to_tensor(self.crop_and_flip(img, generator))
