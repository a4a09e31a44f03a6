"""Sync-free token dropping for the training forward (docs/mage.md#training-forward, steps 3-6).

- `mask_sets(noise, num_dropped, num_masked)` -> (keep_index [B, 257 - num_dropped] int64, the
  kept slots ascending, slot 0 first; masked [B, 257] bool, slot 0 False).
- `embed_and_drop(ids, masked, keep_index, word, pos, ln_weight, ln_bias, eps)` -> the encoder
  input [B, KEPT, D]: LayerNorm(word[token] + pos[slot]) of the kept slots only (LayerNorm is per
  row, so this is exactly the official embed-all-then-drop; the caller applies dropout).
- `restore(x, keep_index, masked, pos_embed)` -> the decoder input [B, 257, Dd]: each slot takes
  its kept row, or the class token's row x[:, 0] where it is masked or dropped, plus pos_embed.
  Backward: row 0 collects its own gradient and every masked or dropped slot's, a kept masked
  row gets zero, dpos is the sum over the batch.

The official code finds the sets by thresholds (a host loop redraws noise with ties) and drops and
restores with boolean `nonzero` indexing (host syncs, data-dependent shapes); the `*_ref` functions
are that code. Here every shape is fixed per step, ties go to the lower index, and num_masked may
be a device tensor, so nothing waits for the host and the step can be captured in a CUDA graph.
On CUDA and under TRITON_INTERPRET the Triton kernels of kernels/token_drop.py run (custom ops
with fake and autograd registrations); otherwise the sync-free PyTorch formulation below.
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F

from ..backends import register_backend, triton_backend
from ..configs import CODEBOOK_SIZE, FAKE_CLASS_ID, MASK_ID, NUM_TOKENS, SEQ_LEN, VOCAB_SIZE
from ..reference.model import keep_rows, masked_tokens, restore_slots, slot_sets, threshold_sets
from ..validation import FLOAT_TYPES, INDEX_TYPES, check_tensor, describe, values_checkable

Tensor = torch.Tensor


# ---------------------------------------------------------------- backend

backend = register_backend("token_drop")(triton_backend)


# ---------------------------------------------------------------- input checks

def _check_sets(keep_index, masked, batch, device):
    check_tensor("masked", masked, (torch.bool,), (batch, SEQ_LEN), device)
    check_tensor("keep_index", keep_index, INDEX_TYPES, (batch, None), device)
    if keep_index.shape[1] > SEQ_LEN:
        raise ValueError(f"keep_index holds at most {SEQ_LEN} slots, got {keep_index.shape[1]}")
    if values_checkable(keep_index) and not (bool((keep_index[:, 0] == 0).all()) and bool((keep_index < SEQ_LEN).all())
                                           and bool((keep_index[:, 1:] > keep_index[:, :-1]).all())):
        raise ValueError(f"keep_index rows must be ascending slots in [0, {SEQ_LEN}) starting with slot 0")


def _check_counts(noise, num_dropped, num_masked):
    check_tensor("noise", noise, FLOAT_TYPES + (torch.float64,), (None, NUM_TOKENS))
    if not isinstance(num_dropped, int) or isinstance(num_dropped, bool) or not 1 <= num_dropped <= NUM_TOKENS:
        raise ValueError(f"num_dropped must be an int in [1, {NUM_TOKENS}], got {num_dropped!r}")
    if isinstance(num_masked, torch.Tensor):
        check_tensor("num_masked", num_masked.reshape(-1), (torch.int64,), (1,), noise.device)
        if not values_checkable(num_masked):
            return
        num_masked = int(num_masked)
    elif not isinstance(num_masked, int) or isinstance(num_masked, bool):
        raise ValueError(f"num_masked must be an int or a 1-element int64 tensor, got {describe(num_masked)}")
    if not num_dropped <= num_masked <= NUM_TOKENS:
        raise ValueError(f"num_masked must be in [num_dropped, {NUM_TOKENS}] = [{num_dropped}, {NUM_TOKENS}], "
                         f"got {num_masked}")


def _check_embed(ids, masked, keep_index, word, pos, weight, bias):
    check_tensor("word_embeddings", word, FLOAT_TYPES, (None, None))
    dim, device = word.shape[1], word.device
    if word.shape[0] < VOCAB_SIZE:
        raise ValueError(f"word_embeddings needs {VOCAB_SIZE} rows (codebook, class slots, mask), got {word.shape[0]}")
    for name, t, shape in (("position_embeddings", pos, (SEQ_LEN, dim)), ("ln_weight", weight, (dim,)),
                           ("ln_bias", bias, (dim,))):
        check_tensor(name, t, (word.dtype,), shape, device)
    check_tensor("ids", ids, INDEX_TYPES, (None, NUM_TOKENS), device)
    _check_sets(keep_index, masked, ids.shape[0], device)
    if values_checkable(ids) and not bool(((ids >= 0) & (ids < CODEBOOK_SIZE)).all()):
        raise ValueError(f"ids must be codebook ids in [0, {CODEBOOK_SIZE})")


def _check_restore(x, keep_index, masked, pos_embed):
    check_tensor("x", x, FLOAT_TYPES, (None, None, None))
    check_tensor("pos_embed", pos_embed, FLOAT_TYPES, (1, SEQ_LEN, x.shape[2]), x.device)
    _check_sets(keep_index, masked, x.shape[0], x.device)
    if keep_index.shape[1] != x.shape[1]:
        raise ValueError(f"x must have one row per kept slot ({keep_index.shape[1]}), got {x.shape[1]}")


# ---------------------------------------------------------------- custom ops
# The kernels read their tensors by flat offsets (num_masked: its one element), so each op makes
# them contiguous itself (a no-op when they are): strided views, such as a position table sliced
# from a bigger tensor, are then right through the API, straight to torch.ops, and in backward.
def _contiguous(*tensors):
    return tuple(t.contiguous() for t in tensors)


def slot_rows(keep_index):
    """[B, 257] int32: the kept row that holds each slot, -1 for dropped slots."""
    rows = torch.arange(keep_index.shape[1], dtype=torch.int32, device=keep_index.device)
    return torch.full((keep_index.shape[0], SEQ_LEN), -1, dtype=torch.int32,
                      device=keep_index.device).scatter_(1, keep_index.long(), rows.expand(keep_index.shape))


@torch.library.custom_op("mage_fast::mask_sets", mutates_args=())
def _mask_sets_op(noise: Tensor, num_dropped: int, num_masked: Tensor) -> Tuple[Tensor, Tensor]:
    from ..kernels.token_drop import mask_sets_forward
    return mask_sets_forward(noise.contiguous(), num_dropped, num_masked)


@_mask_sets_op.register_fake
def _(noise, num_dropped, num_masked):
    batch = noise.shape[0]
    return (noise.new_empty(batch, SEQ_LEN - num_dropped, dtype=torch.int64),
            noise.new_empty(batch, SEQ_LEN, dtype=torch.bool))


@torch.library.custom_op("mage_fast::embed_and_drop", mutates_args=())
def _embed_op(ids: Tensor, masked: Tensor, keep_index: Tensor, word: Tensor, pos: Tensor, weight: Tensor,
              bias: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    from ..kernels.token_drop import embed_forward
    return embed_forward(*_contiguous(ids, masked, keep_index, word, pos, weight, bias), eps, FAKE_CLASS_ID,
                         MASK_ID)


@_embed_op.register_fake
def _(ids, masked, keep_index, word, pos, weight, bias, eps):
    stats = word.new_empty(keep_index.numel(), dtype=torch.float32)
    return word.new_empty(*keep_index.shape, word.shape[1]), stats, torch.empty_like(stats)


@torch.library.custom_op("mage_fast::embed_and_drop_backward", mutates_args=())
def _embed_backward_op(dy: Tensor, ids: Tensor, masked: Tensor, keep_index: Tensor, word: Tensor, pos: Tensor,
                       weight: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from ..kernels.token_drop import embed_backward
    return embed_backward(*_contiguous(dy, ids, masked, keep_index, word, pos, weight, bias, mean, rstd),
                          FAKE_CLASS_ID, MASK_ID)


@_embed_backward_op.register_fake
def _(dy, ids, masked, keep_index, word, pos, weight, bias, mean, rstd):
    return tuple(torch.empty_like(t) for t in (word, pos, weight, bias))


@torch.library.custom_op("mage_fast::restore", mutates_args=())
def _restore_op(x: Tensor, keep_index: Tensor, masked: Tensor, pos: Tensor) -> Tensor:
    from ..kernels.token_drop import restore_forward
    return restore_forward(*_contiguous(x, slot_rows(keep_index), masked, pos))


@_restore_op.register_fake
def _(x, keep_index, masked, pos):
    return x.new_empty(x.shape[0], SEQ_LEN, x.shape[2], dtype=torch.promote_types(x.dtype, pos.dtype))


@torch.library.custom_op("mage_fast::restore_backward", mutates_args=())
def _restore_backward_op(dout: Tensor, keep_index: Tensor, masked: Tensor, x_dtype: torch.dtype,
                         pos_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    from ..kernels.token_drop import restore_backward
    return restore_backward(*_contiguous(dout, slot_rows(keep_index), masked), keep_index.shape[1], x_dtype, pos_dtype)


@_restore_backward_op.register_fake
def _(dout, keep_index, masked, x_dtype, pos_dtype):
    return (dout.new_empty(dout.shape[0], keep_index.shape[1], dout.shape[2], dtype=x_dtype),
            dout.new_empty(dout.shape[1:], dtype=pos_dtype))


# ---------------------------------------------------------------- autograd

def _embed_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], *output[1:])  # everything but eps, and mean, rstd


def _embed_grad(ctx, dy, _dmean, _drstd):
    dword, dpos, dweight, dbias = _embed_backward_op(dy, *ctx.saved_tensors)
    return None, None, None, dword, dpos, dweight, dbias, None


_embed_op.register_autograd(_embed_grad, setup_context=_embed_setup)


def _restore_setup(ctx, inputs, output):
    x, keep_index, masked, pos = inputs
    ctx.save_for_backward(keep_index, masked)
    ctx.dtypes = x.dtype, pos.dtype


def _restore_grad(ctx, dout):
    dx, dpos = _restore_backward_op(dout, *ctx.saved_tensors, *ctx.dtypes)
    return dx, None, None, dpos


_restore_op.register_autograd(_restore_grad, setup_context=_restore_setup)


# ---------------------------------------------------------------- dispatch

def mask_sets(noise: Tensor, num_dropped: int, num_masked: Union[int, Tensor]) -> Tuple[Tensor, Tensor]:
    """noise [B, 256] -> (keep_index [B, 257 - num_dropped] int64, masked [B, 257] bool): the
    num_dropped (num_masked) tokens with the smallest noise are dropped (masked), ties to the
    lower index. num_masked: an int, or a 1-element int64 tensor on noise's device (no sync)."""
    _check_counts(noise, num_dropped, num_masked)
    if backend(noise.device.type, noise.dtype)[0] == "pytorch":
        return _mask_sets_pytorch(noise, num_dropped, num_masked)
    if not isinstance(num_masked, torch.Tensor):
        num_masked = torch.full((1,), num_masked, dtype=torch.int64, device=noise.device)
    return _mask_sets_op(noise, num_dropped, num_masked)


