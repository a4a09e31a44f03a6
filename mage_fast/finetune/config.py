"""The settings of a fine-tuning run: what `mage-fast finetune` builds from its flags, and what
`finetune` takes from Python. The defaults are the official recipe for MAGE-B (the README's
command with main_finetune.py's defaults); MAGE-L changes three of them (MODEL_DEFAULTS)."""
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from ..configs import CONFIGS
from ..model import IMPLEMENTATIONS
from ..settings import check_settings, setting
from ..validation import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, PRECISIONS, Numbers, default_precision

# The official README: "For ViT-L, set --epochs 50 --layer_decay 0.75 --drop_path 0.2".
MODEL_DEFAULTS = {"mage_vit_large_patch16": dict(epochs=50, layer_decay=0.75, drop_path=0.2)}
NO_AUGMENT = "none"
PROBABILITY = Numbers(float, 0, 1)
BELOW_ONE = Numbers(float, 0, 1, high_open=True)
# What the small-set recipe (small_set.py) may change where it was not given.
ADAPTED = ("batch_size", "lr", "warmup_epochs", "mixup", "cutmix", "aa")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tuning run, checked when built (a ValueError names each wrong
    field). `precision` and `workers` left None are chosen for the device the run gets (see
    for_device)."""
    data: str = setting(path=True)      # training image folder, one subfolder per class
    val: str = setting(path=True)       # validation folder with the same class subfolders
    out: str = setting(path=True)       # checkpoints and log.jsonl
    skip_unreadable: bool = False       # leave out files that are not images (default: refuse them)
    ckpt: Optional[str] = setting(None, path=True)          # pretrained MAGE checkpoint (None: only with a resume)
    vqgan_ckpt: Optional[str] = setting(None, path=True)    # tokenizer, if ckpt lacks vqgan.* keys
    model: str = setting("mage_vit_base_patch16", choices=CONFIGS)
    impl: str = setting("fast", choices=IMPLEMENTATIONS)
    global_pool: bool = True            # False: the class token after the final norm
    epochs: int = setting(100, COUNT)
    warmup_epochs: float = setting(5, NON_NEGATIVE)
    batch_size: int = setting(32, COUNT)            # per process
    accum_iter: int = setting(1, COUNT)
    blr: float = setting(2.5e-4, POSITIVE)          # lr = blr * effective batch / 256 ...
    lr: Optional[float] = setting(None, POSITIVE)   # ... unless the peak lr is given
    min_lr: float = setting(1e-6, NON_NEGATIVE)
    weight_decay: float = setting(0.05, NON_NEGATIVE)
    layer_decay: float = setting(0.65, Numbers(float, 0, 1, low_open=True))
    drop_path: float = setting(0.1, BELOW_ONE)
    clip_grad: float = setting(0.0, NON_NEGATIVE)   # 0: none, as the official default
    smoothing: float = setting(0.1, BELOW_ONE)
    mixup: float = setting(0.8, NON_NEGATIVE)       # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = setting(1.0, NON_NEGATIVE)      # Beta(alpha, alpha) of cutmix; 0: off
    mixup_prob: float = setting(1.0, PROBABILITY)   # probability of mixing a batch at all
    mixup_switch_prob: float = setting(0.5, PROBABILITY)  # of cutmix rather than mixup when both are on
    aa: str = "rand-m9-mstd0.5-inc1"    # timm RandAugment policy, or "none"
    precision: Optional[str] = setting(None, choices=PRECISIONS)
    seed: int = setting(0, NON_NEGATIVE_INT)
    workers: Optional[int] = setting(None, NON_NEGATIVE_INT)
    resume: str = setting("auto", path=True)        # auto | none | a checkpoint path
    save_every: int = setting(1000, NON_NEGATIVE_INT)   # steps; 0: epoch ends only
    max_steps: Optional[int] = setting(None, COUNT)
    log_every: int = setting(20, COUNT)
    eval_batch_size: Optional[int] = setting(None, COUNT)  # default: batch_size
    trusted: bool = False               # unpickle checkpoints fully
    small_set: int = setting(1000, NON_NEGATIVE_INT)    # fewer training images: the small-set recipe; 0: never
    fixed: Tuple[str, ...] = ()         # settings given explicitly, which the small-set recipe keeps

    def __post_init__(self):
        bad = []
        try:
            check_settings(self)
        except ValueError as e:
            bad.append(str(e))
        if isinstance(self.aa, str) and not (self.aa == NO_AUGMENT or self.aa.startswith("rand")):
            bad.append(f"aa must be a RandAugment policy (rand-...) or {NO_AUGMENT}, got {self.aa!r}")
        if not bad and self.settled:
            bad += self._joint_errors()
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def settled(self) -> bool:
        """Whether no small-set recipe can change a setting: none applies, or all it adapts were given."""
        return not self.small_set or set(ADAPTED) <= set(self.fixed)

    def _joint_errors(self):
        bad = []
        if self.warmup_epochs > self.epochs:
            bad.append(f"warmup_epochs must be in [0, epochs] = [0, {self.epochs}], got {self.warmup_epochs}")
        if self.mixing and self.batch_size % 2:
            bad.append(f"mixup/cutmix mix each batch with its reverse: batch_size must be even, got {self.batch_size}")
        return bad

    def check_joint(self):
        """The rules between settings (a warm-up within the run, an even batch to mix): checked when
        built where the config is settled, otherwise once the training set has decided them."""
        if self._joint_errors():
            raise ValueError("; ".join(self._joint_errors()))

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def augmenting(self) -> bool:
        return self.aa != NO_AUGMENT

    def for_device(self, device_type: str) -> "FinetuneConfig":
        """This config with the device's defaults where `precision` and `workers` are None: bf16
        autocast and 10 image-decoding processes per GPU on CUDA; fp32 and the images decoded in
        the training process on CPU."""
        workers = self.workers if self.workers is not None else 10 if device_type == "cuda" else 0
        return dataclasses.replace(self, precision=self.precision or default_precision(device_type), workers=workers)


def config_for(model: str, **settings) -> FinetuneConfig:
    """A FinetuneConfig whose unset epochs, layer_decay and drop_path take the model's recipe;
    the settings given are `fixed`: a small-set recipe keeps them."""
    return FinetuneConfig(model=model, **{**MODEL_DEFAULTS.get(model, {}), **settings},
                          fixed=tuple(sorted(settings)))
