"""The frame of a training run that pretraining (training.train) and fine-tuning
(finetune.finetune) share: the step order and schedule of a config's settings, the resume file,
and the loop over steps (the lr set, one train_step, progress, checkpoints at the configured
steps, a checkpoint on SIGINT/SIGTERM). What differs (the model, its data, its loss, what a
checkpoint carries, what ends an epoch) comes in as functions.

The config is any settings object with the fields the two run configs share: out, resume,
batch_size, accum_iter, seed, epochs, warmup_epochs, max_steps, blr, lr, min_lr, clip_grad,
precision, save_every, log_every."""
import dataclasses
import os
from typing import Callable, Dict, Iterator, Optional

import torch

from . import steps
from .ddp import wrap
from .interrupt import StopSignals
from .optim import Optimization, scaled_lr, set_lr, warmup_cosine_lr
from .order import TrainOrder
from .progress import Progress
from .state import LAST


class Run:
    """A run of `config` over `num_images` on this process (ctx: a mage_fast.distributed.Dist)
    that resumes from `resume` (resume_file's; None: it starts at step 0): its order, steps per
    epoch, the step it stops at (epochs or max_steps) and peak lr. Creates OUT."""

    def __init__(self, config, ctx, num_images: int, resume: Optional[str]):
        self.config, self.ctx, self.resume = config, ctx, resume
        self.order = TrainOrder(num_images, config.batch_size, config.accum_iter, config.seed, ctx.rank,
                                ctx.world_size)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total = config.epochs * self.steps_per_epoch
        self.stop = min(self.total, config.max_steps or self.total)
        self.peak_lr = config.lr or scaled_lr(config.blr, self.order.images_per_step)
        self.last = os.path.join(config.out, LAST)
        os.makedirs(config.out, exist_ok=True)
        torch.backends.cudnn.benchmark = True  # fixed shapes: the tokenizer's convolutions pick their fastest kernels

    def lr_at(self, step: int) -> float:
        c = self.config
        return warmup_cosine_lr(step / self.steps_per_epoch, self.peak_lr, c.min_lr, c.warmup_epochs, c.epochs)

    def optimization(self, optimizer: torch.optim.Optimizer) -> Optimization:
        return Optimization.of(optimizer, self.config.precision, self.config.clip_grad)

    def order_from(self, step: int) -> TrainOrder:
        """The batch sampler of this rank's micro-batches from `step` to the stop."""
        return dataclasses.replace(self.order, start=step, stop=self.stop)

    def describe(self, start: int, what: str) -> str:
        """The steps' shape, `what` (the model, the device) and where the run starts: the end of
        the line a run prints first."""
        c, o = self.config, self.order
        return (f"{self.steps_per_epoch} steps/epoch of {o.images_per_step} images (batch {c.batch_size} x "
                f"{self.ctx.world_size} process(es) x {c.accum_iter} accumulated), lr {self.peak_lr:.3e}, {what}; "
                + (f"resuming at step {start} from {self.resume}" if self.resume else "starting at step 0"))

    def loop(self, start: int, model: torch.nn.Module, optimization: Optimization, batches: Iterator,
             loss_of: Callable[[torch.nn.Module, object, int], torch.Tensor], save: Callable[[int, bool], None],
             epoch_end: Optional[Callable[[int, Progress], None]] = None, compile: bool = False,
             parts: Optional[Callable[[], Dict[str, torch.Tensor]]] = None) -> int:
        """Steps from `start` to the stop; returns the step it stopped at. Each step takes
        accum_iter micro-batches from `batches`, each's loss loss_of(net, batch, micro) (net:
        the model as it runs the forward, DDP-wrapped or compiled; micro: the global index of
        the micro-batch, which keys its random draws). After a step: progress every log_every
        steps (with the mean of each of parts(), the named parts of the last forward's loss,
        where given); at an epoch's end epoch_end(step, progress) on every rank; on rank 0
        save(step, epoch_end) every save_every steps, at epoch ends and at the stop. On SIGINT
        or SIGTERM the run saves at the next step's end and raises KeyboardInterrupt."""
        c, ctx, spe = self.config, self.ctx, self.steps_per_epoch
        if start >= self.stop:
            if ctx.is_main:
                print(f"nothing to do: the run is at step {start} of {self.stop}")
            return start
        ddp = wrap(model, ctx)
        net = ddp or model
        if compile:
            net = torch.compile(net)
        progress = Progress(ctx, c.out, start, self.stop, self.order.images_per_step, spe)
        step = start

        def micro_loss(batch, m):  # of micro-batch m of the current step
            loss = loss_of(net, batch, step * c.accum_iter + m)
            progress.add_loss(loss, parts() if parts else None)
            return loss
        try:
            with StopSignals() as signals:
                while step < self.stop:
                    lr = self.lr_at(step)
                    set_lr(optimization.optimizer, lr)
                    steps.train_step(batches, c.accum_iter, micro_loss, optimization, ddp)
                    step += 1
                    progress.step_done()
                    end = step % spe == 0
                    due = end or step == self.stop or bool(c.save_every and step % c.save_every == 0)
                    stopping = self._stopping(signals)
                    if due or stopping or step % c.log_every == 0:
                        progress.report(step, lr)
                    if end and epoch_end is not None:
                        epoch_end(step, progress)
                    if (due or stopping) and ctx.is_main:
                        save(step, end)
                    if stopping:
                        ctx.barrier()
                        raise KeyboardInterrupt(f"interrupted by {signals.cause} at step {step} of {self.stop}: "
                                                f"saved {self.last}; the same command continues the run")
        finally:
            progress.close()
        ctx.barrier()
        return step

    def _stopping(self, signals: StopSignals) -> bool:
        """Whether any rank got a stop signal: every rank stops at the same step (one int
        all-reduced per step under DDP, as each step's gradients are)."""
        if self.ctx.world_size == 1:
            return signals.requested
        return self.ctx.min_int(-int(signals.requested)) < 0
