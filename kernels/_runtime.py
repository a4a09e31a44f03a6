"""What the launchers read from the environment. The kernels import nothing of mage_fast, so
the interpreter switch is read here, and importing this module (which every kernel module does
before its first @triton.jit) is what makes MAGE_FAST_TRITON_INTERPRET=1 take effect."""
import os


def interpreting() -> bool:
    """Triton kernels run on CPU tensors under Triton's interpreter (slow; for tests)."""
    return os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1" or os.environ.get("TRITON_INTERPRET") == "1"


def tma_allowed() -> bool:
    """Whether attention's Hopper configs (TMA) may be autotuned: MAGE_FAST_NO_TMA=1 leaves them
    out, a way around them should one fail at run time on a GPU (they are checked on one only by
    the GPU session's tests)."""
    return os.environ.get("MAGE_FAST_NO_TMA") != "1"


if os.environ.get("MAGE_FAST_TRITON_INTERPRET") == "1":
    # Triton reads it when a @triton.jit decorator runs.
    os.environ["TRITON_INTERPRET"] = "1"


def programs_per_sm(regs: int, warps: int, shared: int, regs_per_sm: int, shared_per_sm: int, warps_per_sm: int,
                    reg_unit: int = 256, shared_reserved: int = 1024, max_programs: int = 32) -> int:
    """Programs (thread blocks) of a compiled kernel one SM holds at once, as the CUDA occupancy
    calculator counts them: registers are allocated per warp in units of reg_unit, and the runtime
    reserves shared_reserved bytes of shared memory per block. 0: the kernel cannot launch."""
    per_warp = -(-max(regs, 1) * 32 // reg_unit) * reg_unit
    by_shared = shared_per_sm // (shared + shared_reserved)
    return min(regs_per_sm // per_warp // warps, by_shared, warps_per_sm // warps, max_programs)
