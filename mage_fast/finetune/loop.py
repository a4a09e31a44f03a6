"""The fine-tuning loop (LTH14/mage main_finetune.py, engine_finetune.py) on the run layer
(runs.Run), on one process or under torchrun with DDP: the classifier, its augmented images and
mixed targets, its loss, and a validation at each epoch's end. `finetune(cfg, ctx)` takes a
FinetuneConfig and a mage_fast.distributed.Dist."""
import logging
import os

import torch

from ..data import ImageFolder
from ..files import append_json_line
from ..recognition.classifier import UNUSED_BY_CLASSIFIER, build_classifier
from ..runs import Run, autocast, freeze_unused, keep_copy, restore, resume_file, save_checkpoint, seed_dropout
from ..runs.interrupt import ignore_interrupts
from ..settings import as_namespace
from .config import FinetuneConfig
from .evaluate import eval_transform, validate
from .optim import layer_decay_optimizer
from .samples import FinetuneSamples, Objective, rand_augment
from .small_set import for_training_set
from .weights import load_pretrained

log = logging.getLogger(__name__)
BEST = "checkpoint-best.pth"


def _datasets(cfg: FinetuneConfig):
    train = ImageFolder(cfg.data, skip_unreadable=cfg.skip_unreadable)
    val = ImageFolder(cfg.val, eval_transform(), skip_unreadable=cfg.skip_unreadable)
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
    freeze_unused(model, UNUSED_BY_CLASSIFIER)
    return model.to(ctx.device).train()


def finetune(cfg: FinetuneConfig, ctx) -> dict:
    """Fine-tune until cfg.epochs (or cfg.max_steps) total steps, with the settings the size of
    the training set gives (small_set.for_training_set: the official recipe, or on a small set
    the small-set recipe where a setting was not given; a line says which). Each epoch ends with top-1 and
    top-5 on cfg.val (logged to OUT/log.jsonl), OUT/checkpoint-best.pth when top-1 improves, and
    OUT/checkpoint-last.pth, also written every cfg.save_every steps, at the stop and on
    SIGINT/SIGTERM (then raising KeyboardInterrupt). Returns the last validation (empty if no
    epoch ended)."""
    cfg = cfg.for_device(ctx.device.type)
    train_set, val_set = _datasets(cfg)
    cfg, recipe = for_training_set(cfg, len(train_set), ctx.world_size)
    if ctx.is_main:
        print(recipe)
    num_classes = len(train_set.classes)
    resume = resume_file(cfg.resume, cfg.out, ctx)
    if resume is None and cfg.ckpt is None:
        raise ValueError("give the pretrained MAGE checkpoint to fine-tune (--ckpt)")
    run = Run(cfg, ctx, len(train_set), resume)
    args = as_namespace(cfg, lr=run.peak_lr, nb_classes=num_classes, classes=train_set.classes)
    objective = Objective(cfg, num_classes)  # before anything heavy: says early if timm is missing
    augment = rand_augment(cfg.aa, 256) if cfg.augmenting else None

    model = _model(cfg, num_classes, run.resume is not None, ctx)
    optimization = run.optimization(layer_decay_optimizer(model, run.peak_lr, cfg.weight_decay, cfg.layer_decay))
    optimizer, scaler = optimization.optimizer, optimization.scaler
    state = restore(run.resume, model, optimizer, scaler, run.order) if run.resume else {"step": 0}
    start, best = state["step"], state.get("best_top1")
    if ctx.is_main:
        print(f"{len(train_set)} training images in {num_classes} classes, {len(val_set)} for validation; "
              + run.describe(start, f"layer decay {cfg.layer_decay}, {cfg.impl} {cfg.model} on {ctx.device}"))
    device = ctx.device
    validation = {"metrics": {}, "best": best, "improved": False}

    def loss_of(net, batch, micro):
        images, labels = batch
        images, targets = objective.targets(images.to(device, non_blocking=True),
                                            labels.to(device, non_blocking=True), micro, ctx.rank)
        seed_dropout(cfg.seed, micro, ctx.rank)
        with autocast(device, cfg.precision):
            logits = net(images)
        return objective.loss(logits, targets)

    def epoch_end(step, progress):
        metrics = validate(model, val_set, cfg.eval_batch_size or cfg.batch_size, ctx, cfg.precision, cfg.workers)
        best = validation["best"]
        improved = best is None or metrics["top1"] > best
        validation.update(metrics=metrics, best=metrics["top1"] if improved else best, improved=improved)
        if ctx.is_main:
            epoch, best = step // run.steps_per_epoch - 1, validation["best"]
            progress.bar.write(f"epoch {epoch}: val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                               f"loss {metrics['loss']:.4f}  (best top-1 {best:.2f}%)")
            append_json_line(progress.log_path, {"step": step, "epoch": epoch,
                                                 **{f"val_{k}": v for k, v in metrics.items()}, "best_top1": best})

    def save(step, at_epoch_end):
        extra = {"best_top1": validation["best"]}
        if at_epoch_end and validation["improved"]:
            # best first: a kill between the two leaves a last checkpoint from before this
            # epoch, whose resume evaluates the epoch again and rewrites both.
            best_path = os.path.join(cfg.out, BEST)
            save_checkpoint(best_path, model, optimizer, scaler, args, run.order, step, extra=extra)
            keep_copy(best_path, run.last)
        else:
            save_checkpoint(run.last, model, optimizer, scaler, args, run.order, step, extra=extra)

    loader = torch.utils.data.DataLoader(
        FinetuneSamples(train_set, cfg.seed, augment), batch_sampler=run.order_from(start), num_workers=cfg.workers,
        pin_memory=device.type == "cuda", worker_init_fn=ignore_interrupts)
    step = run.loop(start, model, optimization, iter(loader), loss_of, save, epoch_end)
    if ctx.is_main and step > start:
        best = validation["best"]
        print(f"stopped at step {step} of {run.total}; checkpoints: {run.last}"
              + (f", {os.path.join(cfg.out, BEST)} (top-1 {best:.2f}%)" if best is not None else ""))
    return validation["metrics"]
