"""`mage-fast train`: pretrain MAGE on an image folder with the official recipe (LTH14/mage):
AdamW (0.9, 0.95), weight decay 0.05 (none on biases and 1-D parameters), lr = blr * effective
batch / 256 with a linear warm-up then a half-cycle cosine per iteration, gradient clipping,
mixed precision, RandomResizedCrop(256, 0.2-1) + flip. The tokenizer stays frozen.

OUT/checkpoint-last.pth is rewritten atomically every --save-every steps, at each epoch end
and at the stop; OUT/checkpoint-<epoch>.pth is kept every --keep-every epochs. Both are in the
official format. A run started again with the same OUT continues at the exact step it stopped
(--resume auto). Several GPUs or nodes: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) train --data DIR --out OUT --vqgan-ckpt CKPT
"""
import argparse
import logging

from ..validation import PRECISIONS, default_precision
from .common import add_model_args

CHECKS = (  # (argument, valid, requirement)
    ("batch_size", lambda v: v >= 1, ">= 1"), ("accum_iter", lambda v: v >= 1, ">= 1"),
    ("epochs", lambda v: v >= 1, ">= 1"), ("blr", lambda v: v > 0, "> 0"),
    ("lr", lambda v: v is None or v > 0, "> 0"), ("min_lr", lambda v: v >= 0, ">= 0"),
    ("weight_decay", lambda v: v >= 0, ">= 0"), ("clip_grad", lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"), ("seed", lambda v: v >= 0, ">= 0"),
    ("workers", lambda v: v is None or v >= 0, ">= 0"), ("save_every", lambda v: v >= 0, ">= 0"),
    ("keep_every", lambda v: v >= 0, ">= 0"), ("max_steps", lambda v: v is None or v >= 1, ">= 1"),
    ("log_every", lambda v: v >= 1, ">= 1"),
)


def register(sub):
    p = sub.add_parser("train", help="pretrain MAGE on an image folder (official recipe; resumable; torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="image folder: class subfolders or images directly inside (labels are not used)")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoints and log.jsonl go here")
    add_model_args(p)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout probability (default: the official %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images per GPU per forward (default: %(default)s)")
    p.add_argument("--accum-iter", type=int, default=1,
                   help="forwards accumulated per optimizer step (default: %(default)s)")
    p.add_argument("--blr", type=float, default=1.5e-4,
                   help="base lr: lr = blr * batch-size * world size * accum-iter / 256 (default: %(default)s)")
    p.add_argument("--lr", type=float, help="absolute peak lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=0.0, help="lr at the end of the cosine (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1600, help="length of the schedule (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=40, help="linear lr warm-up (default: %(default)s)")
    p.add_argument("--clip-grad", type=float, default=3.0,
                   help="gradient-norm clipping, 0 for none (default: %(default)s)")
    p.add_argument("--precision", choices=sorted(PRECISIONS),
                   help="autocast dtype; fp16 adds loss scaling (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the initial weights, data order, crops, masks and dropout (default: %(default)s)")
    p.add_argument("--workers", type=int, help="image-decoding processes per GPU (default: 10 on CUDA, 0 on CPU)")
    p.add_argument("--resume", default="auto", metavar="auto|PATH|none",
                   help="auto: continue from OUT/checkpoint-last.pth if there is one (default); "
                        "PATH: from that checkpoint of mage-fast train; none: start over")
    p.add_argument("--save-every", type=int, default=1000,
                   help="also write checkpoint-last.pth every N steps, 0 for epoch ends only (default: %(default)s)")
    p.add_argument("--keep-every", type=int, default=40,
                   help="keep checkpoint-<epoch>.pth every E epochs and at the last, as the official "
                        "runs; 0: the last only (default: %(default)s)")
    p.add_argument("--max-steps", type=int, help="stop (and save) at this global step, e.g. for smoke runs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--log-every", type=int, default=20, help="log the loss every N steps (default: %(default)s)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available; under torchrun each "
                                    "process takes the GPU of its local rank)")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..training import train
    bad = [f"--{name.replace('_', '-')} must be {need}, got {getattr(args, name)}"
           for name, ok, need in CHECKS if not ok(getattr(args, name))]
    if not 0 <= args.warmup_epochs <= args.epochs:
        bad.append(f"--warmup-epochs must be in [0, --epochs], got {args.warmup_epochs}")
    if bad:
        raise SystemExit("mage-fast train: " + "; ".join(bad))
    try:
        ctx = distributed.init(args.device)
        if not ctx.is_main:  # one process reports for all
            logging.getLogger("mage_fast").setLevel(logging.WARNING)
        cuda = ctx.device.type == "cuda"
        args.precision = args.precision or default_precision(ctx.device.type)
        if args.workers is None:
            args.workers = 10 if cuda else 0
        train(args, ctx)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"mage-fast train: {e}") from None
    finally:
        distributed.shutdown()
