"""What the launchers read from the environment. The kernels import nothing of mage_fast, so
the interpreter switch is read here, and importing this module (which every kernel module does
before its first @triton.jit) is what makes MAGE_FAST_TRITON_INTERPRET=1 take effect."""
import os


def interpreting() -> bool:
    """Triton kernels run on CPU tensors under Triton's interpreter (slow; for tests)."""
    return os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1" or os.environ.get("TRITON_INTERPRET") == "1"


if os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1":
    # Triton reads it when a @triton.jit decorator runs.
    os.environ["TRITON_INTERPRET"] = "1"
