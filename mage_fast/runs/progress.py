"""Progress of a run (pretraining or fine-tuning): a tqdm bar (loss, lr, images/s, ETA), a log line and a line of
OUT/log.jsonl at each report, on rank 0. The loss is summed on the device between reports, so
steps in between need no host sync."""
import math
import os
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..files import append_json_line

LOG = "log.jsonl"


class Progress:
    def __init__(self, ctx, out: str, start: int, stop: int, images_per_step: int, steps_per_epoch: int):
        self.ctx, self.images_per_step, self.steps_per_epoch, self.stop = ctx, images_per_step, steps_per_epoch, stop
        self.log_path = os.path.join(out, LOG)
        self.bar = tqdm(total=stop, initial=start, unit="step", desc="training", disable=not ctx.is_main,
                        dynamic_ncols=True)
        self.loss_sum = torch.zeros((), device=ctx.device)
        self._restart()

    def _restart(self):
        self.loss_sum.zero_()
        self.part_sums = {}
        self.losses, self.steps, self.since = 0, 0, time.perf_counter()

    def add_loss(self, loss: torch.Tensor, parts: Optional[Dict[str, torch.Tensor]] = None):
        """A micro-batch's loss, and the named parts it is made of (reported beside it)."""
        self.loss_sum += loss.detach().float()
        for name, part in (parts or {}).items():
            self.part_sums[name] = self.part_sums.get(name, 0) + part.detach().float()
        self.losses += 1

    def step_done(self):
        self.steps += 1
        self.bar.update()

    def report(self, step: int, lr: float) -> float:
        """The mean loss over all ranks since the last report; raises on a non-finite one (on
        every rank alike, so none is left waiting)."""
        total = torch.stack([self.loss_sum, *self.part_sums.values()])
        if self.ctx.world_size > 1:
            dist.all_reduce(total)
        loss, *part_means = (total / (self.losses * self.ctx.world_size)).tolist()
        parts = dict(zip(self.part_sums, part_means))
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {step}: stopped without saving")
        rate = self.steps * self.images_per_step / (time.perf_counter() - self.since)
        if self.ctx.is_main:
            epoch = step / self.steps_per_epoch
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3e}", img_s=f"{rate:.1f}", refresh=False)
            shown = f" ({', '.join(f'{name} {value:.4f}' for name, value in parts.items())})" if parts else ""
            self.bar.write(f"step {step}/{self.stop}  epoch {epoch:.3f}  loss {loss:.4f}{shown}  lr {lr:.3e}  "
                           f"{rate:.1f} images/s")
            append_json_line(self.log_path, {"step": step, "epoch": epoch, "loss": loss,
                                             **{f"loss_{name}": value for name, value in parts.items()},
                                             "lr": lr, "images_per_s": rate})
        self._restart()
        return loss

    def close(self):
        self.bar.close()
