"""The settings of a fine-tuning run. The defaults are the official recipe for MAGE-B (the README's
command with main_finetune.py's defaults); MAGE-L changes three of them (MODEL_DEFAULTS)."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..configs import CONFIGS
from ..validation import PRECISIONS

# The official README: "For ViT-L, set --epochs 50 --layer_decay 0.75 --drop_path 0.2".
MODEL_DEFAULTS = {"mage_vit_large_patch16": dict(epochs=50, layer_decay=0.75, drop_path=0.2)}
NO_AUGMENT = "none"


@dataclass(frozen=True)
class FinetuneConfig:
    data: str                           # training image folder, one subfolder per class
    val: str                            # validation folder with the same class subfolders
    out: str                            # checkpoints and log.jsonl
    ckpt: Optional[str] = None          # pretrained MAGE checkpoint (None: only with a resume)
    vqgan_ckpt: Optional[str] = None    # tokenizer, if ckpt lacks vqgan.* keys
    model: str = "mage_vit_base_patch16"
    impl: str = "fast"
    global_pool: bool = True            # False: the class token after the final norm
    epochs: int = 100
    warmup_epochs: float = 5
    batch_size: int = 32                # per process
    accum_iter: int = 1
    blr: float = 2.5e-4                 # lr = blr * effective batch / 256
    lr: Optional[float] = None          # absolute peak lr, overrides blr
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    drop_path: float = 0.1
    clip_grad: float = 0.0              # 0: none, as the official default
    smoothing: float = 0.1
    mixup: float = 0.8                  # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 1.0                 # Beta(alpha, alpha) of cutmix; 0: off
    mixup_prob: float = 1.0             # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5      # probability of cutmix rather than mixup when both are on
    aa: str = "rand-m9-mstd0.5-inc1"    # timm RandAugment policy, or "none"
    precision: str = "fp32"
    seed: int = 0
    workers: int = 0
    resume: str = "auto"                # auto | none | a checkpoint path
    save_every: int = 1000              # steps; 0: epoch ends only
    max_steps: Optional[int] = None
    log_every: int = 20
    eval_batch_size: Optional[int] = None  # default: batch_size
    trusted: bool = False               # unpickle checkpoints fully

    def __post_init__(self):
        checks = [
            ("model", self.model in CONFIGS, f"one of {', '.join(sorted(CONFIGS))}"),
            ("impl", self.impl in ("fast", "reference"), "fast or reference"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(sorted(PRECISIONS))}"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, "in [0, epochs]"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("accum_iter", self.accum_iter >= 1, ">= 1"),
            ("blr", self.blr > 0, "> 0"), ("lr", self.lr is None or self.lr > 0, "> 0"),
            ("min_lr", self.min_lr >= 0, ">= 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("layer_decay", 0 < self.layer_decay <= 1, "in (0, 1]"),
            ("drop_path", 0 <= self.drop_path < 1, "in [0, 1)"), ("clip_grad", self.clip_grad >= 0, ">= 0"),
            ("smoothing", 0 <= self.smoothing < 1, "in [0, 1)"),
            ("mixup", self.mixup >= 0, ">= 0"), ("cutmix", self.cutmix >= 0, ">= 0"),
            ("mixup_prob", 0 <= self.mixup_prob <= 1, "in [0, 1]"),
            ("mixup_switch_prob", 0 <= self.mixup_switch_prob <= 1, "in [0, 1]"),
            ("aa", self.aa == NO_AUGMENT or self.aa.startswith("rand"),
             f"a RandAugment policy (rand-...) or {NO_AUGMENT}"),
            ("seed", self.seed >= 0, ">= 0"), ("workers", self.workers >= 0, ">= 0"),
            ("save_every", self.save_every >= 0, ">= 0"), ("log_every", self.log_every >= 1, ">= 1"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size is None or self.eval_batch_size >= 1, ">= 1"),
        ]
        bad = [f"{name} must be {need}, got {getattr(self, name)!r}" for name, ok, need in checks if not ok]
        numbers = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), float)]
        bad += [f"{name} must be finite, got {getattr(self, name)}" for name in numbers
                if not math.isfinite(getattr(self, name))]
        if self.mixing and self.batch_size % 2:
            bad.append(f"mixup/cutmix mix each batch with its reverse: batch_size must be even, got {self.batch_size}")
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def augmenting(self) -> bool:
        return self.aa != NO_AUGMENT


def config_for(model: str, **settings) -> FinetuneConfig:
    """A FinetuneConfig whose unset epochs, layer_decay and drop_path take the model's recipe."""
    return FinetuneConfig(model=model, **{**MODEL_DEFAULTS.get(model, {}), **settings})
