"""The pretraining loop (docs/mage.md#recipe; LTH14/mage engine_pretrain.py) on the run layer
(runs.Run), on one process or under torchrun with DDP: the model, its data and its loss.
`train(config, ctx)` takes a TrainConfig and a mage_fast.distributed.Dist."""
import logging
import os
from typing import Optional

import torch

from .. import distributed
from ..checkpoint import load_checkpoint
from ..model import build_model
from ..runs import Run, autocast, freeze_unused, keep_copy, restore, resume_file, save_checkpoint, seed_dropout
from ..runs.state import epoch_path
from ..settings import as_namespace
from .batches import mask_ratio
from .config import TrainConfig
from .contrastive import HEAD_KEY, ContrastiveMAGE
from .optim import UNUSED_BY_MAGE, pretraining_optimizer
from .source import data_source

log = logging.getLogger(__name__)

TOKENIZER_WARNING = """
################################################################################
#  No --vqgan-ckpt (and no --ckpt): the TOKENIZER HAS RANDOM WEIGHTS, so the    #
#  tokens it gives are meaningless and so is whatever trains on them. Use this  #
#  only to test the pipeline; train on vqgan_jax_strongaug.ckpt (LTH14/mage).   #
################################################################################"""


def _initial_model(config, ctx, resuming: bool, num_classes: int):
    """The model the run starts from; a class-conditional one with `num_classes`, whose label
    parameters start fresh from an unconditional --ckpt."""
    classes = {"class_conditional": True, "num_classes": num_classes} if config.class_conditional else {}
    model = build_model(config.model, config.impl, init_seed=config.seed, dropout=config.dropout, **classes)
    if resuming:
        log.info("resuming: the weights come from the checkpoint, --ckpt/--vqgan-ckpt are not read")
    elif config.ckpt or config.vqgan_ckpt:
        log.info("initial weights: %s", load_checkpoint(model, config.ckpt, config.vqgan_ckpt))
    if not (resuming or config.ckpt or config.vqgan_ckpt) and ctx.is_main:
        log.warning(TOKENIZER_WARNING)
    return model.to(ctx.device).train()


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weights(config, resume) -> str:
    """Where the run's weights come from, for messages."""
    if resume:
        return f"the checkpoint {resume}"
    given = [f"--{name} {path}" for name, path in (("ckpt", config.ckpt), ("vqgan-ckpt", config.vqgan_ckpt)) if path]
    return " and ".join(given) or f"random weights (--seed {config.seed})"


def train(config: TrainConfig, ctx: Optional[distributed.Dist] = None):
    """Train until config.epochs (or config.max_steps) total steps, writing OUT/checkpoint-last.pth
    every save_every steps, at each epoch end, at the stop and on SIGINT/SIGTERM (then raising
    KeyboardInterrupt), and OUT/checkpoint-<epoch>.pth every keep_every epochs and at the last.
    Without `ctx`, the process joins the torchrun group if it runs under torchrun, and otherwise
    trains alone on config.device."""
    ctx = ctx or distributed.init(config.device)
    config = config.for_device(ctx.device.type)
    contrastive = config.contrastive_settings
    if contrastive and config.batch_size * ctx.world_size < 2:
        raise ValueError("a contrastive run needs at least two images per global micro-batch (its negatives): "
                         f"batch_size {config.batch_size} x {ctx.world_size} process(es)")
    source = data_source(config.data, config.tokens, config.seed,
                         (config.num_classes, config.label_drop) if config.class_conditional else None,
                         config.skip_unreadable, views=contrastive.views if contrastive else None)
    num_classes = config.num_classes or len(source.classes)
    # what a resume must match: the settings, and the classes the data gave
    classes = {**config.class_settings, "num_classes": num_classes} if config.class_conditional else None
    run = Run(config, ctx, source.num_images, resume_file(config.resume, config.out, ctx))
    model = _initial_model(config, ctx, run.resume is not None, num_classes)
    freeze_unused(model, UNUSED_BY_MAGE)
    if config.class_conditional and not config.train_encoder:
        model.freeze_encoder()  # out of the optimizer (param_groups lists what trains), run under no_grad
    trained, modules = model, {}
    if contrastive:  # the head trains beside MAGE, in the module DDP wraps, and is saved apart
        trained = ContrastiveMAGE(model, contrastive, config.seed).to(ctx.device).train()
        modules = {HEAD_KEY: trained.head}
        if run.resume is None and ctx.is_main:
            log.info("MAGE-C: the projection head (%d parameters) starts fresh", numel(trained.head))
    optimization = run.optimization(pretraining_optimizer(model, run.peak_lr, config.weight_decay,
                                                          extra=trained.head if contrastive else None))
    kind = {"class_conditional": classes, "contrastive": contrastive.as_dict() if contrastive else None}
    start = restore(run.resume, model, optimization.optimizer, optimization.scaler, run.order, source.settings,
                    kind, modules)["step"] if run.resume else 0
    source.check_tokenizer(model, _weights(config, run.resume))
    if ctx.is_main:
        if config.resume == "none" and os.path.exists(run.last):
            log.warning("--resume none: the run starts over and overwrites %s", run.last)
        conditioning = (f", class-conditional over {num_classes} classes (label drop {config.label_drop}, encoder "
                        f"{'trained' if config.train_encoder else 'frozen'})") if classes else ""
        if contrastive:
            conditioning = (f", MAGE-C: two {contrastive.views} views per image, MLM + {contrastive.weight} x "
                            f"NT-Xent (temperature {contrastive.temperature})")
        print(f"{source.description}{conditioning}, "
              + run.describe(start, f"{config.impl} model {config.model} on {ctx.device}"))
    device, compiled_ratio = ctx.device, config.compile and config.impl == "fast"

    def loss_of(net, batch, micro):
        inputs, noise, *labels = batch  # images or ids: what source.input names; labels if any
        given = {"labels": labels[0].to(device, non_blocking=True)} if labels else {}
        seed_dropout(config.seed, micro, ctx.rank)
        ratio = mask_ratio(model, config.seed, micro)
        if compiled_ratio:  # a float would be a new shape each step
            ratio = torch.full((), ratio, dtype=torch.float64, device=device)  # a fill kernel: no host sync
        with autocast(device, config.precision):
            return net(**{source.input: inputs.to(device, non_blocking=True)}, mask_ratio=ratio,
                       noise=noise.to(device, non_blocking=True), **given)

    def save(step, epoch_end):
        save_checkpoint(run.last, model, optimization.optimizer, optimization.scaler, as_namespace(config),
                        run.order, step, source.settings, kind=kind, modules=modules)
        epoch = step // run.steps_per_epoch - 1
        if epoch_end and ((config.keep_every and epoch % config.keep_every == 0) or epoch + 1 == config.epochs):
            keep_copy(run.last, epoch_path(config.out, epoch))

    batches = iter(source.loader(run.order_from(start), config.workers, device.type == "cuda"))
    step = run.loop(start, trained, optimization, batches, loss_of, save, compile=config.compile,
                    parts=(lambda: trained.parts) if contrastive else None)
    if ctx.is_main and step > start:
        print(f"stopped at step {step} of {run.total}; checkpoint: {run.last}")
