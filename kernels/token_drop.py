"""Sync-free token dropping for the training forward (docs/mage.md#training-forward, steps 3-6): the drop/mask sets from
the noise, the encoder input of the kept rows (gather + add + LayerNorm) and the decoder's
restore to all 257 slots, forward and backward. Every shape is fixed per step (129 kept rows,
257 slots), so the training step can be captured in a CUDA graph.

Layouts (all contiguous): noise [B, 256]; keep_index [B, KEPT] int64, the kept slots in
ascending order (slot 0, the class token, first); masked [B, 257] bool (slot 0 False); the
kept rows [B, KEPT, D]; the full sequence [B, 257, D].
"""

import torch
import triton
import triton.language as tl

from ._runtime import interpreting, programs_per_sm


# ---------------------------------------------------------------- drop and mask sets
@triton.jit
def mask_sets_kernel(noise_ptr, num_masked_ptr, keep_ptr, masked_ptr, num_dropped, num_kept,
                     TOKENS: tl.constexpr, BLOCK_J: tl.constexpr):
    # One program per image. The stable rank of token i (how many tokens have smaller noise, or
    # equal noise and a lower index) decides both sets: dropped = rank < num_dropped, masked =
    # rank < num_masked; with distinct noise these are the official thresholds, with ties the
    # lower index goes first, so the counts are always exact and no redraw is needed.
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, TOKENS)
    noise_i = tl.load(noise_ptr + b * TOKENS + i)
    rank = tl.zeros([TOKENS], dtype=tl.int32)
    for j0 in range(0, TOKENS, BLOCK_J):  # 256 x 256 comparisons, BLOCK_J columns at a time
        j = j0 + tl.arange(0, BLOCK_J)
        noise_j = tl.load(noise_ptr + b * TOKENS + j)
        tie = (noise_j[None, :] == noise_i[:, None]) & (j[None, :] < i[:, None])
        before = (noise_j[None, :] < noise_i[:, None]) | tie
        rank += tl.sum(before.to(tl.int32), axis=1)
    kept = rank >= num_dropped
    # Kept token i is slot i + 1; it lands after slot 0 and the kept tokens before it.
    position = tl.cumsum(kept.to(tl.int32), axis=0)
    tl.store(keep_ptr + b * num_kept + position, (i + 1).to(tl.int64), mask=kept)
    tl.store(keep_ptr + b * num_kept, 0)
    tl.store(masked_ptr + b * (TOKENS + 1) + 1 + i, rank < tl.load(num_masked_ptr))
    tl.store(masked_ptr + b * (TOKENS + 1), False)


# ---------------------------------------------------------------- encoder input
# A row of D values is held as two power-of-two pieces, [0, BLOCK_A) and [BLOCK_A, BLOCK_A +
# BLOCK_B), so that D = 768 (MAGE-B) takes 512 + 256 lanes rather than 1024 with a quarter
# masked. Where D is a power of two the second piece is 16 lanes past D, all masked: its loads
# and stores are predicated off.
@triton.jit
def _kept_tokens(rows, row_ok, ids_ptr, masked_ptr, keep_ptr, num_kept, CLASS_ID: tl.constexpr,
                 MASK_ID: tl.constexpr, SEQ: tl.constexpr):
    """Kept rows (flat index b * num_kept + r) -> their slot and token."""
    b = rows // num_kept
    slot = tl.load(keep_ptr + rows, mask=row_ok, other=0)
    is_masked = tl.load(masked_ptr + b * SEQ + slot, mask=row_ok, other=0) != 0
    image_id = tl.load(ids_ptr + b * (SEQ - 1) + slot - 1, mask=row_ok & (slot > 0), other=0)
    return slot, tl.where(is_masked, MASK_ID, tl.where(slot == 0, CLASS_ID, image_id))


