"""The pretraining loop (docs/mage.md#recipe; LTH14/mage engine_pretrain.py), on one process or under
torchrun with DDP. `train(config, ctx)` takes a TrainConfig and a mage_fast.distributed.Dist."""
import contextlib
import dataclasses
import logging
import os
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..checkpoint import load_checkpoint
from ..model import build_model
from ..settings import as_namespace
from ..validation import PRECISIONS
from .batches import TrainOrder, mask_ratio, seed_dropout
from .config import TrainConfig
from .optim import build_optimizer, freeze_unused, lr_at, optimizer_step, scaled_lr
from .progress import Progress
from .source import data_source
from .state import LAST, epoch_path, keep_copy, restore, resume_path, save_checkpoint

log = logging.getLogger(__name__)

TOKENIZER_WARNING = """
################################################################################
#  No --vqgan-ckpt (and no --ckpt): the TOKENIZER HAS RANDOM WEIGHTS, so the    #
#  tokens it gives are meaningless and so is whatever trains on them. Use this  #
#  only to test the pipeline; train on vqgan_jax_strongaug.ckpt (LTH14/mage).   #
################################################################################"""


def _resume_file(config, ctx):
    path = resume_path(config.resume, config.out)
    found = int(path is not None)
    if ctx.min_int(found) != -ctx.min_int(-found):  # on multi-node runs OUT must be shared
        raise ValueError(f"only some ranks see {os.path.join(config.out, LAST)}: put --out on a shared filesystem")
    return path


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


def _weights(config, resume) -> str:
    """Where the run's weights come from, for messages."""
    if resume:
        return f"the checkpoint {resume}"
    given = [f"--{name} {path}" for name, path in (("ckpt", config.ckpt), ("vqgan-ckpt", config.vqgan_ckpt)) if path]
    return " and ".join(given) or f"random weights (--seed {config.seed})"


def train(config: TrainConfig, ctx: Optional[distributed.Dist] = None):
    """Train until config.epochs (or config.max_steps) total steps, writing OUT/checkpoint-last.pth
    every save_every steps, at each epoch end and at the stop, and OUT/checkpoint-<epoch>.pth
    every keep_every epochs and at the last. Without `ctx`, the process joins the torchrun group
    if it runs under torchrun, and otherwise trains alone on config.device."""
    ctx = ctx or distributed.init(config.device)
    config = config.for_device(ctx.device.type)
    cuda = ctx.device.type == "cuda"
    source = data_source(config.data, config.tokens, config.seed,
                         (config.num_classes, config.label_drop) if config.class_conditional else None)
    num_classes = config.num_classes or len(source.classes)
    # what a resume must match: the settings, and the classes the data gave
    classes = {**config.class_settings, "num_classes": num_classes} if config.class_conditional else None
    order = TrainOrder(source.num_images, config.batch_size, config.accum_iter, config.seed, ctx.rank, ctx.world_size)
    spe, accum = order.steps_per_epoch, config.accum_iter
    total = config.epochs * spe
    stop = min(total, config.max_steps or total)
    peak_lr = config.lr or scaled_lr(config.blr, order.images_per_step)
    os.makedirs(config.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # fixed shapes: the tokenizer's convolutions pick their fastest kernels

    resume = _resume_file(config, ctx)
    model = _initial_model(config, ctx, resume is not None, num_classes)
    freeze_unused(model)
    if config.class_conditional and not config.train_encoder:
        model.freeze_encoder()  # out of the optimizer (param_groups lists what trains), run under no_grad
    optimizer = build_optimizer(model, peak_lr, config.weight_decay)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    step = restore(resume, model, optimizer, scaler, order, source.settings, classes) if resume else 0
    source.check_tokenizer(model, _weights(config, resume))
    if ctx.is_main:
        if config.resume == "none" and os.path.exists(os.path.join(config.out, LAST)):
            log.warning("--resume none: the run starts over and overwrites %s", os.path.join(config.out, LAST))
        conditioning = (f", class-conditional over {num_classes} classes (label drop {config.label_drop}, encoder "
                        f"{'trained' if config.train_encoder else 'frozen'})") if classes else ""
        print(f"{source.description}{conditioning}, {spe} steps/epoch of {order.images_per_step} images "
              f"(batch {config.batch_size} x {ctx.world_size} process(es) x {accum} accumulated), "
              f"lr {peak_lr:.3e}, {config.precision}, {config.impl} model {config.model} on {ctx.device}; "
              + (f"resuming at step {step} from {resume}" if resume else "starting at step 0"))
    if step >= stop:
        if ctx.is_main:
            print(f"nothing to do: the run is at step {step} of {stop}")
        return

    # Every trainable parameter gets a gradient in every step (freeze_unused), hence
    # find_unused_parameters=False. The only buffer is constant (token position ids): no
    # broadcast before every forward.
    ddp = DistributedDataParallel(model, device_ids=[ctx.device] if cuda else None,
                                  broadcast_buffers=False) if ctx.world_size > 1 else None
    net = ddp or model
    if config.compile:
        net = torch.compile(net)
    batches = iter(source.loader(dataclasses.replace(order, start=step, stop=stop), config.workers, cuda))
    progress = Progress(ctx, config.out, step, stop, order.images_per_step, spe)
    try:
        while step < stop:
            lr = lr_at(step / spe, peak_lr, config.min_lr, config.warmup_epochs, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for m in range(accum):
                inputs, noise, *labels = next(batches)  # images or ids: what source.input names; labels if any
                given = {"labels": labels[0].to(ctx.device, non_blocking=True)} if labels else {}
                micro = step * accum + m
                seed_dropout(config.seed, micro, ctx.rank)
                # Gradients are all-reduced once per step, in the last micro-batch's backward.
                with ddp.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext():
                    ratio = mask_ratio(model, config.seed, micro)
                    if config.compile and config.impl == "fast":  # a float would be a new shape each step
                        # a fill kernel, not a copy from host memory (which would sync)
                        ratio = torch.full((), ratio, dtype=torch.float64, device=ctx.device)
                    with torch.autocast(ctx.device.type, dtype=PRECISIONS[config.precision],
                                        enabled=config.precision != "fp32"):
                        loss = net(**{source.input: inputs.to(ctx.device, non_blocking=True)}, mask_ratio=ratio,
                                   noise=noise.to(ctx.device, non_blocking=True), **given)
                    scaler.scale(loss / accum).backward()
                progress.add_loss(loss)
            optimizer_step(optimizer, scaler, params, config.clip_grad)
            step += 1
            progress.step_done()

            epoch_end = step % spe == 0
            save = epoch_end or step == stop or (config.save_every and step % config.save_every == 0)
            if save or step % config.log_every == 0:
                progress.report(step, lr)
            if save and ctx.is_main:
                last = os.path.join(config.out, LAST)
                save_checkpoint(last, model, optimizer, scaler, as_namespace(config), order, step, source.settings,
                                class_conditional=classes)
                epoch = step // spe - 1
                if epoch_end and ((config.keep_every and epoch % config.keep_every == 0) or epoch + 1 == config.epochs):
                    keep_copy(last, epoch_path(config.out, epoch))
    finally:
        progress.close()
    ctx.barrier()
    if ctx.is_main:
        print(f"stopped at step {step} of {total}; checkpoint: {os.path.join(config.out, LAST)}")
