"""Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11) in plain PyTorch.

Every random number of generation is a pure function of (seed, step, position, stream):
    key     = (seed mod 2^32, seed >> 32)      the image's 64-bit seed
    counter = (position, step, stream, 0)
    u       = uniform from output word 0
so an image never depends on its batch, its rank or a resume, and csrc/ reproduces it bit
for bit on CPU and CUDA. Words are held in int64 tensors (uint32 values): products of two
words are split into 16-bit halves so they never overflow.
"""
import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85   # Weyl key increments
_MASK32 = 0xFFFFFFFF
ROUNDS = 10

# Stream ids used by decoding (csrc/decode_math.h uses the same numbers).
STREAM_SAMPLE = 0   # the categorical draw of a token
STREAM_GUMBEL = 1   # the Gumbel noise on its confidence


def _mulhilo(multiplier: int, x: torch.Tensor):
    """(high, low) 32-bit words of multiplier * x, for x < 2^32 held in int64."""
    p_lo = x * (multiplier & 0xFFFF)
    p_hi = x * (multiplier >> 16)
    low = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    high = (p_hi + (p_lo >> 16)) >> 16
    return high, low


def philox4x32(counter, key, rounds: int = ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 words (broadcast together).
    counter: 4 tensors, key: 2 tensors -> 4 tensors."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = (torch.as_tensor(k, dtype=torch.int64) for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def word_to_uniform(word: torch.Tensor) -> torch.Tensor:
    """uint32 word -> float32 in [2^-24, 1 - 2^-24]: 23 random bits and the lowest bit set,
    so u is exact in float32 and neither log(u) nor log(-log(u)) can be infinite."""
    odd = (word >> 8) | 1
    return odd.to(torch.float32) * 2.0 ** -24


def uniform(seeds: torch.Tensor, step: int, num_positions: int, stream: int) -> torch.Tensor:
    """[B] int64 seeds -> [B, num_positions] float32 uniforms for (step, stream)."""
    seeds = seeds.to(torch.int64).reshape(-1, 1)
    positions = torch.arange(num_positions, dtype=torch.int64, device=seeds.device).reshape(1, -1)
    zero = torch.zeros((), dtype=torch.int64, device=seeds.device)
    key = (seeds & _MASK32, (seeds >> 32) & _MASK32)
    word = philox4x32((positions, zero + step, zero + stream, zero), key)[0]
    return word_to_uniform(word)