def embed_and_drop(ids: Tensor, masked: Tensor, keep_index: Tensor, word_embeddings: Tensor,
                   position_embeddings: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float = 1e-6) -> Tensor:
    """The encoder input of the kept slots [B, KEPT, D]: LayerNorm(word[token] + pos[slot]) with
    token = 1100 at slot 0, MASK_ID where masked, else the codebook id ids[:, slot - 1].
    Differentiable in the embeddings and the LayerNorm parameters."""
    args = (ids, masked, keep_index, word_embeddings, position_embeddings, ln_weight, ln_bias)
    _check_embed(*args)
    if backend(word_embeddings.device.type, word_embeddings.dtype)[0] == "pytorch":
        return _embed_and_drop_pytorch(*args, eps)
    return _embed_op(*args, float(eps))[0]


def restore(x: Tensor, keep_index: Tensor, masked: Tensor, pos_embed: Tensor) -> Tensor:
    """The decoder input [B, 257, Dd] from the kept rows x [B, KEPT, Dd]: slot p takes its kept
    row if it is kept and not masked, else the class token's row x[:, 0]; plus pos_embed
    [1, 257, Dd]. Differentiable in x and pos_embed."""
    _check_restore(x, keep_index, masked, pos_embed)
    if backend(x.device.type, x.dtype)[0] == "pytorch":
        return _restore_pytorch(x, keep_index, masked, pos_embed)
    return _restore_op(x, keep_index, masked, pos_embed.squeeze(0))


