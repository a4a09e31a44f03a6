"""The fine-tuning loop (LTH14/mage main_finetune.py, engine_finetune.py), on one process or under
torchrun with DDP: `finetune(cfg, ctx)` with a FinetuneConfig and a mage_fast.distributed.Dist."""
import contextlib
import dataclasses
import logging
import os

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data import ImageFolder
from ..files import append_json_line
from ..recognition.classifier import UNUSED, build_classifier
from ..settings import as_namespace
from ..training.batches import TrainOrder, seed_dropout
from ..training.optim import freeze_unused, lr_at, optimizer_step, scaled_lr
from ..training.progress import Progress
from ..training.state import LAST, keep_copy, restore_state, resume_path, save_checkpoint
from ..validation import PRECISIONS
from .config import FinetuneConfig
from .evaluate import eval_transform, validate
from .optim import build_optimizer, set_lr
from .samples import FinetuneSamples, Objective, rand_augment
from .weights import load_pretrained

log = logging.getLogger(__name__)
BEST = "checkpoint-best.pth"


def _datasets(cfg: FinetuneConfig):
    train, val = ImageFolder(cfg.data), ImageFolder(cfg.val, eval_transform())
    if not train.classes:
        raise ValueError(f"{cfg.data} has no class subfolders: fine-tuning needs one subfolder per class")
    if val.classes != train.classes:
        raise ValueError(f"{cfg.val} and {cfg.data} have different class subfolders: label i must name the "
                         "same class in both")
    return train, val


def _model(cfg: FinetuneConfig, num_classes: int, resuming: bool, ctx):
    model = build_classifier(cfg.model, num_classes, cfg.global_pool, cfg.drop_path, cfg.impl, init_seed=cfg.seed)
    if resuming:
        log.info("resuming: the weights come from the checkpoint, --ckpt/--vqgan-ckpt are not read")
    else:
        report = load_pretrained(model, cfg.ckpt, cfg.vqgan_ckpt, cfg.trusted, seed=cfg.seed)
        if ctx.is_main:
            log.info("pretrained weights from %s: %s", cfg.ckpt, report)
    freeze_unused(model, UNUSED)
    return model.to(ctx.device).train()


def _resume_file(cfg: FinetuneConfig, ctx):
    path = resume_path(cfg.resume, cfg.out)
    found = int(path is not None)
    if ctx.min_int(found) != -ctx.min_int(-found):  # on several nodes OUT must be shared
        raise ValueError(f"only some ranks see {os.path.join(cfg.out, LAST)}: put --out on a shared filesystem")
    return path


def _log(progress: Progress, record: dict):
    append_json_line(progress.log_path, record)


