"""`mage-fast finetune`: fine-tune a pretrained MAGE encoder for image classification with the
official recipe (LTH14/mage main_finetune.py and its README command): AdamW (0.9, 0.999), weight
decay 0.05 (none on biases and 1-D parameters), lr = blr * effective batch / 256 with 5 warm-up
epochs then a per-iteration half-cycle cosine to 1e-6, layer-wise lr decay, drop path, mixup 0.8
/ cutmix 1.0 with label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, RandomResizedCrop(256,
0.2-1, bicubic) + flip. The head is the mean of the 256 image tokens through fc_norm (--cls-token:
the class token). MAGE-B: 100 epochs, layer decay 0.65, drop path 0.1; MAGE-L: 50, 0.75, 0.2.

That recipe is sized for ImageNet. A training set of fewer than --small-set images (1000) gets the
small-set recipe for each of these flags not given: a batch of at most a quarter of the set, the
published run's lr (blr x 1024 / 256), 5% of the epochs of warm-up, no mixup/cutmix/RandAugment.
The run's first line says which recipe ran.

Mixup/cutmix, RandAugment and the soft-target loss come from timm: pip install 'mage-fast[finetune]'
(without it: --mixup 0 --cutmix 0 --aa none). Labels are class-subfolder indices in sorted order;
--val must have the same subfolders.

Each epoch ends with top-1 / top-5 on --val (OUT/log.jsonl), OUT/checkpoint-best.pth when top-1
improves and OUT/checkpoint-last.pth (also every --save-every steps, and on Ctrl-C or SIGTERM at
the end of the step in progress), in the official format. A run started again with the same OUT
continues at the exact step it stopped (--resume auto). Several GPUs or nodes: start it under
torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) finetune --data train --val val --ckpt CKPT --out OUT
"""
import argparse
import dataclasses
import logging

from ..finetune.config import MODEL_DEFAULTS, NO_AUGMENT, FinetuneConfig
from ..finetune.small_set import PUBLISHED_BATCH, STEPS_PER_EPOCH, WARMUP_FRACTION
from .common import SKIP_UNREADABLE_HELP, ModelDefault, add_device, add_setting

LARGE = MODEL_DEFAULTS["mage_vit_large_patch16"]
DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}


def register(sub):
    p = sub.add_parser("finetune", help="fine-tune MAGE for classification (official recipe; resumable; torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def setting(name, help, **kwargs):
        """The flag of a FinetuneConfig field, its default named in the help but left None here:
        only the flags given reach config_for, which fills in the model's recipe (MAGE-L changes
        three defaults) and marks them fixed for the small-set recipe."""
        default = DEFAULTS.get(name)
        if name in LARGE:
            help = f"{help} (default: {default}; {LARGE[name]} for MAGE-L)"
        elif default not in (None, dataclasses.MISSING) and not isinstance(default, bool) and "default" not in help:
            help += f" (default: {default})"
        if not isinstance(default, bool):
            kwargs.setdefault("default", None)
        add_setting(p, FinetuneConfig, name, help, **kwargs)

    setting("data", "training images, one subfolder per class", metavar="DIR")
    setting("val", "validation images, the same class subfolders", metavar="DIR")
    setting("out", "checkpoints and log.jsonl go here", metavar="DIR")
    setting("skip_unreadable", SKIP_UNREADABLE_HELP)
    setting("ckpt", "pretrained MAGE checkpoint (mage-vit{b,l}-1600.pth); loaded as the official --finetune "
                    "loads it (head and fc_norm fresh, the other keys reported)", metavar="PATH")
    setting("vqgan_ckpt", "tokenizer checkpoint, if --ckpt lacks vqgan.* keys", metavar="PATH")
    setting("model", "encoder size (default: read off the checkpoint it resumes, else --ckpt; else %(default)s)",
            default=ModelDefault(DEFAULTS["model"]))
    setting("impl", "fast (fused attention and codebook search) or the pure-PyTorch reference")
    p.add_argument("--cls-token", dest="global_pool", action="store_false",
                   help="classify the class token after the final norm instead of the mean of the image tokens")
    setting("epochs", "length of the schedule")
    setting("warmup_epochs", "linear lr warm-up, at most --epochs")
    setting("batch_size", "images per GPU per forward")
    setting("accum_iter", "forwards per optimizer step")
    setting("blr", "base lr: lr = blr * batch-size * world size * accum-iter / 256")
    setting("lr", "absolute peak lr (overrides --blr)")
    setting("min_lr", "lr at the end of the cosine")
    setting("weight_decay", "AdamW weight decay")
    setting("layer_decay", "lr scale per layer towards the input")
    setting("drop_path", "stochastic depth of the last block")
    setting("clip_grad", "gradient-norm clipping, 0 for none")
    setting("smoothing", "label smoothing")
    setting("mixup", "mixup alpha, 0: off")
    setting("cutmix", "cutmix alpha, 0: off")
    setting("mixup_prob", "probability of mixing a batch")
    setting("mixup_switch_prob", "probability of cutmix instead of mixup when both are on")
    setting("aa", f"timm RandAugment policy, or {NO_AUGMENT}")
    setting("precision", "autocast dtype; fp16 adds loss scaling (default: bf16 on CUDA, fp32 on CPU)")
    setting("seed", "seeds the head, data order, augmentation, mixing and drop path")
    setting("workers", "image-decoding processes per GPU (default: 10 on CUDA, 0 on CPU)")
    setting("resume", "auto: continue from OUT/checkpoint-last.pth if there is one (default); PATH: from that "
                      "checkpoint of mage-fast finetune; none: start over", metavar="auto|PATH|none")
    setting("save_every", "also write checkpoint-last.pth every N steps, 0 for epoch ends only")
    setting("max_steps", "stop (and save) at this global step, e.g. for smoke runs")
    setting("log_every", "log the loss every N steps")
    setting("eval_batch_size", "images per forward in validation (default: --batch-size)")
    setting("trusted", "unpickle checkpoints fully (only for files you trust)")
    setting("small_set", f"a training set of fewer images gets the small-set recipe where these flags are not "
                         f"given: at least {STEPS_PER_EPOCH} steps an epoch, lr blr x {PUBLISHED_BATCH} / 256, warm-up "
                         f"{100 * WARMUP_FRACTION:g}%% of the epochs, no mixup/cutmix/RandAugment; 0: the official "
                         "recipe at any size", metavar="N")
    add_device(p, torchrun=True)
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..finetune import config_for, finetune
    settings = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(FinetuneConfig)}
    cfg = config_for(**{k: v for k, v in settings.items() if v is not None})
    ctx = distributed.init(args.device)
    if not ctx.is_main:  # one process reports for all
        logging.getLogger("mage_fast").setLevel(logging.WARNING)
    finetune(cfg, ctx)
