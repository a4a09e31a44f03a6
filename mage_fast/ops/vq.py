"""vq_nearest: the tokenizer's codebook lookup (docs/mage.md#tokenizer), the nearest codebook row of
each vector by plain L2 in fp32, first index on ties. The Triton kernel (kernels/vq.py) fuses
distance and argmin; `vq_nearest_ref` is the official expression it is held to and the fallback."""
from typing import Tuple

import torch

from ..backends import register_backend, triton_backend
from ..reference.vqgan import nearest_code
from ..validation import FLOAT_TYPES, describe

# How the Triton kernel forms z.e: "ieee", true fp32 on the FMA units (the default, what the
# official code computes); "tf32x3", fp32 emulated on the tensor cores (see kernels/vq.py).
DOT_PRECISIONS = ("ieee", "tf32x3")


# ---------------------------------------------------------------- backend

backend = register_backend("vq_nearest")(triton_backend)


# ---------------------------------------------------------------- input checks

def _check(z, codebook, precision):
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    for name, t in (("z", z), ("codebook", codebook)):
        if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_TYPES:
            raise ValueError(f"{name} must be a float32, float16 or bfloat16 tensor, got {describe(t)}")
    if z.dim() not in (2, 4) or z.numel() == 0:
        raise ValueError(f"z must be [N, C] or [B, C, H, W] and non-empty, got {list(z.shape)}")
    if codebook.dim() != 2 or codebook.shape[0] == 0 or codebook.shape[1] != z.shape[1]:
        raise ValueError(f"codebook must be [K, C] with K >= 1 and C = {z.shape[1]} (z's channels), "
                         f"got {list(codebook.shape)}")
    if z.device != codebook.device:
        raise ValueError(f"z and codebook must be on one device, got {z.device} and {codebook.device}")


# ---------------------------------------------------------------- custom ops

def _rows(t: torch.Tensor) -> torch.Tensor:
    """[N, C] or [B, C, H, W] as a [B, S, C] view: row (b, s) is token s = h*W + w of image b."""
    return t.unsqueeze(0) if t.dim() == 2 else t.flatten(2).transpose(1, 2)


def _ids_shape(z):
    return (z.shape[0],) if z.dim() == 2 else (z.shape[0], z.shape[2] * z.shape[3])


@torch.library.custom_op("mage_fast::vq_nearest", mutates_args=())
def _vq_nearest_op(z: torch.Tensor, codebook: torch.Tensor, return_vectors: bool,
                   precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    from ..kernels.vq import vq_nearest_forward
    ids = torch.empty(_ids_shape(z), dtype=torch.int64, device=z.device)
    vectors = torch.empty(z.shape if return_vectors else (0,), dtype=codebook.dtype, device=z.device)
    vq_nearest_forward(_rows(z), codebook, ids, _rows(vectors) if return_vectors else None, precision)
    return ids, vectors


@_vq_nearest_op.register_fake
def _(z, codebook, return_vectors, precision):
    return (z.new_empty(_ids_shape(z), dtype=torch.int64),
            z.new_empty(z.shape if return_vectors else (0,), dtype=codebook.dtype))


# ---------------------------------------------------------------- dispatch

def vq_nearest(z: torch.Tensor, codebook: torch.Tensor, return_vectors: bool = False, precision: str = "ieee"):
    """Nearest codebook row of each vector: z [N, C] -> ids [N], or the tokenizer's z
    [B, C, H, W] -> ids [B, H*W] (token h*W + w); int64. With return_vectors also the quantized
    vectors codebook[ids] in z's layout and the codebook's dtype. Not differentiable.
    precision (one of DOT_PRECISIONS) picks the kernel's product; the PyTorch path is always fp32."""
    _check(z, codebook, precision)
    if backend(z.device.type, z.dtype)[0] == "pytorch":
        return vq_nearest_ref(z, codebook, return_vectors)
    ids, vectors = _vq_nearest_op(z, codebook, return_vectors, precision)
    return (ids, vectors) if return_vectors else ids


# ---------------------------------------------------------------- reference

def vq_nearest_ref(z, codebook, return_vectors=False):
    """The official computation (reference.vqgan.nearest_code, the N x K matrix included)."""
    rows = _rows(z)
    ids = nearest_code(rows.reshape(-1, z.shape[1]), codebook).view(_ids_shape(z))
    if not return_vectors:
        return ids
    vectors = codebook[ids]  # [N, C] or [B, S, C]
    return ids, vectors if z.dim() == 2 else vectors.transpose(1, 2).reshape(z.shape).contiguous()
