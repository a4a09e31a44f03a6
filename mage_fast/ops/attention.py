"""Attention for MAGE's transformer blocks: softmax(q k^T * scale) v with fp32 scores, the row
max subtracted (the official stability fix), optional per-sample key lengths and attention
dropout. Fused Triton kernels (mage_fast.kernels.attention) on CUDA and under the interpreter;
PyTorch otherwise."""
import numbers

import torch
import torch.nn.functional as F

from ..backends import register_op, triton_backend, triton_version, uses_triton
from ..validation import FLOAT_TYPES

if triton_version() is not None:
    from mage_fast.kernels.attention import fused_attention

MAX_HEAD_DIM = 128

register_op("attention")(triton_backend)
MAX_DROPOUT = 1.0 - 2.0**-16  # above it, p rounds to 1 in 16 bits and 1/(1-p) is infinite


def attention(q, k, v, *, key_lengths=None, dropout_p=0.0, scale=None, seed=None):
    """softmax(q k^T * scale) v for q, k, v [B, H, N, d] (SDPA's layout) -> [B, H, N, d] in q's
    dtype (fp32, fp16 or bf16; fp32 stays true fp32).

    key_lengths: [B] integers; keys at index >= key_lengths[b] are masked for every query of
    sample b (values above N mean N; a sample with no key, 0 or less, gets zero output and zero
    gradients). dropout_p: attention dropout on the probabilities, scaled by 1/(1-p), in
    [0, 1 - 2^-16] (the kernels round p to a multiple of 2^-16). seed: int or one-element int64
    tensor on q's device (read by the kernel, so a CUDA-graph replay can take a new one); None
    draws one from torch's CPU generator (a graph break under torch.compile: compiled code and
    CUDA graphs pass a tensor).
    The PyTorch fallback draws its mask from torch's RNG instead (same distribution)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"attention: {name} must be a 4-D tensor [B, H, N, d], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"attention: q, k, v must share dtype and device, got {q.dtype}/{q.device}, "
                         f"{k.dtype}/{k.device}, {v.dtype}/{v.device}")
    key_lengths, scale, seed = _check(q, q.shape[0], q.shape[-1], key_lengths, dropout_p, scale, seed)
    if uses_triton(q.device, q.dtype):
        return fused_attention(q, k, v, q.shape[1], key_lengths, seed, dropout_p, scale)
    return _attention_pytorch(q, k, v, key_lengths, dropout_p, scale)


def attention_qkv(qkv, num_heads, *, key_lengths=None, dropout_p=0.0, scale=None, seed=None):
    """Attention straight from the fused qkv Linear output [B, N, 3D] (last dim: q | k | v,
    heads contiguous in each) to the [B, N, D] the proj Linear takes, heads concatenated:
    attention(q, k, v).transpose(1, 2).reshape(B, N, D) with no permute or copy on either side;
    the gradient comes back as [B, N, 3D]. Other arguments as attention()."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        raise ValueError(f"attention_qkv: qkv must be a 3-D tensor [B, N, 3*D], got "
                         f"{tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__}")
    if not isinstance(num_heads, numbers.Integral) or num_heads < 1 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"attention_qkv: last dim {qkv.shape[-1]} is not 3 * num_heads * head_dim "
                         f"for num_heads={num_heads!r}")
    B, N, D3 = qkv.shape
    key_lengths, scale, seed = _check(qkv, B, D3 // (3 * num_heads), key_lengths, dropout_p, scale, seed)
    if uses_triton(qkv.device, qkv.dtype):
        return fused_attention(qkv, None, None, num_heads, key_lengths, seed, dropout_p, scale)
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    return _attention_pytorch(q, k, v, key_lengths, dropout_p, scale).transpose(1, 2).reshape(B, N, D3 // 3)


def _check(x, batch, head_dim, key_lengths, dropout_p, scale, seed):
    """Validates what both entry points share; returns (key_lengths contiguous, scale as a float,
    seed as a device tensor or None). Nothing here reads tensor values: no host sync."""
    if x.dtype not in FLOAT_TYPES:
        raise ValueError(f"attention: dtype {x.dtype} is not supported (fp32, fp16, bf16)")
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {head_dim} is not supported (a multiple of 8 up to {MAX_HEAD_DIM})")
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor) or key_lengths.shape != (batch,):
            raise ValueError(f"attention: key_lengths must be a tensor of shape [{batch}], got "
                             f"{getattr(key_lengths, 'shape', type(key_lengths).__name__)}")
        if key_lengths.dtype not in (torch.int32, torch.int64) or key_lengths.device != x.device:
            raise ValueError(f"attention: key_lengths must be int32/int64 on {x.device}, got "
                             f"{key_lengths.dtype} on {key_lengths.device}")
        key_lengths = key_lengths.contiguous()
    if not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p <= MAX_DROPOUT:
        raise ValueError(f"attention: dropout_p must be in [0, 1 - 2^-16] (the kernels' draws are 16-bit), "
                         f"got {dropout_p!r}")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if dropout_p == 0:
        return key_lengths, scale, None
    if seed is None:
        seed = int(torch.randint(2**62, ()).item())  # torch's default CPU generator: no device sync
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not -2**63 <= seed < 2**63:
            raise ValueError(f"attention: seed {seed} does not fit in int64")
        return key_lengths, scale, torch.full((1,), seed, dtype=torch.int64, device=x.device)
    if not isinstance(seed, torch.Tensor) or seed.numel() != 1 or seed.dtype != torch.int64 or seed.device != x.device:
        raise ValueError(f"attention: seed must be an int or a one-element int64 tensor on {x.device}, got {seed!r}")
    return key_lengths, scale, seed.reshape(1)


def _attention_pytorch(q, k, v, key_lengths, dropout_p, scale):
    """The same computation in PyTorch: scores in fp32 (max-subtracting softmax), dropout from
    torch's RNG."""
    mask = None
    if key_lengths is not None:
        # A sample without keys attends to key 0, then is zeroed: older SDPA gives NaN for rows
        # with no key, and NaN gradients with them.
        kl = key_lengths.view(-1, 1, 1, 1)
        mask = torch.arange(q.shape[-2], device=q.device) < kl.clamp(min=1)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p,
                                         scale=scale)
    if key_lengths is not None:
        out = out * (kl > 0)
    return out.to(q.dtype)
