"""The run layer under pretraining (training/) and fine-tuning (finetune/): the order of a run's
steps and its seeds, the learning-rate schedule, one training step with gradient accumulation
(also what `mage-fast bench` times), DDP, progress, checkpoints and exact resume, and the loop
over steps that each run drives with its own model, data and loss (docs/architecture.md)."""
from .ddp import freeze_unused
from .interrupt import StopSignals
from .loop import Run
from .optim import Optimization, adamw, optimizer_step, scaled_lr, set_lr, warmup_cosine_lr
from .order import TrainOrder
from .seeds import generator, seed_dropout, seed_of
from .state import LAST, keep_copy, restore, resume_file, save_checkpoint
from .steps import autocast, train_step

__all__ = ["LAST", "Optimization", "Run", "StopSignals", "TrainOrder", "adamw", "autocast", "freeze_unused",
           "generator", "keep_copy", "optimizer_step", "restore", "resume_file", "save_checkpoint", "scaled_lr",
           "seed_dropout", "seed_of", "set_lr", "train_step", "warmup_cosine_lr"]
