"""One step of iterative decoding as a graph-safe custom op (csrc/decode_step.*):
torch.ops.mage_fast.decode_step{,_with_noise}, CPU (C++) and CUDA, defined in the extension
mage_fast._C (no Triton kernel). Its definition is the reference model's decoding_step
(`decode_step_ref`), which it matches bit for bit; not differentiable."""
import torch

from ..backends import extension_info, register_backend
from ..configs import MASK_ID
from ..reference.decoding import decoding_step
from ..validation import FLOAT_TYPES, check_decoding, describe

_BUILT = extension_info()  # fixed for the process; read as a constant under torch.compile
_MAX_CLASSES, _MAX_POSITIONS = 1024, 1024  # csrc/decode_math.h's limits


# ---------------------------------------------------------------- backend

@register_backend("decode_step")
def backend(device_type: str, dtype=None):
    if not _BUILT["built"]:
        return "pytorch", "mage_fast._C is not built: the reference decoding_step (same ids, much slower)"
    if device_type == "cuda" and not _BUILT["cuda"]:
        return "pytorch", "mage_fast._C was built without CUDA: the reference decoding_step on the GPU (slow)"
    return ("cuda" if device_type == "cuda" else "c++"), "mage_fast._C"


# ---------------------------------------------------------------- input checks

def _check_like(t, name, dtype, shape, logits):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype:
        raise TypeError(f"decode_step: {name} must be {dtype}, got {getattr(t, 'dtype', type(t).__name__)}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"decode_step: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != logits.device:
        raise ValueError(f"decode_step: {name} is on {t.device} but logits are on {logits.device}")
    if not t.is_contiguous():
        raise ValueError(f"decode_step: {name} must be contiguous")


def _check(logits, ids, step, num_iter, choice_temperature, num_initial_unknown, per_image=(), per_position=()):
    """The extension op's input checks, with its messages, for the PyTorch path that stands in
    for it when it is not built and for its fake implementations: the same bad input fails the
    same way on every machine."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"decode_step: logits must be [batch, positions, classes], got {describe(logits)}")
    if logits.dtype not in FLOAT_TYPES:
        raise TypeError(f"decode_step: logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.stride(2) != 1:
        raise ValueError("decode_step: logits must be contiguous along the classes")
    batch, positions, classes = logits.shape
    if not 1 <= classes <= _MAX_CLASSES:
        raise ValueError(f"decode_step: supports 1 to {_MAX_CLASSES} classes (MAGE's codebook is 1024), got {classes}")
    if not 1 <= positions <= _MAX_POSITIONS:
        raise ValueError(f"decode_step: supports 1 to {_MAX_POSITIONS} positions, got {positions}")
    if not (num_iter >= 1 and 0 <= step < num_iter):
        raise ValueError(f"decode_step: need 0 <= step < num_iter, got step {step}, num_iter {num_iter}")
    check_decoding(num_iter, choice_temperature, "decode_step: ")
    _check_like(ids, "ids", torch.int64, (batch, positions), logits)
    for name, t in per_image:
        _check_like(t, name, torch.int64, (batch,), logits)
    for name, t in per_position:
        _check_like(t, name, torch.float32, (batch, positions), logits)
    if num_initial_unknown is not None:
        _check_like(num_initial_unknown, "num_initial_unknown", torch.int64, (batch,), logits)


# ---------------------------------------------------------------- custom ops
# The ops themselves are registered by mage_fast._C; their fakes are here.
if _BUILT["built"]:
    # The op's checks here too: meta tensors (alone, or mixed with others) and torch.compile's
    # fake tensors reach only these, and would otherwise get outputs for inputs the op refuses.
    @torch.library.register_fake("mage_fast::decode_step")
    def _(logits, ids, seeds, step, num_iter, choice_temperature, num_initial_unknown=None, mask_id=MASK_ID):
        _check(logits, ids, step, num_iter, choice_temperature, num_initial_unknown, per_image=[("seeds", seeds)])
        return torch.empty_like(ids), torch.empty_like(ids)

    @torch.library.register_fake("mage_fast::decode_step_with_noise")
    def _(logits, ids, u_sample, u_gumbel, step, num_iter, choice_temperature, num_initial_unknown=None,
          mask_id=MASK_ID):
        _check(logits, ids, step, num_iter, choice_temperature, num_initial_unknown,
               per_position=[("u_sample", u_sample), ("u_gumbel", u_gumbel)])
        return torch.empty_like(ids), torch.empty_like(ids)


# ---------------------------------------------------------------- dispatch

def decode_step(logits, ids, seeds, step: int, num_iter: int, choice_temperature: float,
                num_initial_unknown=None):
    """logits [B, N, V<=1024] (fp32/fp16/bf16), ids [B, N] int64 (MASK_ID where unknown), seeds
    [B] int64 -> (next ids with the re-masked positions set to MASK_ID, filled ids).
    num_initial_unknown [B] int64: the count the schedule is taken over (default N)."""
    if backend(logits.device.type)[0] == "pytorch":
        _check(logits, ids, step, num_iter, choice_temperature, num_initial_unknown, per_image=[("seeds", seeds)])
        return decode_step_ref(logits, ids, seeds, step, num_iter, choice_temperature, num_initial_unknown)
    return torch.ops.mage_fast.decode_step(logits, ids, seeds, step, num_iter, float(choice_temperature),
                                           num_initial_unknown, MASK_ID)


def decode_step_with_noise(logits, ids, u_sample, u_gumbel, step: int, num_iter: int,
                           choice_temperature: float, num_initial_unknown=None):
    """decode_step with the uniforms given ([B, N] float32 in (0, 1)) instead of drawn."""
    if backend(logits.device.type)[0] == "pytorch":
        _check(logits, ids, step, num_iter, choice_temperature, num_initial_unknown,
               per_position=[("u_sample", u_sample), ("u_gumbel", u_gumbel)])
        return decode_step_ref(logits, ids, None, step, num_iter, choice_temperature, num_initial_unknown,
                               noise=(u_sample, u_gumbel))
    return torch.ops.mage_fast.decode_step_with_noise(logits, ids, u_sample, u_gumbel, step, num_iter,
                                                      float(choice_temperature), num_initial_unknown, MASK_ID)


# ---------------------------------------------------------------- reference

# The reference model's decoding step is the op's definition: the oracle itself, not a copy.
decode_step_ref = decoding_step