# The sync-free PyTorch formulation, where the kernels do not run.
def _mask_sets_pytorch(noise, num_dropped, num_masked):
    """The kernel's stable ranks by sorting: fixed shapes, and num_masked only enters a
    comparison, so a device tensor needs no sync (the kernel does it in one launch)."""
    order = noise.argsort(dim=1, stable=True)  # ties: the lower index first
    rank = order.argsort(dim=1)
    no = torch.zeros_like(order[:, :1])
    keep_index = torch.cat([no, order[:, num_dropped:].sort(dim=1).values + 1], dim=1)
    return keep_index, torch.cat([no.bool(), rank < num_masked], dim=1)


def _embed_and_drop_pytorch(ids, masked, keep_index, word, pos, weight, bias, eps):
    keep_index = keep_index.long()
    x = F.embedding(masked_tokens(ids, masked).gather(1, keep_index), word) + F.embedding(keep_index, pos)
    return F.layer_norm(x, (word.shape[1],), weight, bias, eps)


def _restore_pytorch(x, keep_index, masked, pos_embed):
    rows = slot_rows(keep_index)
    src = torch.where((rows > 0) & ~masked, rows, 0).long()
    return x.gather(1, src.unsqueeze(-1).expand(-1, -1, x.shape[-1])) + pos_embed