@triton.jit
def _embedding(slot, token, row_ok, word_ptr, pos_ptr, D, START: tl.constexpr, WIDTH: tl.constexpr):
    """Columns [START, START + WIDTH) of word[token] + pos[slot], fp32 (0 past D): (cols, col_ok, x)."""
    cols = START + tl.arange(0, WIDTH)
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    x = (tl.load(word_ptr + token[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
         + tl.load(pos_ptr + slot[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32))
    return cols, col_ok, x


@triton.jit
def _normalise(x, mean, rstd, cols, col_ok, rows, row_ok, weight_ptr, bias_ptr, out_ptr, D):
    w = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = (x - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], y, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def embed_forward_kernel(ids_ptr, masked_ptr, keep_ptr, word_ptr, pos_ptr, weight_ptr, bias_ptr,
                         out_ptr, mean_ptr, rstd_ptr, n_rows, num_kept, D, eps,
                         CLASS_ID: tl.constexpr, MASK_ID: tl.constexpr, SEQ: tl.constexpr,
                         ROWS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    # ROWS whole rows a program (LayerNorm reduces over D): embedding rows are gathered from the
    # tables (L2-resident), so HBM traffic is the output write and the small index reads.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    slot, token = _kept_tokens(rows, row_ok, ids_ptr, masked_ptr, keep_ptr, num_kept, CLASS_ID, MASK_ID, SEQ)
    cols_a, ok_a, xa = _embedding(slot, token, row_ok, word_ptr, pos_ptr, D, 0, BLOCK_A)
    cols_b, ok_b, xb = _embedding(slot, token, row_ok, word_ptr, pos_ptr, D, BLOCK_A, BLOCK_B)
    mean = (tl.sum(xa, axis=1) + tl.sum(xb, axis=1)) / D
    ca = tl.where(ok_a[None, :], xa - mean[:, None], 0.0)
    cb = tl.where(ok_b[None, :], xb - mean[:, None], 0.0)
    rstd = tl.rsqrt((tl.sum(ca * ca, axis=1) + tl.sum(cb * cb, axis=1)) / D + eps)
    _normalise(xa, mean, rstd, cols_a, ok_a, rows, row_ok, weight_ptr, bias_ptr, out_ptr, D)
    _normalise(xb, mean, rstd, cols_b, ok_b, rows, row_ok, weight_ptr, bias_ptr, out_ptr, D)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _grad_terms(rows, row_ok, slot, token, mean, rstd, dy_ptr, word_ptr, pos_ptr, weight_ptr, D,
                START: tl.constexpr, WIDTH: tl.constexpr):
    """One piece of a LayerNorm backward: (cols, col_ok, xhat, w * dy, dy)."""
    cols, col_ok, x = _embedding(slot, token, row_ok, word_ptr, pos_ptr, D, START, WIDTH)
    mask = row_ok[:, None] & col_ok[None, :]
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    dy = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return cols, col_ok, xhat, w[None, :] * dy, dy


@triton.jit
def _scatter_grads(dweight, dbias, dclass, dmask, cols, col_ok, xhat, wdy, dy, c1, c2, rstd, row_ok, slot, token,
                   dword_ptr, dpos_ptr, D, CLASS_ID: tl.constexpr, MASK_ID: tl.constexpr):
    """dx of one piece: per-row targets (codebook id, position) by atomics, the rest summed."""
    mask = row_ok[:, None] & col_ok[None, :]
    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    dweight += tl.sum(dy * xhat, axis=0)
    dbias += tl.sum(dy, axis=0)
    dclass += tl.sum(tl.where((token == CLASS_ID)[:, None], dx, 0.0), axis=0)
    dmask += tl.sum(tl.where((token == MASK_ID)[:, None], dx, 0.0), axis=0)
    plain = (token != CLASS_ID) & (token != MASK_ID)
    # Relaxed: a sum needs atomicity, not ordering against other memory operations.
    tl.atomic_add(dword_ptr + token[:, None] * D + cols[None, :], dx, mask=mask & plain[:, None], sem="relaxed")
    tl.atomic_add(dpos_ptr + slot[:, None] * D + cols[None, :], dx, mask=mask, sem="relaxed")
    return dweight, dbias, dclass, dmask


@triton.jit
def _flush_grads(dweight, dbias, dclass, dmask, cols, col_ok, dweight_ptr, dbias_ptr, dword_ptr, D,
                 CLASS_ID: tl.constexpr, MASK_ID: tl.constexpr):
    tl.atomic_add(dweight_ptr + cols, dweight, mask=col_ok, sem="relaxed")
    tl.atomic_add(dbias_ptr + cols, dbias, mask=col_ok, sem="relaxed")
    tl.atomic_add(dword_ptr + CLASS_ID * D + cols, dclass, mask=col_ok, sem="relaxed")
    tl.atomic_add(dword_ptr + MASK_ID * D + cols, dmask, mask=col_ok, sem="relaxed")


@triton.jit(do_not_specialize=["rows_per_program"])
def embed_backward_kernel(dy_ptr, ids_ptr, masked_ptr, keep_ptr, word_ptr, pos_ptr, weight_ptr,
                          mean_ptr, rstd_ptr, dword_ptr, dpos_ptr, dweight_ptr, dbias_ptr,
                          n_rows, rows_per_program, num_kept, D,
                          CLASS_ID: tl.constexpr, MASK_ID: tl.constexpr, SEQ: tl.constexpr,
                          ROWS: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    # A persistent grid (as many programs as the GPU holds at once) walks the rows: the
    # LayerNorm parameter gradients and the two shared tokens (class, mask: up to 129 rows an
    # image) are summed in registers, one [D] vector each (reduced over a step's rows, so they
    # cost D / threads registers, not ROWS times that), and added once per program; only the
    # per-row targets (position, codebook id) are atomics: a position's row is shared by the B
    # images, a codebook id's by every kept row that holds it (a frequent code: many more).
    zero_a = tl.zeros([BLOCK_A], dtype=tl.float32)
    zero_b = tl.zeros([BLOCK_B], dtype=tl.float32)
    dweight_a, dbias_a, dclass_a, dmask_a = zero_a, zero_a, zero_a, zero_a
    dweight_b, dbias_b, dclass_b, dmask_b = zero_b, zero_b, zero_b, zero_b
    start = tl.program_id(0) * rows_per_program
    for r0 in range(start, start + rows_per_program, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        row_ok = rows < n_rows
        slot, token = _kept_tokens(rows, row_ok, ids_ptr, masked_ptr, keep_ptr, num_kept, CLASS_ID, MASK_ID, SEQ)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        cols_a, ok_a, xhat_a, wdy_a, dy_a = _grad_terms(rows, row_ok, slot, token, mean, rstd, dy_ptr, word_ptr,
                                                        pos_ptr, weight_ptr, D, 0, BLOCK_A)
        cols_b, ok_b, xhat_b, wdy_b, dy_b = _grad_terms(rows, row_ok, slot, token, mean, rstd, dy_ptr, word_ptr,
                                                        pos_ptr, weight_ptr, D, BLOCK_A, BLOCK_B)
        c1 = (tl.sum(xhat_a * wdy_a, axis=1) + tl.sum(xhat_b * wdy_b, axis=1)) / D
        c2 = (tl.sum(wdy_a, axis=1) + tl.sum(wdy_b, axis=1)) / D
        dweight_a, dbias_a, dclass_a, dmask_a = _scatter_grads(
            dweight_a, dbias_a, dclass_a, dmask_a, cols_a, ok_a, xhat_a, wdy_a, dy_a, c1, c2, rstd, row_ok, slot,
            token, dword_ptr, dpos_ptr, D, CLASS_ID, MASK_ID)
        dweight_b, dbias_b, dclass_b, dmask_b = _scatter_grads(
            dweight_b, dbias_b, dclass_b, dmask_b, cols_b, ok_b, xhat_b, wdy_b, dy_b, c1, c2, rstd, row_ok, slot,
            token, dword_ptr, dpos_ptr, D, CLASS_ID, MASK_ID)
    cols_a = tl.arange(0, BLOCK_A)
    cols_b = BLOCK_A + tl.arange(0, BLOCK_B)
    _flush_grads(dweight_a, dbias_a, dclass_a, dmask_a, cols_a, cols_a < D, dweight_ptr, dbias_ptr, dword_ptr, D,
                 CLASS_ID, MASK_ID)
    _flush_grads(dweight_b, dbias_b, dclass_b, dmask_b, cols_b, cols_b < D, dweight_ptr, dbias_ptr, dword_ptr, D,
                 CLASS_ID, MASK_ID)


# ---------------------------------------------------------------- decoder restore
@triton.jit
def _slot_sources(rows_ptr, masked_ptr, offsets, ok):
    """For slots at offsets into [B, 257]: the kept row holding the slot (-1 if dropped) and
    whether the slot takes that row (kept, not the class token, not masked) rather than row 0."""
    row = tl.load(rows_ptr + offsets, mask=ok, other=0)
    is_masked = tl.load(masked_ptr + offsets, mask=ok, other=0) != 0
    return row, (row > 0) & (is_masked == 0)


@triton.jit
def restore_forward_kernel(x_ptr, rows_ptr, masked_ptr, pos_ptr, out_ptr, num_kept, D,
                           SEQ: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    # A pure gather (out[b, p] = x[b, src] + pos[p]): one write of the output, x[b, 0] re-read
    # from L2 by every masked slot.
    b = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    slot_ok = slots < SEQ
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    row, own = _slot_sources(rows_ptr, masked_ptr, b * SEQ + slots, slot_ok)
    src = tl.where(own, row, 0)
    mask = slot_ok[:, None] & col_ok[None, :]
    v = (tl.load(x_ptr + (b * num_kept + src)[:, None] * D + cols[None, :], mask=mask).to(tl.float32)
         + tl.load(pos_ptr + slots[:, None] * D + cols[None, :], mask=mask).to(tl.float32))
    tl.store(out_ptr + (b * SEQ + slots)[:, None] * D + cols[None, :], v, mask=mask)


@triton.jit
def restore_backward_kernel(dout_ptr, rows_ptr, masked_ptr, dx_ptr, dpos_ptr, B, num_kept, D,
                            SEQ: tl.constexpr, BATCH: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    # A program owns BATCH images x BLOCK_D columns and walks all 257 slots, so each image's
    # row 0 (the class token's gradient plus every masked slot's) is summed in registers and
    # stored once; every other kept row has exactly one slot and is stored directly (zero when
    # masked). dpos sums over the batch: BATCH images in registers, then one atomic add per
    # program, so B / BATCH adds per element.
    bs = tl.program_id(0) * BATCH + tl.arange(0, BATCH)
    b_ok = bs < B
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    bs64 = bs.to(tl.int64)
    row0 = tl.zeros([BATCH, BLOCK_D], dtype=tl.float32)
    for p0 in range(0, SEQ, BLOCK_P):
        slots = p0 + tl.arange(0, BLOCK_P)
        ok = b_ok[:, None] & (slots < SEQ)[None, :]
        row, own = _slot_sources(rows_ptr, masked_ptr, bs64[:, None] * SEQ + slots[None, :], ok)
        mask = ok[:, :, None] & col_ok[None, None, :]
        g = tl.load(dout_ptr + (bs64[:, None] * SEQ + slots[None, :])[:, :, None] * D + cols[None, None, :],
                    mask=mask, other=0.0).to(tl.float32)
        tl.atomic_add(dpos_ptr + slots[:, None] * D + cols[None, :], tl.sum(g, axis=0),
                      mask=(slots < SEQ)[:, None] & col_ok[None, :], sem="relaxed")
        row0 += tl.sum(tl.where(own[:, :, None], 0.0, g), axis=1)
        dx_rows = (bs64[:, None] * num_kept + row)[:, :, None] * D + cols[None, None, :]
        tl.store(dx_ptr + dx_rows, tl.where(own[:, :, None], g, 0.0), mask=mask & (row > 0)[:, :, None])
    tl.store(dx_ptr + (bs64 * num_kept)[:, None] * D + cols[None, :], row0, mask=b_ok[:, None] & col_ok[None, :])


# ---------------------------------------------------------------- launchers
# Tile sizes: on a GPU ~2K elements a program step (8 a thread at 8 warps: embed_backward then
# needs under 128 registers, two programs an SM; twice that needed over 200); under the
# interpreter large tiles, since every program step is a Python step.
def _rows_per_step(block_d):
    return 64 if interpreting() else max(1, 2048 // block_d)


def _pieces(d):
    """(BLOCK_A, BLOCK_B): a row of d values as two power-of-two pieces (see _embedding)."""
    block_a = 1 << (d.bit_length() - 1)
    return block_a, max(16, triton.next_power_of_2(d - block_a))


def _specialisation(args):
    """What a launch specialises on (dtypes, 16-byte alignment, ints divisible by 16 or equal to 1)."""
    return tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else
                 (type(a), a % 16 == 0, a == 1) if isinstance(a, int) else type(a) for a in args)


_RESIDENT = {}


def persistent_programs(kernel, args, meta, device):
    """Programs of a persistent grid: as many as the GPU holds at once, from the compiled
    kernel's registers and shared memory against the SM's limits (more programs would only queue
    behind the first wave, each adding its own flush of partial sums; fewer leave SM slots
    empty). The kernel is compiled for these args (its launch then reuses that binary). Two
    under the interpreter."""
    if interpreting():
        return 2
    key = (kernel, device.index, _specialisation(args), tuple(sorted(meta.items())))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()
        props = torch.cuda.get_device_properties(device)
        per_sm = programs_per_sm(compiled.n_regs, meta["num_warps"], compiled.metadata.shared,
                                 props.regs_per_multiprocessor, props.shared_memory_per_multiprocessor,
                                 props.max_threads_per_multi_processor // 32)
        _RESIDENT[key] = max(1, per_sm) * props.multi_processor_count
    return _RESIDENT[key]


def mask_sets_forward(noise, num_dropped, num_masked):
    """noise [B, 256] contiguous, num_masked a 1-element int64 tensor on noise's device ->
    (keep_index [B, 257 - num_dropped] int64, masked [B, 257] bool)."""
    batch, tokens = noise.shape
    keep_index = torch.empty(batch, tokens + 1 - num_dropped, dtype=torch.int64, device=noise.device)
    masked = torch.empty(batch, tokens + 1, dtype=torch.bool, device=noise.device)
    mask_sets_kernel[(batch,)](noise, num_masked, keep_index, masked, num_dropped, keep_index.shape[1],
                               TOKENS=tokens, BLOCK_J=tokens if interpreting() else 32, num_warps=4)
    return keep_index, masked


def _embed_args(ids, masked, keep_index, word, pos, class_id, mask_id):
    block_a, block_b = _pieces(word.shape[1])
    meta = dict(CLASS_ID=class_id, MASK_ID=mask_id, SEQ=masked.shape[1], ROWS=_rows_per_step(2 * block_a),
                BLOCK_A=block_a, BLOCK_B=block_b, num_warps=8 if block_a >= 512 else 4)
    return (ids, masked, keep_index, word, pos), meta


def embed_forward(ids, masked, keep_index, word, pos, weight, bias, eps, class_id, mask_id):
    """-> (out [B, KEPT, D] in word's dtype, mean [B*KEPT] fp32, rstd [B*KEPT] fp32). class_id,
    mask_id: the word rows of the class token (slot 0) and of masked slots."""
    n_rows, d = keep_index.numel(), word.shape[1]
    out = torch.empty(*keep_index.shape, d, dtype=word.dtype, device=word.device)
    mean = torch.empty(n_rows, dtype=torch.float32, device=word.device)
    rstd = torch.empty_like(mean)
    args, meta = _embed_args(ids, masked, keep_index, word, pos, class_id, mask_id)
    embed_forward_kernel[(triton.cdiv(n_rows, meta["ROWS"]),)](
        *args, weight, bias, out, mean, rstd, n_rows, keep_index.shape[1], d, eps, **meta)
    return out, mean, rstd


def embed_backward(dy, ids, masked, keep_index, word, pos, weight, bias, mean, rstd, class_id, mask_id):
    """-> (dword, dpos, dweight, dbias), each in its parameter's dtype (summed in fp32)."""
    n_rows, d = keep_index.numel(), word.shape[1]
    grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (word, pos, weight, bias)]
    args, meta = _embed_args(ids, masked, keep_index, word, pos, class_id, mask_id)
    args = (dy.contiguous(), *args, weight, mean, rstd, *grads)
    # rows_per_program is not specialised on, so any value compiles the binary that launches.
    programs = persistent_programs(embed_backward_kernel, (*args, n_rows, 0, keep_index.shape[1], d), meta,
                                   word.device)
    programs = min(triton.cdiv(n_rows, meta["ROWS"]), programs)
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, programs), meta["ROWS"]) * meta["ROWS"]
    embed_backward_kernel[(programs,)](*args, n_rows, rows_per_program, keep_index.shape[1], d, **meta)
    return tuple(g.to(t.dtype) for g, t in zip(grads, (word, pos, weight, bias)))


def restore_forward(x, rows, masked, pos):
    """x [B, KEPT, D], rows [B, 257] int32 (the kept row holding each slot, -1 if dropped),
    pos [257, D] -> [B, 257, D] in the promoted dtype of x and pos."""
    (batch, num_kept, d), seq = x.shape, masked.shape[1]
    out = torch.empty(batch, seq, d, dtype=torch.promote_types(x.dtype, pos.dtype), device=x.device)
    block_p, block_d = (64, 128) if interpreting() else (8, min(256, triton.next_power_of_2(d)))
    restore_forward_kernel[(batch, triton.cdiv(seq, block_p), triton.cdiv(d, block_d))](
        x, rows, masked, pos, out, num_kept, d,
        SEQ=seq, BLOCK_P=block_p, BLOCK_D=block_d, num_warps=4)
    return out


def restore_backward(dout, rows, masked, num_kept, x_dtype, pos_dtype):
    """dout [B, 257, D] -> (dx [B, num_kept, D] in x_dtype, dpos [257, D] in pos_dtype)."""
    batch, seq, d = dout.shape
    dx = torch.empty(batch, num_kept, d, dtype=x_dtype, device=dout.device)
    dpos = torch.zeros(seq, d, dtype=torch.float32, device=dout.device)
    # 8 images x 8 slots x 64 columns: B / 8 atomic adds per dpos element (1/8 of the elements
    # read), 384 programs at MAGE-B (B 256, D 768), no register spills at 8 warps (ptxas -v,
    # sm_90, triton 3.6; 4 warps spilled, and 16 images a program gave too few programs).
    batch_block, block_p, block_d = (4, 64, 128) if interpreting() else (8, 8, 64)
    restore_backward_kernel[(triton.cdiv(batch, batch_block), triton.cdiv(d, block_d))](
        dout.contiguous(), rows, masked, dx, dpos, batch, num_kept, d,
        SEQ=seq, BATCH=batch_block, BLOCK_P=block_p, BLOCK_D=block_d, num_warps=8)
    return dx, dpos.to(pos_dtype)
