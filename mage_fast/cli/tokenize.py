"""`mage-fast tokenize`: cache the token ids of K augmented views of every image of a folder,
for `mage-fast train --tokens CACHE`, whose steps then read ids instead of decoding, cropping
and tokenizing images.

View v of image i is the training crop and flip (RandomResizedCrop(256, 0.2-1), bilinear, flip
with probability 1/2) drawn from (--seed, i, v), tokenized by the frozen VQGAN. CACHE/ holds
tokens.npy (uint16 [N, K, 256], N x K x 512 bytes: ImageNet at K = 10 is about 6.6 GB) and
index.json (the files, labels, settings and the tokenizer weights' sha256, which `train` checks).
--augment simclr caches SimCLR views instead (crop 0.08-1, flip, colour jitter, grayscale, blur:
docs/mage.md#views) for `train --contrastive` (MAGE-C), which takes two different views of each
image per epoch: --views 2 or more.
--views 1 --center-crop caches an evaluation set (resize 256, center crop 256).

A killed run resumes when started again with the same arguments (finished chunks are kept in
CACHE.partial/); CACHE appears only complete. Several GPUs: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) tokenize --data DIR --out CACHE --views 10 --vqgan-ckpt CKPT
"""
import argparse
import logging
import os

from ..training.views import PRESETS
from ..validation import PRECISIONS, default_precision
from .common import SKIP_UNREADABLE_HELP, add_device, add_model_args, non_negative_int, positive_int

log = logging.getLogger(__name__)

RANDOM_TOKENIZER_WARNING = """
################################################################################
#  No --vqgan-ckpt (and no --ckpt): the TOKENIZER HAS RANDOM WEIGHTS, so the    #
#  ids it caches are meaningless. Use this only to test the pipeline; tokenize  #
#  with vqgan_jax_strongaug.ckpt (LTH14/mage).                                  #
################################################################################"""


def register(sub):
    p = sub.add_parser("tokenize", help="cache the token ids of K augmented views per image (for train --tokens)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="image folder: class subfolders or images directly inside")
    p.add_argument("--out", required=True, metavar="CACHE", help="the cache folder to write")
    p.add_argument("--skip-unreadable", action="store_true", help=SKIP_UNREADABLE_HELP)
    p.add_argument("--views", type=positive_int, metavar="K",
                   help="augmented views per image (required, but for --center-crop: 1)")
    p.add_argument("--augment", choices=sorted(PRESETS),
                   help="the views' augmentation: mage (the pretraining crop and flip, the default) or simclr "
                        "(SimCLR's, for train --contrastive; docs/mage.md#views)")
    p.add_argument("--center-crop", action="store_true",
                   help="one view per image, resized to 256 and center-cropped (for evaluation sets)")
    add_model_args(p)
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the views' crops and flips (and the weights when no checkpoint is given, as "
                        "`train --seed` does) (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per tokenizer forward, each giving its K views (default on CUDA: 256 // K, "
                        "at least 1; 4 on CPU, where each view is tokenized alone)")
    p.add_argument("--chunk-size", type=positive_int, default=1024,
                   help="images per resumable chunk (default: %(default)s)")
    p.add_argument("--precision", choices=sorted(PRECISIONS),
                   help="the tokenizer's autocast, as training from images runs it "
                        "(default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--workers", type=non_negative_int,
                   help="image-decoding processes per GPU (default: 8 on CUDA, 0 on CPU)")
    add_device(p, torchrun=True)
    p.add_argument("--overwrite", action="store_true", help="replace CACHE if it exists")
    p.set_defaults(func=run)


def _load_tokenizer(model, ckpt, vqgan_ckpt, seed) -> str:
    """Load the tokenizer weights (vqgan.*) into model; returns where they came from."""
    from ..checkpoint import load_checkpoint
    if not (ckpt or vqgan_ckpt):
        return f"random weights (--seed {seed})"
    report = load_checkpoint(model, ckpt, vqgan_ckpt, strict=False, prefixes=("vqgan.",))
    if report.missing:
        raise ValueError(f"{ckpt} lacks the tokenizer ({len(report.missing)} vqgan.* tensors, e.g. "
                         f"{report.missing[0]}): give the VQGAN checkpoint too (--vqgan-ckpt)")
    return " and ".join(f"--{name} {os.path.abspath(path)}"
                        for name, path in (("ckpt", ckpt), ("vqgan-ckpt", vqgan_ckpt)) if path)


def run(args):
    from .. import distributed
    from ..data import ImageFolder
    from ..model import build_model
    from ..training.tokenize import tokenize_folder
    if args.center_crop and args.views not in (None, 1):
        raise ValueError(f"--center-crop caches one view per image, got --views {args.views}")
    if args.center_crop and args.augment:
        raise ValueError(f"--center-crop caches one unaugmented view per image, got --augment {args.augment}")
    if not (args.center_crop or args.views):
        raise ValueError("give --views K (augmented views per image), or --center-crop")
    views = args.views or 1
    ctx = distributed.init(args.device)
    cuda = ctx.device.type == "cuda"
    folder = ImageFolder(args.data, skip_unreadable=args.skip_unreadable)
    if not ctx.is_main:  # one process reports for all
        logging.getLogger("mage_fast").setLevel(logging.WARNING)
    elif not (args.ckpt or args.vqgan_ckpt):
        log.warning(RANDOM_TOKENIZER_WARNING)
    model = build_model(args.model, args.impl, init_seed=args.seed)
    weights = _load_tokenizer(model, args.ckpt, args.vqgan_ckpt, args.seed)
    log.info("%d images x %d view(s), %d process(es) on %s; tokenizer: %s", len(folder), views,
             ctx.world_size, ctx.device, weights)
    cache = tokenize_folder(
        model, folder, args.out, views, args.seed, args.center_crop,
        batch_size=args.batch_size or (max(1, 256 // views) if cuda else 4), chunk_size=args.chunk_size,
        device=ctx.device, workers=(8 if cuda else 0) if args.workers is None else args.workers,
        precision=args.precision or default_precision(ctx.device.type),
        meta={"model": args.model, "impl": args.impl, "tokenizer": weights}, overwrite=args.overwrite,
        augment=args.augment or "mage")
    if cache is not None:
        print(f"wrote the ids of {cache.num_images} images x {cache.num_views} view(s) to {args.out}")
