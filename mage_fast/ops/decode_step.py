"""One step of iterative decoding as a graph-safe custom op (csrc/decode_step.*):
torch.ops.mage_fast.decode_step{,_with_noise}, CPU (C++) and CUDA. Its definition is the
reference mage_fast.reference.decoding_step, which it matches bit for bit."""
import torch

from ..backends import extension_info, register_op
from ..configs import MASK_ID
from ..reference.decoding import decoding_step


_BUILT = extension_info()  # fixed for the process; read as a constant under torch.compile


@register_op("decode_step")
def backend(device_type: str):
    if not _BUILT["built"]:
        return "pytorch", "mage_fast._C is not built: the reference decoding_step (same ids, much slower)"
    if device_type == "cuda" and not _BUILT["cuda"]:
        return "pytorch", "mage_fast._C was built without CUDA: the reference decoding_step on the GPU (slow)"
    return ("cuda" if device_type == "cuda" else "c++"), "mage_fast._C"


if _BUILT["built"]:
    def _fake(logits, ids, *args, **kwargs):
        return torch.empty_like(ids), torch.empty_like(ids)

    torch.library.register_fake("mage_fast::decode_step")(_fake)
    torch.library.register_fake("mage_fast::decode_step_with_noise")(_fake)


def decode_step(logits, ids, seeds, step: int, num_iter: int, choice_temperature: float,
                num_initial_unknown=None):
    """logits [B, N, V<=1024] (fp32/fp16/bf16), ids [B, N] int64 (MASK_ID where unknown), seeds
    [B] int64 -> (next ids with the re-masked positions set to MASK_ID, filled ids).
    num_initial_unknown [B] int64: the count the schedule is taken over (default N)."""
    if backend(logits.device.type)[0] == "pytorch":
        return decoding_step(logits, ids, seeds, step, num_iter, choice_temperature, num_initial_unknown)
    return torch.ops.mage_fast.decode_step(logits, ids, seeds, step, num_iter, float(choice_temperature),
                                           num_initial_unknown, MASK_ID)


def decode_step_with_noise(logits, ids, u_sample, u_gumbel, step: int, num_iter: int,
                           choice_temperature: float, num_initial_unknown=None):
    """decode_step with the uniforms given ([B, N] float32 in (0, 1)) instead of drawn."""
    if backend(logits.device.type)[0] == "pytorch":
        return decoding_step(logits, ids, None, step, num_iter, choice_temperature, num_initial_unknown,
                             noise=(u_sample, u_gumbel))
    return torch.ops.mage_fast.decode_step_with_noise(logits, ids, u_sample, u_gumbel, step, num_iter,
                                                      float(choice_temperature), num_initial_unknown, MASK_ID)
