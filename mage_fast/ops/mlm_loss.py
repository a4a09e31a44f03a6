"""MAGE's MLM head logits and label-smoothed cross-entropy, fused chunk by chunk.

loss = sum_i w_i * [(1 - s) * NLL_i + s * mean_v(-log p_iv)] / sum_i w_i over rows i, with
logits = h @ W^T + b over the 1024 codebook columns (docs/mage.md#transformer,
docs/mage.md#training-forward; the design: docs/kernels.md#mlm-head-and-loss). A chunk's logits
live only inside the chunk: the [rows, 1024] matrix (let alone [B, 257, 2025]) is never stored.
The loss ends the graph, so its gradient is computed during the forward pass and backward only
scales it (the Liger-Kernel fused-linear-cross-entropy scheme). W gets no gradient: the official
head reads the word embeddings detached. The GEMMs run in the autocast dtype when autocast is
on (as the official head does under fp16), the softmax in fp32.
"""
from typing import Optional

import torch

from ..backends import register_backend
from ..reference.layers import label_smoothed_nll
from ..validation import FLOAT_TYPES, INDEX_TYPES, check_tensor, values_checkable

CHUNK_ROWS = 8192  # 32 MB of fp32 logits at 1024 columns


# ---------------------------------------------------------------- backend

@register_backend("mlm_loss")
def backend(device_type: str, dtype=None):
    return "pytorch", f"chunks of {CHUNK_ROWS} rows through torch matmuls (cuBLAS on CUDA); logits never stored"


# ---------------------------------------------------------------- input checks

def _check(h, weight, bias, targets, row_weights, smoothing):
    check_tensor("h", h, FLOAT_TYPES, (None, None))
    rows, dim = h.shape
    check_tensor("weight", weight, FLOAT_TYPES, (None, dim), h.device)
    check_tensor("bias", bias, FLOAT_TYPES, (weight.shape[0],), h.device)
    check_tensor("targets", targets, INDEX_TYPES, (rows,), h.device)
    if row_weights is not None:
        check_tensor("row_weights", row_weights, FLOAT_TYPES + (torch.bool,), (rows,), h.device)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    # An out-of-range target would be a device-side assert on a GPU: checked where it is free.
    if values_checkable(targets) and not bool(((targets >= 0) & (targets < weight.shape[0])).all()):
        raise ValueError(f"targets must be class ids in [0, {weight.shape[0]})")


# ---------------------------------------------------------------- autograd
# No custom op: a torch.autograd.Function of torch ops, which torch.compile traces through.

def _compute_dtype(h):
    if torch.is_autocast_enabled(h.device.type):
        return torch.get_autocast_dtype(h.device.type)
    return h.dtype


class _MlmLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, row_scale, smoothing, need_h, need_bias):
        dtype = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.detach().to(dtype)
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
            grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_bias else None
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, h.shape[0], CHUNK_ROWS):
                rows = slice(start, start + CHUNK_ROWS)
                logits = (h[rows].to(dtype) @ w.t()).float() + bias.float()
                log_p = torch.log_softmax(logits, dim=-1)
                t = targets[rows].unsqueeze(-1)
                per_row = -(1.0 - smoothing) * log_p.gather(-1, t).squeeze(-1) - smoothing * log_p.mean(-1)
                scale = row_scale[rows]
                loss += (per_row * scale).sum()
                if not (need_h or need_bias):  # e.g. a validation loss under no_grad
                    continue
                # d loss / d logits = (p - (1 - s) onehot - s / V) * scale. The GEMM takes it
                # unscaled (entries up to 1): times scale (1 / rows) first, it would underflow in
                # fp16 before a loss scaler's factor arrives in backward.
                grad = log_p.exp_().sub_(smoothing / weight.shape[0])
                grad.scatter_add_(-1, t, torch.full_like(t, -(1.0 - smoothing), dtype=grad.dtype))
                if need_h:
                    grad_h[rows] = (grad.to(dtype) @ w).float().mul_(scale.unsqueeze(-1))
                if need_bias:
                    grad_bias += (grad * scale.unsqueeze(-1)).sum(0)
        ctx.save_for_backward(grad_h, grad_bias)
        ctx.dtypes = h.dtype, bias.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_bias = ctx.saved_tensors
        h_dtype, bias_dtype = ctx.dtypes
        grad_h = None if grad_h is None else (grad_h * grad_loss).to(h_dtype)
        grad_bias = None if grad_bias is None else (grad_bias * grad_loss).to(bias_dtype)
        return grad_h, None, grad_bias, None, None, None, None, None


# ---------------------------------------------------------------- dispatch

def mlm_loss(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
             row_weights: Optional[torch.Tensor] = None, smoothing: float = 0.1) -> torch.Tensor:
    """h [R, D] head hidden states, weight [V, D] (no gradient), bias [V], targets [R] int64,
    row_weights [R] (0/1 masks; default all 1) -> the weighted mean loss, a scalar.
    Gradients flow to h and bias."""
    _check(h, weight, bias, targets, row_weights, smoothing)
    if row_weights is None:
        row_scale = torch.full((h.shape[0],), 1.0 / h.shape[0], device=h.device)
    else:
        row_scale = row_weights.float() / row_weights.float().sum()
    # The forward computes only the gradients autograd will ask for; it runs in no_grad mode
    # itself, so the mode is read here.
    grad = torch.is_grad_enabled()
    return _MlmLoss.apply(h, weight, bias, targets.long(), row_scale, smoothing,
                          grad and h.requires_grad, grad and bias.requires_grad)


# ---------------------------------------------------------------- reference

def mlm_loss_ref(h, weight, bias, targets, row_weights=None, smoothing=0.1):
    """The official computation: materialised fp32 logits, then the criterion."""
    per_row = label_smoothed_nll(h.float() @ weight.float().t() + bias.float(), targets, smoothing)
    if row_weights is None:
        return per_row.mean()
    return (per_row * row_weights).sum() / row_weights.sum()