def finetune(cfg: FinetuneConfig, ctx) -> dict:
    """Fine-tune until cfg.epochs (or cfg.max_steps) total steps. Each epoch ends with top-1 and
    top-5 on cfg.val (logged to OUT/log.jsonl), OUT/checkpoint-best.pth when top-1 improves, and
    OUT/checkpoint-last.pth, also written every cfg.save_every steps and at the stop. Returns the
    last validation (empty if no epoch ended)."""
    cuda = ctx.device.type == "cuda"
    train_set, val_set = _datasets(cfg)
    resume = _resume_file(cfg, ctx)
    if resume is None and cfg.ckpt is None:
        raise ValueError("give the pretrained MAGE checkpoint to fine-tune (--ckpt)")
    num_classes = len(train_set.classes)
    order = TrainOrder(len(train_set), cfg.batch_size, cfg.accum_iter, cfg.seed, ctx.rank, ctx.world_size)
    spe, accum = order.steps_per_epoch, cfg.accum_iter
    total = cfg.epochs * spe
    stop = min(total, cfg.max_steps or total)
    peak_lr = cfg.lr or scaled_lr(cfg.blr, order.images_per_step)
    args = as_namespace(cfg, lr=peak_lr, nb_classes=num_classes, classes=train_set.classes)
    objective = Objective(cfg, num_classes)  # before anything heavy: says early if timm is missing
    augment = rand_augment(cfg.aa, 256) if cfg.augmenting else None
    os.makedirs(cfg.out, exist_ok=True)
    torch.backends.cudnn.benchmark = True

    model = _model(cfg, num_classes, resume is not None, ctx)
    optimizer = build_optimizer(model, peak_lr, cfg.weight_decay, cfg.layer_decay)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
    state = restore_state(resume, model, optimizer, scaler, order) if resume else {"step": 0}
    step, best = state["step"], state.get("best_top1")
    if ctx.is_main:
        print(f"{len(train_set)} training images in {num_classes} classes, {len(val_set)} for validation; "
              f"{spe} steps/epoch of {order.images_per_step} images (batch {cfg.batch_size} x {ctx.world_size} "
              f"process(es) x {accum} accumulated), lr {peak_lr:.3e}, layer decay {cfg.layer_decay}, "
              f"{cfg.precision}, {cfg.impl} {cfg.model} on {ctx.device}; "
              + (f"resuming at step {step} from {resume}" if resume else "starting at step 0"))
    if step >= stop:
        if ctx.is_main:
            print(f"nothing to do: the run is at step {step} of {stop}")
        return {}

    # Every trainable parameter gets a gradient (the unused ones are frozen); the only buffer is
    # a constant (the token position ids).
    ddp = DistributedDataParallel(model, device_ids=[ctx.device] if cuda else None,
                                  broadcast_buffers=False) if ctx.world_size > 1 else None
    net = ddp or model
    loader = torch.utils.data.DataLoader(
        FinetuneSamples(train_set, cfg.seed, augment), batch_sampler=dataclasses.replace(order, start=step, stop=stop),
        num_workers=cfg.workers, pin_memory=cuda)
    batches = iter(loader)
    progress = Progress(ctx, cfg.out, step, stop, order.images_per_step, spe)
    dtype = PRECISIONS[cfg.precision]
    metrics = {}
    try:
        while step < stop:
            lr = lr_at(step / spe, peak_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
            set_lr(optimizer, lr)
            for m in range(accum):
                images, labels = next(batches)
                micro = step * accum + m
                images, targets = objective.targets(images.to(ctx.device, non_blocking=True),
                                                    labels.to(ctx.device, non_blocking=True), micro, ctx.rank)
                seed_dropout(cfg.seed, micro, ctx.rank)
                # Gradients are all-reduced once per step, in the last micro-batch's backward.
                with ddp.no_sync() if ddp and m < accum - 1 else contextlib.nullcontext():
                    with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype != torch.float32):
                        logits = net(images)
                    loss = objective.loss(logits, targets)
                    scaler.scale(loss / accum).backward()
                progress.add_loss(loss)
            optimizer_step(optimizer, scaler, params, cfg.clip_grad)
            step += 1
            progress.step_done()

            epoch_end = step % spe == 0
            save = epoch_end or step == stop or (cfg.save_every and step % cfg.save_every == 0)
            if save or step % cfg.log_every == 0:
                progress.report(step, lr)
            if epoch_end:
                metrics = validate(model, val_set, cfg.eval_batch_size or cfg.batch_size, ctx, cfg.precision,
                                   cfg.workers)
                improved = best is None or metrics["top1"] > best
                best = metrics["top1"] if improved else best
                if ctx.is_main:
                    progress.bar.write(f"epoch {step // spe - 1}: val top-1 {metrics['top1']:.2f}%  "
                                       f"top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
                                       f"(best top-1 {best:.2f}%)")
                    _log(progress, {"step": step, "epoch": step // spe - 1,
                                    **{f"val_{k}": v for k, v in metrics.items()}, "best_top1": best})
            if save and ctx.is_main:
                last, extra = os.path.join(cfg.out, LAST), {"best_top1": best}
                if epoch_end and improved:
                    # best first: a kill between the two leaves a last checkpoint from before this
                    # epoch, whose resume evaluates the epoch again and rewrites both.
                    best_path = os.path.join(cfg.out, BEST)
                    save_checkpoint(best_path, model, optimizer, scaler, args, order, step, extra=extra)
                    keep_copy(best_path, last)
                else:
                    save_checkpoint(last, model, optimizer, scaler, args, order, step, extra=extra)
    finally:
        progress.close()
    ctx.barrier()
    if ctx.is_main:
        print(f"stopped at step {step} of {total}; checkpoints: {os.path.join(cfg.out, LAST)}"
              + (f", {os.path.join(cfg.out, BEST)} (top-1 {best:.2f}%)" if best is not None else ""))
    return metrics
