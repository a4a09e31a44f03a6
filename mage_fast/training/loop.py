"""The pretraining loop (docs/mage.md#recipe; LTH14/mage engine_pretrain.py), on one process or under
torchrun with DDP. `train(args, ctx)` takes the arguments of `mage-fast train` as its `run`
completes them (precision and workers chosen for the device) and a mage_fast.distributed.Dist."""
import contextlib
import dataclasses
import logging
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_checkpoint
from ..data import ImageFolder
from ..model import build_model
from ..validation import PRECISIONS
from .batches import TrainOrder, TrainSamples, mask_ratio, seed_dropout
from .optim import build_optimizer, freeze_unused, lr_at, scaled_lr
from .progress import Progress
from .state import LAST, epoch_path, keep_copy, restore, resume_path, save_checkpoint

log = logging.getLogger(__name__)

TOKENIZER_WARNING = """
################################################################################
#  No --vqgan-ckpt (and no --ckpt): the TOKENIZER HAS RANDOM WEIGHTS, so the    #
#  tokens it gives are meaningless and so is whatever trains on them. Use this  #
#  only to test the pipeline; train on vqgan_jax_strongaug.ckpt (LTH14/mage).   #
################################################################################"""


def _resume_file(args, ctx):
    path = resume_path(args.resume, args.out)
    found = int(path is not None)
    if ctx.min_int(found) != -ctx.min_int(-found):  # on multi-node runs OUT must be shared
        raise ValueError(f"only some ranks see {os.path.join(args.out, LAST)}: put --out on a shared filesystem")
    return path


def _initial_model(args, ctx, resuming: bool):
    model = build_model(args.model, args.impl, init_seed=args.seed, dropout=args.dropout)
    if resuming:
        log.info("resuming: the weights come from the checkpoint, --ckpt/--vqgan-ckpt are not read")
    elif args.ckpt or args.vqgan_ckpt:
        log.info("initial weights: %s", load_checkpoint(model, args.ckpt, args.vqgan_ckpt))
    if not (resuming or args.ckpt or args.vqgan_ckpt) and ctx.is_main:
        log.warning(TOKENIZER_WARNING)
    return model.to(ctx.device).train()


def train(args, ctx):
    """Train until --epochs (or --max-steps) total steps, writing OUT/checkpoint-last.pth every
    --save-every steps, at each epoch end and at the stop, and OUT/checkpoint-<epoch>.pth every
    --keep-every epochs and at the last."""
    cuda = ctx.device.type == "cuda"
    folder = ImageFolder(args.data)
    order = TrainOrder(len(folder), args.batch_size, args.accum_iter, args.seed, ctx.rank, ctx.world_size)
    spe, accum = order.steps_per_epoch, args.accum_iter
    total = args.epochs * spe
    stop = min(total, args.max_steps or total)
    peak_lr = args.lr or scaled_lr(args.blr, order.images_per_step)
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # fixed shapes: the tokenizer's convolutions pick their fastest kernels

    resume = _resume_file(args, ctx)
    model = _initial_model(args, ctx, resume is not None)
    freeze_unused(model)
    optimizer = build_optimizer(model, peak_lr, args.weight_decay)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.precision == "fp16")
    step = restore(resume, model, optimizer, scaler, order) if resume else 0
    if ctx.is_main:
        if args.resume == "none" and os.path.exists(os.path.join(args.out, LAST)):
            log.warning("--resume none: the run starts over and overwrites %s", os.path.join(args.out, LAST))
        print(f"{len(folder)} images, {spe} steps/epoch of {order.images_per_step} images "
              f"(batch {args.batch_size} x {ctx.world_size} process(es) x {accum} accumulated), "
              f"lr {peak_lr:.3e}, {args.precision}, {args.impl} model {args.model} on {ctx.device}; "
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
    if args.compile:
        net = torch.compile(net)
    loader = torch.utils.data.DataLoader(
        TrainSamples(folder, args.seed), batch_sampler=dataclasses.replace(order, start=step, stop=stop),
        num_workers=args.workers, pin_memory=cuda)
    batches = iter(loader)
    progress = Progress(ctx, args.out, step, stop, order.images_per_step, spe)
    try:
        while step < stop:
            lr = lr_at(step / spe, peak_lr, args.min_lr, args.warmup_epochs, args.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for m in range(accum):
                images, noise = next(batches)
                micro = step * accum + m
                seed_dropout(args.seed, micro, ctx.rank)
                # Gradients are all-reduced once per step, in the last micro-batch's backward.
                with ddp.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext():
                    ratio = mask_ratio(model, args.seed, micro)
                    if args.compile and args.impl == "fast":  # a float would be a new shape each step
                        # a fill kernel, not a copy from host memory (which would sync)
                        ratio = torch.full((), ratio, dtype=torch.float64, device=ctx.device)
                    with torch.autocast(ctx.device.type, dtype=PRECISIONS[args.precision],
                                        enabled=args.precision != "fp32"):
                        loss = net(images.to(ctx.device, non_blocking=True), mask_ratio=ratio,
                                   noise=noise.to(ctx.device, non_blocking=True))
                    scaler.scale(loss / accum).backward()
                progress.add_loss(loss)
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.step_done()

            epoch_end = step % spe == 0
            save = epoch_end or step == stop or (args.save_every and step % args.save_every == 0)
            if save or step % args.log_every == 0:
                progress.report(step, lr)
            if save and ctx.is_main:
                last = os.path.join(args.out, LAST)
                save_checkpoint(last, model, optimizer, scaler, args, order, step)
                epoch = step // spe - 1
                if epoch_end and ((args.keep_every and epoch % args.keep_every == 0) or epoch + 1 == args.epochs):
                    keep_copy(last, epoch_path(args.out, epoch))
    finally:
        progress.close()
    ctx.barrier()
    if ctx.is_main:
        print(f"stopped at step {step} of {total}; checkpoint: {os.path.join(args.out, LAST)}")
