"""`mage-fast features`: encode an image folder with a MAGE encoder and cache the features.

Writes one feature vector per image with its label (the index of its class subfolder in sorted
order; -1 for a folder of images without subfolders), its file name and the class names, to a
.npz or .pt file that `mage-fast linprobe` and `mage-fast fewshot` read. Only the encoder and
the tokenizer are read from the checkpoint, so MAGE-C checkpoints without a decoder work too.
A killed run resumes where it stopped when started again with the same arguments (finished
chunks are kept in FILE.partial/). Several GPUs: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) features --data DIR --out FILE --ckpt CKPT
"""
import argparse
import logging
import os

from ..model_settings import RANDOM_WEIGHTS_WARNING
from .common import SKIP_UNREADABLE_HELP, add_device, add_model_args, non_negative_int, positive_int

log = logging.getLogger(__name__)


def register(sub):
    p = sub.add_parser("features", help="extract and cache MAGE features of an image folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="image folder: one subfolder per class, or images directly inside (no labels)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, .npz or .pt")
    p.add_argument("--skip-unreadable", action="store_true", help=SKIP_UNREADABLE_HELP)
    add_model_args(p)
    p.add_argument("--pool", choices=("avg", "cls"), default="avg",
                   help="avg: mean of the 256 patch tokens, then LayerNorm (the official linear "
                        "probe's --global_pool); cls: the class token after the final norm")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per forward (default: 64 on CUDA, 8 on CPU)")
    p.add_argument("--chunk-size", type=positive_int, default=1024,
                   help="images per resumable chunk (default: %(default)s)")
    p.add_argument("--resize", type=positive_int, default=292,
                   help="shorter side before the 256x256 center crop; 292 is the official linear probe's "
                        "(default: %(default)s)")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="image-decoding worker processes (default: 8 on CUDA, 0 on CPU)")
    add_device(p, torchrun=True)
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--trusted", action="store_true",
                   help="unpickle checkpoints fully (only for files you trust): for checkpoints that "
                        "hold objects beyond tensors")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..data import EvalTransform, ImageFolder
    from ..recognition import build_encoder, extract_features
    from ..recognition.store import check_format
    check_format(args.out)
    if os.path.exists(args.out) and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    ctx = distributed.init(args.device)
    cuda = ctx.device.type == "cuda"
    dataset = ImageFolder(args.data, EvalTransform(resize=args.resize), skip_unreadable=args.skip_unreadable)
    if not ctx.is_main:  # one process reports for all
        logging.getLogger("mage_fast").setLevel(logging.WARNING)
    else:
        log.info("%d images, %s, %d process(es) on %s", len(dataset),
                 f"{len(dataset.classes)} classes" if dataset.classes else "no classes",
                 ctx.world_size, ctx.device)
        if not args.ckpt:
            log.warning(RANDOM_WEIGHTS_WARNING)
    model = build_encoder(args.model, args.ckpt, args.vqgan_ckpt, args.pool, args.trusted, args.impl)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"model": args.model, "resize": args.resize,
            "ckpt": args.ckpt and os.path.abspath(args.ckpt),
            "vqgan_ckpt": args.vqgan_ckpt and os.path.abspath(args.vqgan_ckpt)}
    fs = extract_features(model, dataset, args.out, args.pool,
                          batch_size=args.batch_size or (64 if cuda else 8), chunk_size=args.chunk_size,
                          device=ctx.device, workers=(8 if cuda else 0) if args.workers is None else args.workers,
                          meta=meta)
    if fs is not None:
        print(f"wrote {len(fs.features)} features of dim {fs.dim} to {args.out}")
