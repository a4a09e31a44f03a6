"""The fast ops behind the MAGE modules. Each op lives in its own module, registers how it
runs with mage_fast.backends.register_op, and has a reference beside it that tests hold it to."""
from .decode_step import decode_step, decode_step_with_noise  # noqa: F401
from .attention import attention, attention_qkv  # noqa: F401
from .token_drop import embed_and_drop, mask_sets, restore  # noqa: F401
from .vq import vq_nearest  # noqa: F401
from .mlm_loss import mlm_loss  # noqa: F401
