"""The fast ops behind the MAGE modules. Each op lives in its own module, registers how it
runs with mage_fast.backends.register_op, and has a reference beside it that tests hold it to."""
from .decode_step import decode_step, decode_step_with_noise  # noqa: F401
