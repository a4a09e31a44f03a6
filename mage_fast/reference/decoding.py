"""One step of MAGE's iterative decoding, defined so that C++ and CUDA can match it bit for bit.

The algorithm is the official one (gen_img_uncond.py): sample a token at every unknown
position from softmax(logits), score it by log p + tau_t * Gumbel, and send the mask_len
lowest-scoring positions back to the mask. What is pinned down here, beyond the official
code, is every floating-point operation:

- the random numbers come from Philox (see rng.py), keyed by (seed, step, position, stream);
- exp and log are evaluated by fixed polynomials made only of IEEE-754 +, -, *, / (each
  correctly rounded everywhere, with FMA contraction off), never by a libm;
- sums run in a fixed order.

The categorical draw is by inverse CDF with one uniform per token: the V logits of a row are
split into 32 lanes (lane l holds columns l, l+32, l+64, ...), each lane summed in column
order, the lanes prefix-summed in lane order; the uniform picks a lane, then a column inside
it. This is an exact draw from softmax(logits) (up to float rounding of the sums) that reads
each logit once and needs one exp per logit, so the CUDA op stays bandwidth-bound. Ties in
the confidence ranking go to the lower position, so exactly mask_len positions are masked.
"""
import math

import torch

from ..configs import MASK_ID
from .rng import STREAM_GUMBEL, STREAM_SAMPLE, uniform

LANES = 32

# float32 constants, written as hex floats (exact) and shared with csrc/decode_math.h.
LOG2E = float.fromhex("0x1.715476p+0")
LN2_HI = float.fromhex("0x1.62e4p-1")       # 17 significant bits: e * LN2_HI is exact for |e| < 128
LN2_LO = float.fromhex("0x1.7f7d1cp-20")
SQRT2 = float.fromhex("0x1.6a09e6p+0")
EXP_UNDERFLOW = -80.0                          # exp below this counts as 0
# 2^r on |r| <= 1/2, degree 5, constant term exactly 1 (a near-minimax fit of the relative
# error, rounded to float32): under 2e-7 relative as evaluated in float32 by _horner.
EXP2_COEFFS = [float.fromhex(h) for h in (
    "0x1p+0", "0x1.62e42ap-1", "0x1.ebf9bcp-3", "0x1.c6b752p-5", "0x1.3cea88p-7", "0x1.5bba14p-10")]
# 2/(2n+1), n = 0..4: log(m) = f * sum_n LOG_COEFFS[n] f^(2n), f = (m-1)/(m+1)
LOG_COEFFS = [float.fromhex(h) for h in (
    "0x1p+1", "0x1.555556p-1", "0x1.99999ap-2", "0x1.24924ap-2", "0x1.c71c72p-3")]


def _horner(coeffs, x):
    acc = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * x + c
    return acc


def exact_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) for float32 x <= 0 as 2^y, y = x log2(e) rounded once: k = round(y), r = y - k
    (exact), a polynomial for 2^r, times 2^k. Rounding y costs up to |x| 2^-24 relative, which
    no sampling test can see, and saves a third of the operations of a two-constant reduction:
    the CUDA op does one exp per logit and must stay bound by memory, not by arithmetic."""
    y = x.clamp(min=EXP_UNDERFLOW) * LOG2E
    k = torch.round(y)                          # round half to even, as rintf
    two_k = ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(x < EXP_UNDERFLOW, torch.zeros_like(x), _horner(EXP2_COEFFS, y - k) * two_k)


def exact_log(x: torch.Tensor) -> torch.Tensor:
    """log(x) for normal float32 x > 0: x = 2^e m with m in [sqrt(1/2), sqrt(2)), atanh series."""
    bits = x.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > SQRT2
    m = torch.where(big, m * 0.5, m)
    e = (e + big.to(torch.int32)).to(torch.float32)
    f = (m - 1.0) / (m + 1.0)
    log_m = f * _horner(LOG_COEFFS, f * f)
    return e * LN2_HI + (log_m + e * LN2_LO)


def gumbel(u: torch.Tensor) -> torch.Tensor:
    return -exact_log(-exact_log(u))


def _sequential_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Inclusive prefix sum along the last dim, strictly left to right."""
    out = torch.empty_like(x)
    acc = torch.zeros_like(x[..., 0])
    for i in range(x.shape[-1]):
        acc = acc + x[..., i]
        out[..., i] = acc
    return out


