"""The settings of a sampling run: what `mage-fast sample` builds from its flags, and what
`sample` takes from Python."""
import dataclasses
from typing import Optional, Union

from ..settings import ModelSettings, check_settings, setting
from ..validation import CHOICE_TEMPERATURE, COUNT, NUM_ITER, PRECISIONS, Numbers, default_precision


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleConfig(ModelSettings):
    """A folder of generated images for FID: image i of OUT from seed (seed << 32) + i. Checked
    when built: a ValueError names the field. `dtype` None: chosen for the device (see
    for_device); `batch_size` "auto": the largest batch whose CUDA graph fits (4 on CPU), or
    the batch of the run OUT holds; `device` None: CUDA if available (under torchrun, the GPU of
    the local rank)."""
    out: str = setting(path=True)       # folder of PNGs (what torch-fidelity reads); OUT.npz beside it
    num_images: int = setting(50000, COUNT)
    num_iter: int = setting(12, NUM_ITER)               # decoding steps
    temperature: float = setting(4.5, CHOICE_TEMPERATURE)   # of the confidence noise
    seed: int = setting(0, Numbers(int, 0, 2**31, high_open=True))
    batch_size: Union[str, int] = setting("auto", Numbers(int, 1, words=("auto",)))
    dtype: Optional[str] = setting(None, choices=PRECISIONS)    # transformer and VQGAN precision
    npz: bool = False           # also OUT.npz: uint8 [N, 256, 256, 3] under arr_0
    device: Optional[str] = None
    cuda_graphs: bool = True    # False: the decoding loop runs eagerly (for debugging)

    def __post_init__(self):
        check_settings(self)

    def for_device(self, device_type: str) -> "SampleConfig":
        """This config with the device's dtype where `dtype` is None: bf16 on CUDA, fp32 on CPU."""
        return dataclasses.replace(self, dtype=self.dtype or default_precision(device_type))
