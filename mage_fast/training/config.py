"""The settings of a pretraining run: what `mage-fast train` builds from its flags, and what
`train` takes from Python."""
import dataclasses
from typing import Optional

from ..model_settings import ModelSettings
from ..settings import check_settings, setting
from ..validation import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, PRECISIONS, Numbers, default_precision
from .contrastive import POOLS, VIEW_PRESETS, ContrastiveSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelSettings):
    """Every setting of a pretraining run; the defaults are the official recipe's. Checked when
    built: a ValueError names the field. `precision` and `workers` left None are chosen for the
    device the run gets (see for_device); `device` None: CUDA if available (under torchrun,
    the GPU of the local rank)."""
    data: Optional[str] = setting(None, path=True)      # image folder: class subfolders or images inside
    tokens: Optional[str] = setting(None, path=True)    # or a token cache of `mage-fast tokenize`
    out: str = setting(path=True)       # checkpoints and log.jsonl
    skip_unreadable: bool = False       # leave out files of `data` that are not images (default: refuse them)
    dropout: float = setting(0.1, Numbers(float, 0, 1, high_open=True))
    batch_size: int = setting(64, COUNT)        # images per process per forward
    accum_iter: int = setting(1, COUNT)         # forwards accumulated per optimizer step
    blr: float = setting(1.5e-4, POSITIVE)      # lr = blr * effective batch / 256 ...
    lr: Optional[float] = setting(None, POSITIVE)   # ... unless the peak lr is given
    min_lr: float = setting(0.0, NON_NEGATIVE)
    weight_decay: float = setting(0.05, NON_NEGATIVE)
    epochs: int = setting(1600, COUNT)
    warmup_epochs: float = setting(40, NON_NEGATIVE)
    clip_grad: float = setting(3.0, NON_NEGATIVE)   # 0: no clipping
    precision: Optional[str] = setting(None, choices=PRECISIONS)
    seed: int = setting(0, NON_NEGATIVE_INT)
    workers: Optional[int] = setting(None, NON_NEGATIVE_INT)
    resume: str = setting("auto", path=True)    # auto, none, or a checkpoint of a run
    save_every: int = setting(1000, NON_NEGATIVE_INT)   # steps; 0: at epoch ends only
    keep_every: int = setting(40, NON_NEGATIVE_INT)     # epochs; 0: the last only
    max_steps: Optional[int] = setting(None, COUNT)
    compile: bool = False
    log_every: int = setting(20, COUNT)
    device: Optional[str] = None
    # Class-conditional MAGE (docs/mage.md#class-conditional-generation): labels from the class
    # subfolders (a cache: its index's), num_classes None: the data's count; each label becomes
    # "no class" with probability label_drop; the encoder stays frozen unless train_encoder.
    class_conditional: bool = False
    num_classes: Optional[int] = setting(None, Numbers(int, 2))
    label_drop: float = setting(0.1, Numbers(float, 0, 1, high_open=True))
    train_encoder: bool = False
    # MAGE-C (docs/mage.md#mage-c): two views of each image, MLM + contrastive_weight x NT-Xent of
    # the projected, pooled encoder output. Defaults from the closest published recipes: the
    # weight CAN's contrastive-to-reconstruction ratio, the temperature SimCLR's and CAN's, the
    # head MoCo v3's widths with SimCLR's / CAN's layout, the views SimCLR's.
    contrastive: bool = False
    contrastive_weight: float = setting(0.045, NON_NEGATIVE)
    contrastive_temperature: float = setting(0.1, POSITIVE)
    contrastive_pool: str = setting("avg", choices=POOLS)
    contrastive_layers: int = setting(3, COUNT)
    contrastive_hidden: int = setting(4096, COUNT)
    contrastive_dim: int = setting(256, COUNT)
    contrastive_views: str = setting("simclr", choices=VIEW_PRESETS)

    def __post_init__(self):
        check_settings(self)
        if (self.data is None) == (self.tokens is None):
            raise ValueError("give exactly one of data (an image folder) and tokens (a token cache), got "
                             f"data={self.data!r}, tokens={self.tokens!r}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs] = [0, {self.epochs}], got {self.warmup_epochs}")
        if not self.class_conditional:
            given = [name for name, default in (("num_classes", None), ("label_drop", 0.1), ("train_encoder", False))
                     if getattr(self, name) != default]
            if given:
                raise ValueError(f"{', '.join(given)} need class_conditional")
        given = [f.name for f in dataclasses.fields(self)
                 if f.name.startswith("contrastive_") and getattr(self, f.name) != f.default]
        if given and not self.contrastive:
            raise ValueError(f"{', '.join(given)} need contrastive")
        if self.contrastive and self.class_conditional:
            raise ValueError("contrastive (MAGE-C) and class_conditional training cannot be combined")

    @property
    def class_settings(self) -> Optional[dict]:
        """What a resume must keep of a class-conditional run (None: not one); num_classes as
        the run resolved it from the data is recorded beside it (train_state)."""
        if not self.class_conditional:
            return None
        return {"label_drop": self.label_drop, "train_encoder": self.train_encoder}

    @property
    def contrastive_settings(self) -> Optional[ContrastiveSettings]:
        """A MAGE-C run's settings (None: a MAGE run), which a resume must keep."""
        if not self.contrastive:
            return None
        return ContrastiveSettings(**{f.name: getattr(self, "contrastive_" + f.name)
                                      for f in dataclasses.fields(ContrastiveSettings)})

    def for_device(self, device_type: str) -> "TrainConfig":
        """This config with the device's defaults where `precision` and `workers` are None: bf16
        autocast on CUDA, with 10 image-decoding processes per GPU (4 loading a token cache,
        which has no image to decode); fp32 and the data loaded in the training process on CPU."""
        if self.workers is not None:
            workers = self.workers
        else:
            workers = (4 if self.tokens else 10) if device_type == "cuda" else 0
        return dataclasses.replace(self, precision=self.precision or default_precision(device_type), workers=workers)
