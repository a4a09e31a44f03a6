"""`mage-fast train`: pretrain MAGE with the official recipe (LTH14/mage) on an image folder
(--data) or on a token cache of one (--tokens, made by `mage-fast tokenize`): AdamW (0.9,
0.95), weight decay 0.05 (none on biases and 1-D parameters), lr = blr * effective batch / 256
with a linear warm-up then a half-cycle cosine per iteration, gradient clipping, mixed
precision, RandomResizedCrop(256, 0.2-1) + flip (from a cache: each epoch, one of the K crops
it holds per image). The tokenizer stays frozen.

--contrastive trains MAGE-C: each image gives two augmented views (--contrastive-views), both
go through the masked MAGE forward, and an NT-Xent loss on the encoder's pooled, projected
output pulls the two views of an image together against the rest of the global batch
(gathered across processes under torchrun). The projection head is saved apart from the MAGE
weights, so the checkpoint's `model` loads wherever a MAGE checkpoint does; --ckpt can start a
MAGE-C run from any MAGE checkpoint. --batch-size counts images: a step runs 2 x batch views.

--class-conditional trains a class-conditional MAGE: a label token joins the decoder's input,
labels from the class subfolders (or the cache's index). Start it from an unconditional
checkpoint (--ckpt): the encoder stays frozen (--train-encoder to train it too) and the decoder
learns the labels, each dropped to "no class" with probability --label-drop for guidance.

OUT/checkpoint-last.pth is rewritten atomically every --save-every steps, at each epoch end,
at the stop and on Ctrl-C or SIGTERM (at the end of the step in progress);
OUT/checkpoint-<epoch>.pth is kept every --keep-every epochs. Both are in the official format.
A run started again with the same OUT continues at the exact step it stopped (--resume auto).
Several GPUs or nodes: start it under torchrun, e.g.
  torchrun --nproc_per_node 8 $(which mage-fast) train --data DIR --out OUT --vqgan-ckpt CKPT
"""
import argparse
import logging

from ..training import TrainConfig
from .common import SKIP_UNREADABLE_HELP, TORCHRUN_DEVICE_HELP, add_model_args, add_setting, config_from_args, device


def register(sub):
    p = sub.add_parser("train", help="pretrain MAGE on an image folder or a token cache (official recipe; "
                                     "resumable; torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def setting(name, help, **kwargs):
        add_setting(p, TrainConfig, name, help, **kwargs)
    data = p.add_mutually_exclusive_group(required=True)
    add_setting(data, TrainConfig, "data", "image folder: class subfolders or images directly inside (labels are used "
                "only by --class-conditional)", metavar="DIR")
    add_setting(data, TrainConfig, "tokens", "token cache of `mage-fast tokenize`: each step reads the ids of one of "
                "its K views per image and runs no tokenizer. Its tokenizer weights must be this run's (--ckpt, "
                "--vqgan-ckpt or the resumed checkpoint)", metavar="CACHE")
    setting("out", "checkpoints and log.jsonl go here", metavar="DIR")
    setting("skip_unreadable", SKIP_UNREADABLE_HELP)
    add_model_args(p)
    setting("dropout", "dropout probability (default: the official %(default)s)")
    setting("batch_size", "images per GPU per forward (default: %(default)s)")
    setting("accum_iter", "forwards accumulated per optimizer step (default: %(default)s)")
    setting("blr", "base lr: lr = blr * batch-size * world size * accum-iter / 256 (default: %(default)s)")
    setting("lr", "absolute peak lr (overrides --blr)")
    setting("min_lr", "lr at the end of the cosine (default: %(default)s)")
    setting("weight_decay", "AdamW weight decay (default: %(default)s)")
    setting("epochs", "length of the schedule (default: %(default)s)")
    setting("warmup_epochs", "linear lr warm-up, at most --epochs (default: %(default)s)")
    setting("clip_grad", "gradient-norm clipping, 0 for none (default: %(default)s)")
    setting("precision", "autocast dtype; fp16 adds loss scaling (default: bf16 on CUDA, fp32 on CPU)")
    setting("seed", "seeds the initial weights, data order, crops, masks and dropout (default: %(default)s)")
    setting("workers", "data-loading processes per GPU (default on CUDA: 10 for images, 4 for a token cache; "
                       "0 on CPU)")
    setting("resume", "auto: continue from OUT/checkpoint-last.pth if there is one (default); "
                      "PATH: from that checkpoint of mage-fast train; none: start over", metavar="auto|PATH|none")
    setting("save_every", "also write checkpoint-last.pth every N steps, 0 for epoch ends only (default: %(default)s)")
    setting("keep_every", "keep checkpoint-<epoch>.pth every E epochs and at the last, as the official "
                          "runs; 0: the last only (default: %(default)s)")
    setting("max_steps", "stop (and save) at this global step, e.g. for smoke runs")
    setting("compile", "torch.compile the model")
    setting("log_every", "log the loss every N steps (default: %(default)s)")
    setting("device", TORCHRUN_DEVICE_HELP, type=device)
    setting("class_conditional", "train a class-conditional model (labels from the class subfolders, at least two); "
                                 "with --ckpt an unconditional checkpoint, its label token starts fresh")
    setting("num_classes", "classes of the label embedding (default: the data's number of classes)")
    setting("label_drop", "probability that a label becomes 'no class', for guidance (default: %(default)s)")
    setting("train_encoder", "also train the encoder (default: frozen, only the decoder and the labels train)")
    setting("contrastive", "train MAGE-C: two views per image, MAGE's loss on both plus a contrastive loss on "
                           "the encoder's pooled output (docs/mage.md#mage-c)")
    setting("contrastive_weight", "lambda: loss = MLM + lambda x contrastive (default: %(default)s)")
    setting("contrastive_temperature", "the NT-Xent temperature (default: %(default)s)")
    setting("contrastive_pool", "avg: the mean of the encoder's kept image tokens; cls: its class token "
                                "(default: %(default)s)")
    setting("contrastive_layers", "linear layers of the projection head (default: %(default)s)")
    setting("contrastive_hidden", "their width (default: %(default)s)")
    setting("contrastive_dim", "the projected embedding's width (default: %(default)s)")
    setting("contrastive_views", "the two views' augmentation: simclr (crop, flip, colour jitter, grayscale, "
                                 "blur) or mage (MAGE's crop and flip); a token cache must hold views made alike "
                                 "(default: %(default)s)")
    p.set_defaults(func=run)


def run(args):
    from .. import distributed
    from ..training import train
    config = config_from_args(TrainConfig, args)
    ctx = distributed.init(config.device)
    if not ctx.is_main:  # one process reports for all
        logging.getLogger("mage_fast").setLevel(logging.WARNING)
    train(config, ctx)
