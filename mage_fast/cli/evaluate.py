"""`mage-fast evaluate`: top-1 and top-5 accuracy of a fine-tuned MAGE classifier on an image
folder, with the official evaluation transform (shorter side resized to 292 bicubic, center crop
256). The checkpoint may be one of `mage-fast finetune` or an official fine-tuned one; its model
size, classes and pooling are read off its tensors. Labels are class-subfolder indices in sorted
order (the ImageNet validation folder as torchvision's ImageFolder reads it).

The result goes to a JSON file: --out, by default <ckpt>-eval.json beside the checkpoint. A killed
run resumes when started again with the same arguments (finished chunks are kept in OUT.partial/).
Several GPUs: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) evaluate --ckpt CKPT --data imagenet/val
"""
import argparse
import os

from .common import add_device, non_negative_int, positive_int


def register(sub):
    p = sub.add_parser("evaluate", help="top-1 / top-5 of a fine-tuned checkpoint on an image folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, metavar="PATH", help="fine-tuned checkpoint (ours or official)")
    p.add_argument("--data", required=True, metavar="DIR", help="image folder, one subfolder per class")
    p.add_argument("--out", metavar="FILE",
                   help="result JSON (default: <ckpt without .pth>-eval.json, beside the checkpoint)")
    p.add_argument("--impl", choices=("fast", "reference"), default="fast",
                   help="fast (fused attention and codebook search) or the pure-PyTorch reference (default: fast)")
    p.add_argument("--batch-size", type=positive_int, help="images per forward (default: 64 on CUDA, 8 on CPU)")
    p.add_argument("--chunk-size", type=positive_int, default=1024,
                   help="images per resumable chunk (default: %(default)s)")
    p.add_argument("--workers", type=non_negative_int,
                   help="image-decoding worker processes (default: 8 on CUDA, 0 on CPU)")
    add_device(p, torchrun=True)
    p.add_argument("--trusted", action="store_true", help="unpickle the checkpoint fully (only for files you trust)")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..finetune import evaluate_checkpoint
    out = args.out or os.path.splitext(args.ckpt)[0] + "-eval.json"
    if not out.endswith(".json"):
        raise ValueError(f"--out is a JSON file (.json), got {out}")
    ctx = distributed.init(args.device)
    cuda = ctx.device.type == "cuda"
    result = evaluate_checkpoint(args.ckpt, args.data, out, batch_size=args.batch_size or (64 if cuda else 8),
                                 chunk_size=args.chunk_size, device=ctx.device,
                                 workers=(8 if cuda else 0) if args.workers is None else args.workers,
                                 impl=args.impl, trusted=args.trusted)
    if result is not None:
        print(f"{result['model']} on {result['images']} images of {result['classes']} classes: "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  (written to {out})")