def _first_true_else_last(cross: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Index of the first True of `cross` along the last dim; where there is none (a rounding
    corner), the last index where `positive` holds."""
    idx = torch.arange(cross.shape[-1], device=cross.device)
    first = torch.where(cross, idx, cross.shape[-1]).amin(-1)
    last = torch.where(positive, idx, -1).amax(-1)
    return torch.where(first < cross.shape[-1], first, last)


def sample_categorical(logits: torch.Tensor, u: torch.Tensor):
    """Draw one column per row of logits [..., V] from softmax(logits) with uniforms u [...].
    Returns (ids [...] int64, log p of the drawn column [...] float32)."""
    logits = logits.float()
    v = logits.shape[-1]
    pad = (-v) % LANES
    m = logits.amax(-1, keepdim=True)
    e = exact_exp(logits - m)
    e = torch.nn.functional.pad(e, (0, pad))                  # zeros: exact no-ops in sums
    cols = e.unflatten(-1, (-1, LANES))                       # [..., J, lane]; column = 32 j + lane
    lane_sum = _sequential_cumsum(cols.transpose(-1, -2))[..., -1]   # [..., lane], over j in order
    lane_end = _sequential_cumsum(lane_sum)                   # inclusive prefix over lanes
    total = lane_end[..., -1]
    threshold = u * total
    lane = _first_true_else_last(lane_end > threshold.unsqueeze(-1), lane_sum > 0)
    lane_start = torch.where(lane > 0, lane_end.gather(-1, (lane - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
    in_lane = cols.gather(-1, lane[..., None, None].expand(*cols.shape[:-1], 1)).squeeze(-1)  # [..., J]
    j = _first_true_else_last(_sequential_cumsum(in_lane) > (threshold - lane_start).unsqueeze(-1), in_lane > 0)
    ids = j * LANES + lane
    log_p = (logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - m.squeeze(-1)) - exact_log(total)
    return ids, log_p


def mask_ratio(step: int, num_iter: int) -> float:
    """Cosine schedule: the fraction of tokens still masked after step `step` (0-based)."""
    return math.cos(math.pi / 2.0 * (step + 1) / num_iter)


def choice_tau(step: int, num_iter: int, choice_temperature: float) -> float:
    """Gumbel scale on the confidence at this step, rounded to float32 as every backend uses it."""
    return float(torch.tensor(choice_temperature * (1.0 - (step + 1) / num_iter), dtype=torch.float32))


def mask_lengths(num_unknown, num_initial_unknown, step: int, num_iter: int):
    """How many positions to send back to the mask: max(1, min(#unknown - 1,
    floor(N0 * mask_ratio))), and 0 where nothing is unknown (nothing left to choose from)."""
    target = torch.floor(num_initial_unknown.to(torch.float64) * mask_ratio(step, num_iter)).to(torch.int64)
    length = torch.maximum(torch.ones_like(num_unknown), torch.minimum(num_unknown - 1, target))
    return torch.where(num_unknown > 0, length, torch.zeros_like(length))


def schedule(num_iter: int, num_tokens: int = 256):
    """Tokens fixed at each step when all num_tokens start unknown (the last step fixes all)."""
    unknown, fixed = num_tokens, []
    for step in range(num_iter):
        ratio = mask_ratio(step, num_iter)
        left = 0 if step == num_iter - 1 else max(1, min(unknown - 1, math.floor(num_tokens * ratio)))
        fixed.append(unknown - left)
        unknown = left
    return fixed


def decoding_step(logits, ids, seeds, step: int, num_iter: int, choice_temperature: float,
                  num_initial_unknown=None, noise=None):
    """One decoding step.

    logits [B, N, V] (any float dtype), ids [B, N] int64 with MASK_ID where unknown,
    seeds [B] int64, num_initial_unknown [B] (default N). noise: optional (u_sample,
    u_gumbel), each [B, N] float32 in (0, 1), in place of the Philox draws.
    Returns (next_ids with the re-masked positions set to MASK_ID, filled ids).
    """
    b, n, _ = logits.shape
    if noise is None:
        noise = (uniform(seeds, step, n, STREAM_SAMPLE), uniform(seeds, step, n, STREAM_GUMBEL))
    u_sample, u_gumbel = (t.to(device=logits.device, dtype=torch.float32) for t in noise)
    unknown = ids == MASK_ID
    sampled, log_p = sample_categorical(logits, u_sample)
    filled = torch.where(unknown, sampled, ids)
    confidence = log_p + choice_tau(step, num_iter, choice_temperature) * gumbel(u_gumbel)
    confidence = torch.where(unknown, confidence, torch.inf)
    if num_initial_unknown is None:
        num_initial_unknown = torch.full((b,), n, dtype=torch.int64, device=ids.device)
    length = mask_lengths(unknown.sum(-1), num_initial_unknown.to(ids.device), step, num_iter)
    order = torch.argsort(confidence, dim=-1, stable=True)      # ties: lower position first
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=ids.device).expand(b, n))
    remask = rank < length.unsqueeze(-1)
    return torch.where(remask, MASK_ID, filled), filled
