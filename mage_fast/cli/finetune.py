"""`mage-fast finetune`: fine-tune a pretrained MAGE encoder for image classification with the
official recipe (LTH14/mage main_finetune.py and its README command): AdamW (0.9, 0.999), weight
decay 0.05 (none on biases and 1-D parameters), lr = blr * effective batch / 256 with 5 warm-up
epochs then a per-iteration half-cycle cosine to 1e-6, layer-wise lr decay, drop path, mixup 0.8
/ cutmix 1.0 with label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, RandomResizedCrop(256,
0.2-1, bicubic) + flip. The head is the mean of the 256 image tokens through fc_norm (--cls-token:
the class token). MAGE-B: 100 epochs, layer decay 0.65, drop path 0.1; MAGE-L: 50, 0.75, 0.2.

Mixup/cutmix, RandAugment and the soft-target loss come from timm: pip install 'mage-fast[finetune]'
(without it: --mixup 0 --cutmix 0 --aa none). Labels are class-subfolder indices in sorted order;
--val must have the same subfolders.

Each epoch ends with top-1 / top-5 on --val (OUT/log.jsonl), OUT/checkpoint-best.pth when top-1
improves and OUT/checkpoint-last.pth (also every --save-every steps), in the official format. A
run started again with the same OUT continues at the exact step it stopped (--resume auto).
Several GPUs or nodes: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) finetune --data train --val val --ckpt CKPT --out OUT
"""
import argparse
import dataclasses
import logging

from ..configs import CONFIGS
from ..validation import PRECISIONS, default_precision


def register(sub):
    from ..finetune.config import MODEL_DEFAULTS, NO_AUGMENT, FinetuneConfig
    d = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.default is not dataclasses.MISSING}
    large = MODEL_DEFAULTS["mage_vit_large_patch16"]
    p = sub.add_parser("finetune", help="fine-tune MAGE for classification (official recipe; resumable; torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def option(flag, kind, text, by_model=False):
        """--flag with the FinetuneConfig field's default; by_model: MAGE-L's differs."""
        name = flag[2:].replace("-", "_")
        if by_model:  # left None here: config_for fills in the model's
            p.add_argument(flag, type=kind, help=f"{text} (default: {d[name]}; {large[name]} for MAGE-L)")
        else:
            p.add_argument(flag, type=kind, default=d[name], help=f"{text} (default: %(default)s)")

    p.add_argument("--data", required=True, metavar="DIR", help="training images, one subfolder per class")
    p.add_argument("--val", required=True, metavar="DIR", help="validation images, the same class subfolders")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoints and log.jsonl go here")
    p.add_argument("--ckpt", metavar="PATH", help="pretrained MAGE checkpoint (mage-vit{b,l}-1600.pth); loaded as "
                   "the official --finetune loads it (head and fc_norm fresh, the other keys reported)")
    p.add_argument("--vqgan-ckpt", metavar="PATH", help="tokenizer checkpoint, if --ckpt lacks vqgan.* keys")
    p.add_argument("--model", choices=sorted(CONFIGS), default=d["model"], help="encoder size (default: %(default)s)")
    p.add_argument("--impl", choices=("fast", "reference"), default=d["impl"],
                   help="fast (fused attention and codebook search) or the pure-PyTorch reference (default: fast)")
    p.add_argument("--cls-token", dest="global_pool", action="store_false",
                   help="classify the class token after the final norm instead of the mean of the image tokens")
    option("--epochs", int, "length of the schedule", by_model=True)
    option("--warmup-epochs", float, "linear lr warm-up")
    option("--batch-size", int, "images per GPU per forward")
    option("--accum-iter", int, "forwards per optimizer step")
    option("--blr", float, "base lr: lr = blr * batch-size * world size * accum-iter / 256")
    p.add_argument("--lr", type=float, help="absolute peak lr (overrides --blr)")
    option("--min-lr", float, "lr at the end of the cosine")
    option("--weight-decay", float, "AdamW weight decay")
    option("--layer-decay", float, "lr scale per layer towards the input", by_model=True)
    option("--drop-path", float, "stochastic depth of the last block", by_model=True)
    option("--clip-grad", float, "gradient-norm clipping, 0 for none")
    option("--smoothing", float, "label smoothing")
    option("--mixup", float, "mixup alpha, 0: off")
    option("--cutmix", float, "cutmix alpha, 0: off")
    option("--mixup-prob", float, "probability of mixing a batch")
    option("--mixup-switch-prob", float, "probability of cutmix instead of mixup when both are on")
    option("--aa", str, f"timm RandAugment policy, or {NO_AUGMENT}")
    p.add_argument("--precision", choices=sorted(PRECISIONS),
                   help="autocast dtype; fp16 adds loss scaling (default: bf16 on CUDA, fp32 on CPU)")
    option("--seed", int, "seeds the head, data order, augmentation, mixing and drop path")
    p.add_argument("--workers", type=int, help="image-decoding processes per GPU (default: 10 on CUDA, 0 on CPU)")
    p.add_argument("--resume", default=d["resume"], metavar="auto|PATH|none",
                   help="auto: continue from OUT/checkpoint-last.pth if there is one (default); PATH: from that "
                        "checkpoint of mage-fast finetune; none: start over")
    option("--save-every", int, "also write checkpoint-last.pth every N steps, 0 for epoch ends only")
    p.add_argument("--max-steps", type=int, help="stop (and save) at this global step, e.g. for smoke runs")
    option("--log-every", int, "log the loss every N steps")
    p.add_argument("--eval-batch-size", type=int, help="images per forward in validation (default: --batch-size)")
    p.add_argument("--trusted", action="store_true", help="unpickle checkpoints fully (only for files you trust)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available; under torchrun each process takes "
                                    "the GPU of its local rank)")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..finetune import config_for, finetune
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "verbose", "device")}
    try:
        ctx = distributed.init(args.device)
        if not ctx.is_main:  # one process reports for all
            logging.getLogger("mage_fast").setLevel(logging.WARNING)
        settings["precision"] = args.precision or default_precision(ctx.device.type)
        if args.workers is None:
            settings["workers"] = 10 if ctx.device.type == "cuda" else 0
        cfg = config_for(**{k: v for k, v in settings.items() if v is not None})
        finetune(cfg, ctx)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as e:
        raise SystemExit(f"mage-fast finetune: {e}") from None
    finally:
        distributed.shutdown()