# ---------------------------------------------------------------- reference

def _keep_mask(keep_index):
    mask = torch.zeros(keep_index.shape[0], SEQ_LEN, dtype=torch.bool, device=keep_index.device)
    return mask.scatter_(1, keep_index.long(), True)


def mask_sets_ref(noise, num_dropped, num_masked):
    """The official thresholds, as (keep_index, masked) [B, 257]. Sets of the right size only
    for noise without ties at the thresholds."""
    keep, masked = slot_sets(*threshold_sets(noise, num_dropped, int(num_masked)))
    return keep.nonzero(as_tuple=True)[1].view(noise.shape[0], -1), masked


def embed_and_drop_ref(ids, masked, keep_index, word, pos, weight, bias, eps=1e-6):
    """The official encoder input (no dropout): embed and normalise all 257 tokens, then keep
    the rows of keep_index by boolean nonzero indexing."""
    x = F.layer_norm(F.embedding(masked_tokens(ids, masked), word) + pos, (word.shape[1],), weight, bias, eps)
    return keep_rows(x, _keep_mask(keep_index))


def restore_ref(x, keep_index, masked, pos_embed):
    """The official decoder input: the class token's row in every slot, the kept rows scattered
    back by boolean nonzero indexing, every masked slot the class token again, plus pos."""
    return restore_slots(x, _keep_mask(keep_index), masked) + pos_embed
