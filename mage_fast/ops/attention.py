"""Attention for MAGE's transformer blocks: softmax(q k^T * scale) v with fp32 scores, the row
max subtracted (the official stability fix), optional per-sample key lengths and attention
dropout. Fused Triton kernels (mage_fast.kernels.attention) on CUDA and under the interpreter,
as the custom ops mage_fast::attention_fwd/attention_bwd; PyTorch otherwise. `attention_ref`
is the oracle the tests hold both to."""
import numbers
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..backends import register_backend, triton_backend
from ..reference.rng import philox4x32
from ..validation import FLOAT_TYPES

MAX_HEAD_DIM = 128
DROP_BITS = 8  # the kernels' dropout draws: p is rounded to a multiple of 2^-8
MAX_DROPOUT = 1.0 - 2.0**-DROP_BITS  # above it, p rounds to 1 and 1/(1-p) is infinite


# ---------------------------------------------------------------- backend

backend = register_backend("attention")(triton_backend)


# ---------------------------------------------------------------- input checks

def _check_separate(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"attention: {name} must be a 4-D tensor [B, H, N, d], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"attention: q, k, v must share dtype and device, got {q.dtype}/{q.device}, "
                         f"{k.dtype}/{k.device}, {v.dtype}/{v.device}")


def _check_packed(qkv, num_heads):
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        raise ValueError(f"attention_qkv: qkv must be a 3-D tensor [B, N, 3*D], got "
                         f"{tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__}")
    if not isinstance(num_heads, numbers.Integral) or num_heads < 1 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(f"attention_qkv: last dim {qkv.shape[-1]} is not 3 * num_heads * head_dim "
                         f"for num_heads={num_heads!r}")


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
        raise ValueError(f"attention: dropout_p must be in [0, 1 - 2^-{DROP_BITS}] (the kernels' draws are "
                         f"{DROP_BITS}-bit), "
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


# ---------------------------------------------------------------- custom ops
# Both ops take q, k, v [B, H, N, d], or q the packed [B, N, 3D] qkv and k = v = None (then the
# output is [B, N, D] and the gradient [B, N, 3D]); seed: a one-element int64 tensor on the
# device, or None without dropout.

def _heads(x, num_heads, parts):
    """[B, N, parts*H*d] as `parts` [B, H, N, d] views (no copy): the fused qkv Linear output, or
    the [B, N, D] tensor the proj Linear reads."""
    return x.unflatten(-1, (parts, num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)


def _inputs(q, k, v, num_heads):
    """q, k, v as [B, H, N, d] with one set of strides and a unit last stride (what the kernels
    index by). k is None: q is the packed [B, N, 3D] qkv."""
    if k is None:
        return _heads(q if q.stride(-1) == 1 else q.contiguous(), num_heads, 3)
    if q.stride(-1) != 1 or not q.stride() == k.stride() == v.stride():
        return q.contiguous(), k.contiguous(), v.contiguous()
    return q, k, v


def _empty_outputs(q, k, num_heads):
    """(out as returned, its [B, H, N, d] view, lse). Shared by the op and its fake."""
    if k is None:
        B, N, D3 = q.shape
        out = torch.empty((B, N, D3 // 3), dtype=q.dtype, device=q.device)
        out4 = _heads(out, num_heads, 1)[0]
    else:
        out = out4 = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    B, H, N, _ = out4.shape
    return out, out4, torch.empty((B, H, N), dtype=torch.float32, device=q.device)


def _empty_grads(q, k, q4, num_heads):
    """(grads as returned, [B, H, N, d] views of dq, dk, dv). Shared by the op and its fake."""
    if k is None:  # contiguous, as the kernels index it, whatever the strides of qkv
        dqkv = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        return [dqkv], _heads(dqkv, num_heads, 3)
    grads = [torch.empty_like(q4) for _ in range(3)]
    return grads, grads


@torch.library.custom_op("mage_fast::attention_fwd", mutates_args=())
def _attention_op(q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor], num_heads: int,
                  key_lengths: Optional[torch.Tensor], seed: Optional[torch.Tensor], dropout_p: float,
                  scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..kernels.attention import attention_forward
    out, out4, lse = _empty_outputs(q, k, num_heads)
    attention_forward(*_inputs(q, k, v, num_heads), out4, lse, key_lengths, seed, dropout_p, scale)
    return out, lse


@_attention_op.register_fake
def _(q, k, v, num_heads, key_lengths, seed, dropout_p, scale):
    out, _, lse = _empty_outputs(q, k, num_heads)
    return out, lse


@torch.library.custom_op("mage_fast::attention_bwd", mutates_args=())
def _attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: Optional[torch.Tensor], v: Optional[torch.Tensor],
                           out: torch.Tensor, lse: torch.Tensor, num_heads: int, key_lengths: Optional[torch.Tensor],
                           seed: Optional[torch.Tensor], dropout_p: float, scale: float) -> List[torch.Tensor]:
    from ..kernels.attention import attention_backward
    q4, k4, v4 = _inputs(q, k, v, num_heads)
    grads, (dq, dk, dv) = _empty_grads(q, k, q4, num_heads)
    out4, do4 = (_heads(t, num_heads, 1)[0] if k is None else t for t in (out, do.contiguous()))
    attention_backward(do4, q4, k4, v4, out4, lse, dq, dk, dv, key_lengths, seed, dropout_p, scale)
    return grads


@_attention_backward_op.register_fake
def _(do, q, k, v, out, lse, num_heads, key_lengths, seed, dropout_p, scale):
    return _empty_grads(q, k, _inputs(q, k, v, num_heads)[0], num_heads)[0]


# ---------------------------------------------------------------- autograd

def _attention_setup(ctx, inputs, output):
    q, k, v, ctx.num_heads, key_lengths, seed, ctx.dropout_p, ctx.scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, seed)
    ctx.mark_non_differentiable(lse)


def _attention_grad(ctx, dout, _dlse):
    q, k, v, out, lse, key_lengths, seed = ctx.saved_tensors
    grads = _attention_backward_op(dout, q, k, v, out, lse, ctx.num_heads, key_lengths, seed, ctx.dropout_p,
                                   ctx.scale)
    return (*grads, *[None] * (8 - len(grads)))


_attention_op.register_autograd(_attention_grad, setup_context=_attention_setup)


# ---------------------------------------------------------------- dispatch

def attention(q, k, v, *, key_lengths=None, dropout_p=0.0, scale=None, seed=None):
    """softmax(q k^T * scale) v for q, k, v [B, H, N, d] (SDPA's layout) -> [B, H, N, d] in q's
    dtype (fp32, fp16 or bf16; fp32 stays true fp32).

    key_lengths: [B] integers; keys at index >= key_lengths[b] are masked for every query of
    sample b (values above N mean N; a sample with no key, 0 or less, gets zero output and zero
    gradients). dropout_p: attention dropout on the probabilities, scaled by 1/(1-p), in
    [0, 1 - 2^-8] (the kernels round p to a multiple of 2^-8). seed: int or one-element int64
    tensor on q's device (read by the kernel, so a CUDA-graph replay can take a new one); None
    draws one from torch's CPU generator (a graph break under torch.compile: compiled code and
    CUDA graphs pass a tensor).
    The PyTorch fallback draws its mask from torch's RNG instead (same distribution)."""
    _check_separate(q, k, v)
    key_lengths, scale, seed = _check(q, q.shape[0], q.shape[-1], key_lengths, dropout_p, scale, seed)
    if backend(q.device.type, q.dtype)[0] != "pytorch":
        return _attention_op(q, k, v, q.shape[1], key_lengths, seed, dropout_p, scale)[0]
    return _attention_pytorch(q, k, v, key_lengths, dropout_p, scale)


def attention_qkv(qkv, num_heads, *, key_lengths=None, dropout_p=0.0, scale=None, seed=None):
    """Attention straight from the fused qkv Linear output [B, N, 3D] (last dim: q | k | v,
    heads contiguous in each) to the [B, N, D] the proj Linear takes, heads concatenated:
    attention(q, k, v).transpose(1, 2).reshape(B, N, D) with no permute or copy on either side;
    the gradient comes back as [B, N, 3D]. Other arguments as attention()."""
    _check_packed(qkv, num_heads)
    B, N, D3 = qkv.shape
    key_lengths, scale, seed = _check(qkv, B, D3 // (3 * num_heads), key_lengths, dropout_p, scale, seed)
    if backend(qkv.device.type, qkv.dtype)[0] != "pytorch":
        return _attention_op(qkv, None, None, num_heads, key_lengths, seed, dropout_p, scale)[0]
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    return _attention_pytorch(q, k, v, key_lengths, dropout_p, scale).transpose(1, 2).reshape(B, N, D3 // 3)


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


# ---------------------------------------------------------------- reference

def attention_ref(q, k, v, key_lengths=None, scale=None, *, dropout_mask=None, dropout_p=0.0, upcast=True):
    """softmax(q k^T * scale) v on [B, H, N, d] in plain PyTorch, keys at index >= key_lengths[b]
    masked out, the row max subtracted, probabilities multiplied by dropout_mask / (1 - p).
    upcast=True: the scores, softmax and product with v in fp32 (float64 stays float64), as the
    official code computes; upcast=False: the two matmuls in the input dtype (softmax in fp32),
    flash-attention's same-precision baseline. Returns q's dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ct = torch.promote_types(q.dtype, torch.float32) if upcast else q.dtype
    scores = (q.to(ct) @ k.to(ct).transpose(-2, -1)).to(torch.promote_types(ct, torch.float32)) * scale
    if key_lengths is not None:
        keys = torch.arange(k.shape[-2], device=k.device)
        scores = scores.masked_fill(keys >= key_lengths.view(-1, 1, 1, 1), float("-inf"))
    probs = (scores - scores.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    return (probs.to(ct) @ v.to(ct)).to(q.dtype)


def _interleave(a, b):
    """Two [..., G] tensors as one [..., 2G]: a in the even columns, b in the odd ones."""
    return torch.stack([a, b], dim=-1).flatten(-2)


def dropout_mask_ref(seed: int, batch: int, num_heads: int, n: int, dropout_p: float) -> torch.Tensor:
    """[B, H, N, N] bool: the kernels' keep mask drawn in PyTorch. Query i of slab s = b * H + h
    and key group g (16 keys) take Philox4x32-10 of counter (i * ceil(N / 16) + g, s, 0, 0) under
    key (seed's low and high 32 bits); its four words give the 16 keys 8-bit draws (bytes of the
    interleaved words, in the kernels' order), and a key is kept where its draw is at least
    round(dropout_p * 256): the drop probability is dropout_p rounded to a multiple of 1/256."""
    groups = -(-n // 16)
    slab = torch.arange(batch * num_heads, dtype=torch.int64).view(-1, 1, 1)
    counter = torch.arange(n, dtype=torch.int64).view(1, -1, 1) * groups + torch.arange(groups).view(1, 1, -1)
    key = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    r0, r1, r2, r3 = philox4x32((counter, slab, 0, 0), key)
    words = _interleave(_interleave(r0, r1), _interleave(r2, r3))
    draws = _interleave(_interleave(words & 0xFF, (words >> 8) & 0xFF), _interleave((words >> 16) & 0xFF, words >> 24))
    keep = draws[..., :n] >= round(dropout_p * 2**DROP_BITS)
    return keep.view(batch, num_heads, n, n)

