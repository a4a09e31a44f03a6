"""`mage-fast edit`: inpainting and outpainting with MAGE.

The image is resized (shorter side 256) and center-cropped to 256x256 and tokenized; every
16x16 token cell that the mask touches (mask pixels > 127, same size as the image) is marked
unknown and decoded iteratively (the schedule counted over the unknown tokens); the other
tokens are kept. For outpainting, mask the border. --paste-original puts the input's pixels
back outside the regenerated cells. The output's format is the one its extension names (.png,
.jpg, .webp...).
"""
import os

import numpy as np
import torch
from PIL import Image

from ..distributed import check_device
from ..files import atomic_write
from ..model_settings import ModelSettings
from ..validation import CHOICE_TEMPERATURE, NUM_ITER
from .common import add_device, add_model_args, config_from_args, integer, number


def register(sub):
    p = sub.add_parser("edit", help="inpaint or outpaint an image under a mask", description=__doc__)
    add_model_args(p)
    p.add_argument("--image", required=True, help="input image")
    p.add_argument("--mask", required=True, help="mask image of the same size: white (> 127) = regenerate")
    p.add_argument("--out", required=True, help="output image, in the format its extension names (e.g. .png)")
    p.add_argument("--seed", type=integer, default=0, help="seed of the decoding noise")
    p.add_argument("--num-iter", type=number(NUM_ITER), default=12, help="decoding steps (default 12)")
    p.add_argument("--temperature", type=number(CHOICE_TEMPERATURE), default=4.5,
                   help="choice temperature (default 4.5)")
    p.add_argument("--paste-original", action="store_true",
                   help="keep the input's own pixels outside the regenerated token cells")
    add_device(p)
    p.set_defaults(func=run)


def _open(path, mode):
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except OSError as e:  # missing, unreadable, or not an image
        raise ValueError(f"cannot read {path}: {e}") from None


def output_format(path: str) -> str:
    """The image format PIL writes for the extension of `path`; a ValueError where it writes none,
    or the folder is missing (checked before any work)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of --out does not exist: {folder}")
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"--out {path}: name an image format by its extension, e.g. .png or .jpg")
    return fmt


def run(args):
    from ..data import center_crop, resize_shorter, to_tensor
    from ..sampling.sampler import Sampler, pixel_mask_to_tokens
    fmt = output_format(args.out)
    image, mask = _open(args.image, "RGB"), _open(args.mask, "L")
    if image.size != mask.size:
        raise ValueError(f"the mask ({mask.size[0]}x{mask.size[1]}) must have the image's size "
                         f"({image.size[0]}x{image.size[1]})")
    pixels = to_tensor(center_crop(resize_shorter(image, 256, "bicubic"), 256)).unsqueeze(0)
    mask = np.asarray(center_crop(resize_shorter(mask, 256, "nearest"), 256)) > 127
    token_mask = pixel_mask_to_tokens(torch.from_numpy(mask).unsqueeze(0))
    if not token_mask.any():
        raise ValueError("the mask selects no pixel (white, > 127, regenerates): nothing to edit")
    device = torch.device(check_device(args.device))
    sampler = Sampler(config_from_args(ModelSettings, args).load(device), args.num_iter, args.temperature)
    _, out = sampler.edit(pixels, token_mask, [args.seed])
    out = out[0].cpu()
    if args.paste_original:
        cells = token_mask.view(16, 16).repeat_interleave(16, 0).repeat_interleave(16, 1)
        original = (pixels[0] * 255).round().to(torch.uint8).permute(1, 2, 0)
        out = torch.where(cells.unsqueeze(-1), out, original)
    with atomic_write(args.out) as f:
        Image.fromarray(out.numpy()).save(f, format=fmt)
    print(f"regenerated {int(token_mask.sum())} of 256 tokens -> {args.out}")
