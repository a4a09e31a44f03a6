"""The settings of a sampling run: what `mage-fast sample` builds from its flags, and what
`sample` takes from Python."""
import dataclasses
import logging
from typing import List, Optional, Union

from ..model_settings import ModelSettings
from ..settings import check_settings, setting
from ..validation import (
    CHOICE_TEMPERATURE,
    COUNT,
    GUIDANCE_SCALE,
    GUIDANCE_SCHEDULES,
    NUM_ITER,
    PRECISIONS,
    Numbers,
    default_precision,
)

log = logging.getLogger("mage_fast")

UNCONDITIONAL_IMAGES = 50000    # the FID set
IMAGES_PER_CLASS = 50           # x 1000 classes: the class-balanced 50,000
# Without a GPU and without a count given: a few images to look at. MAGE-B makes one in ~147 s
# on a two-core CPU (1.12 TFLOP: 12 steps and the VQGAN decode, ~7.6 GFLOP/s), so the FID set
# would take ~85 days; the warning gives the estimate for the run's model at that rate.
CPU_IMAGES = 8
CPU_IMAGES_PER_CLASS = 1
CPU_GFLOPS = 7.6


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig(ModelSettings):
    """A folder of generated images for FID: image i of OUT from seed (seed << 32) + i. Checked
    when built: a ValueError names the field. `num_images` None: 50,000, or for a
    class-conditional run len(classes) x images_per_class (image i of class
    classes[i // images_per_class]); on a CPU, where the FID set would take days, 8 images
    (class-conditional: 1 per class) with a warning that gives the estimate (see for_device);
    `dtype` None: chosen for the device (see for_device);
    `batch_size` "auto": the largest batch whose CUDA graph fits (4 on CPU), or the batch of
    the run OUT holds; `device` None: CUDA if available (under torchrun, the GPU of the local
    rank)."""
    out: str = setting(path=True)       # folder of PNGs (what torch-fidelity reads); OUT.npz beside it
    num_images: Optional[int] = setting(None, COUNT)
    num_iter: int = setting(12, NUM_ITER)               # decoding steps
    temperature: float = setting(4.5, CHOICE_TEMPERATURE)   # of the confidence noise
    seed: int = setting(0, Numbers(int, 0, 2**31, high_open=True))
    batch_size: Union[str, int] = setting("auto", Numbers(int, 1, words=("auto",)))
    dtype: Optional[str] = setting(None, choices=PRECISIONS)    # transformer and VQGAN precision
    npz: bool = False           # also OUT.npz: uint8 [N, 256, 256, 3] under arr_0
    device: Optional[str] = None
    cuda_graphs: bool = True    # False: the decoding loop runs eagerly (for debugging)
    # A class-conditional checkpoint: which classes (None: all; else "3,17,..."), how many
    # images each (None: 50), and the classifier-free guidance of every step.
    class_conditional: bool = False
    classes: Optional[str] = None
    images_per_class: Optional[int] = setting(None, COUNT)
    guidance_scale: float = setting(0.0, GUIDANCE_SCALE)
    guidance_schedule: str = setting("constant", choices=GUIDANCE_SCHEDULES)

    def __post_init__(self):
        check_settings(self)
        if not self.class_conditional:
            given = [name for name, default in (("classes", None), ("images_per_class", None),
                                                ("guidance_scale", 0.0)) if getattr(self, name) != default]
            if given:
                raise ValueError(f"{', '.join(given)} need class_conditional (a class-conditional checkpoint)")
        elif self.num_images is not None:
            raise ValueError("num_images of a class-conditional run is len(classes) x images_per_class: "
                             "give images_per_class instead")
        if self.classes is not None:
            parse_classes(self.classes)

    def for_device(self, device_type: str) -> "SampleConfig":
        """This config with the device's dtype where `dtype` is None: bf16 on CUDA, fp32 on CPU;
        on a CPU, a count not given (num_images, or images_per_class of a class-conditional run)
        becomes CPU_IMAGES (CPU_IMAGES_PER_CLASS), with a warning that estimates the default's
        time there."""
        changes = {"dtype": self.dtype or default_precision(device_type)}
        if device_type == "cpu" and not self.class_conditional and self.num_images is None:
            changes["num_images"] = CPU_IMAGES
            log.warning("no GPU: %d images (--num-images sets how many); %s", CPU_IMAGES,
                        self.cpu_estimate(UNCONDITIONAL_IMAGES, "the 50,000 of an FID set"))
        elif device_type == "cpu" and self.class_conditional and self.images_per_class is None:
            changes["images_per_class"] = CPU_IMAGES_PER_CLASS
            log.warning("no GPU: %d image per class (--images-per-class sets how many); %s", CPU_IMAGES_PER_CLASS,
                        self.cpu_estimate(1000 * IMAGES_PER_CLASS, f"the {IMAGES_PER_CLASS} of each of 1000 classes"))
        return dataclasses.replace(self, **changes)

    def cpu_estimate(self, images: int, what: str) -> str:
        """How long `images` would take on a CPU, from the model's FLOPs at CPU_GFLOPS."""
        from ..bench.flops import sample_flops_per_image
        from ..configs import CONFIGS
        seconds = sample_flops_per_image(CONFIGS[self.model], self.num_iter, self.guidance_scale > 0) / CPU_GFLOPS / 1e9
        total = seconds * images
        unit, name = next(u for u in ((86400, "days"), (3600, "hours"), (60, "minutes"), (1, "seconds"))
                          if total >= u[0] or u[0] == 1)
        span = f"{total / unit:.0f} {name}" if total >= 10 * unit else f"{total / unit:.1f} {name}"
        return f"{what} would take ~{span} ({self.model}: ~{seconds:.3g} s an image on a two-core CPU)"

    def class_list(self, num_classes: int) -> Optional[List[int]]:
        """The classes a class-conditional run generates, in order, among the model's
        num_classes (None: an unconditional run)."""
        if not self.class_conditional:
            return None
        classes = parse_classes(self.classes or "all")
        if classes is None:
            return list(range(num_classes))
        if max(classes) >= num_classes:
            raise ValueError(f"classes must lie in [0, {num_classes}) for this checkpoint, got {max(classes)}")
        return classes

    def per_class(self) -> int:
        return self.images_per_class or IMAGES_PER_CLASS

    def image_count(self, classes: Optional[List[int]]) -> int:
        """How many images the run makes, given class_list's classes."""
        if classes is None:
            return self.num_images or UNCONDITIONAL_IMAGES
        return len(classes) * self.per_class()


def parse_classes(text: str) -> Optional[List[int]]:
    """The classes `text` names: distinct class indices separated by commas, or 'all' (None: the
    model's number of classes decides)."""
    if text == "all":
        return None
    try:
        classes = [int(part) for part in text.split(",")]
    except ValueError:
        classes = []
    if not classes or min(classes) < 0 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be 'all' or distinct class indices >= 0 separated by commas, got {text!r}")
    return classes
