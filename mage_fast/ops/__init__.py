"""The fast ops behind the MAGE modules, one module per op, each in the same order: its backend
(registered with mage_fast.backends), input checks, custom ops and their fakes, autograd,
dispatch (the public functions) and the reference `<op>_ref` the tests hold it to. Import the
functions from their module (`from mage_fast.ops.attention import attention_qkv`); importing
this package imports every op, so backend_report() lists them all."""
from . import attention, decode_step, mlm_loss, token_drop, vq  # noqa: F401
