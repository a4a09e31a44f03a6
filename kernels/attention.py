"""Fused attention for MAGE's shapes: softmax(q k^T * scale) v over [B, H, N, d] with fp32
accumulation and the row max subtracted, per-sample key lengths and in-kernel attention dropout;
the backward recomputes the probabilities (FlashAttention-2): a preprocess for
delta = rowsum(dO * O), then one kernel for dk/dv and one for dq. The launchers fill given outputs; the op around them
(custom op, autograd, checks, reference) is mage_fast/ops/attention.py.

Tiling, and why:
- N is 129 or 257: one row past a multiple of 64. Full BLOCK_M/BLOCK_N tiles skip the key mask
  and the ragged remainder runs as TAIL-sized tiles (the smallest tl.dot), so N = 257 costs
  256 + 16 rows and columns instead of 320, on the query side and on the key side. A remainder
  under a quarter of a block runs in the slab's last program after its full tile, not in a
  program of its own that would stream all of K and V (or Q and dO) for one or two rows.
- A (batch, head) slab is small (257 x 64 bf16 = 33 KB per tensor), so the grid is 1-D and
  slab-major: the programs of one slab run together and re-read its K/V (or Q/dO) from L2, and
  B*H*ceil(N/BLOCK) programs (e.g. 64*12*5 = 3840) fill 132 SMs many times over at MAGE's batches.
- Head dim 48 (MAGE-B's decoder) is padded to BLOCK_D = 64 in registers by masked loads: no
  extra memory traffic, a quarter of the MMA work wasted, which a bandwidth-bound kernel
  (arithmetic intensity ~N/2 FLOP/byte, below the H100 ridge) hardly notices.
- Backward in two kernels rather than one with atomics: dk/dv per key block and dq per query
  block each recompute q k^T and dO v^T (7 matmuls instead of 5), but atomically accumulating
  dq would push ceil(N/BLOCK_N) fp32 [N, d] partial sums per slab through L2's atomic units
  (more bytes than all the backward's HBM traffic at N = 257), need a zeroed fp32 buffer and a
  cast pass, and make dq nondeterministic. Recomputation is cheap in a bandwidth-bound regime.
- Dropout's keep mask comes from Philox counters (query, group of 16 keys; batch * H + head)
  under a seed read from device memory, so the backward regenerates it, nothing the size of the
  scores is stored, and a CUDA-graph replay can take a new seed. 8-bit draws: p is rounded to a
  multiple of 1/256 (0.1 -> 26/256 = 0.1015625), and the rescaling uses the rounded value.
"""
import warnings

import torch
import triton
import triton.language as tl

from ._runtime import interpreting, tma_allowed

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton before host-side tensor descriptors: no Hopper TMA configs
    TensorDescriptor = None

LOG2E = 1.4426950408889634
TAIL = 16  # smallest tl.dot tile: the ragged remainder of N runs at this size
TMA_BLOCK = tl.constexpr(64)  # rows per TMA copy (the descriptors' box): the Hopper configs' BLOCK_M and BLOCK_N
DROP_LEVELS = tl.constexpr(256)  # dropout draws are 8-bit: p is rounded to a multiple of 2^-8


# ----------------------------------------------------------------------------- kernel helpers

@triton.jit
def _slab_offset(bh, H, stride_b, stride_h):
    """Element offset of slab (batch, head) = divmod(bh, H); int64 so large batches cannot wrap."""
    return (bh // H).to(tl.int64) * stride_b + (bh % H).to(tl.int64) * stride_h


@triton.jit
def _program(N, BLOCK: tl.constexpr):
    """(slab, first row, end row) of this program. Slab-major: a slab's programs run together and
    share its tiles in L2. The last program of a slab runs to N: a remainder under a quarter of
    BLOCK is folded into it rather than given a program of its own (see blocks_per_slab)."""
    full = N // BLOCK
    num_blocks = tl.where((N - full * BLOCK) * 4 < BLOCK, tl.maximum(full, 1), full + 1)
    block = tl.program_id(0) % num_blocks
    start = block * BLOCK
    return tl.program_id(0) // num_blocks, start, tl.where(block == num_blocks - 1, N, start + BLOCK)


@triton.jit
def _slab(bh, H, N, stride_b, stride_h, KEY_LENGTHS, SEED, HAS_KL: tl.constexpr, DROPOUT: tl.constexpr):
    """q/k/v offset of slab bh, its key length and the dropout seed (read in the kernel, so a
    CUDA-graph replay picks up a new seed written into SEED)."""
    kl = N
    if HAS_KL:
        kl = tl.maximum(tl.minimum(tl.load(KEY_LENGTHS + bh // H).to(tl.int32), N), 0)
    seed = 0
    if DROPOUT:
        seed = tl.load(SEED)
    return _slab_offset(bh, H, stride_b, stride_h), kl, seed


@triton.jit
def _load_rows(base, rows, stride_n, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [rows, BLOCK_D] tile; rows past N and the head-dim padding read as 0, so padded rows
    and columns add nothing to any dot product."""
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < HEAD_DIM)
    return tl.load(base + rows[:, None] * stride_n + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(base, rows, stride_n, N, tile, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < N) & (cols[None, :] < HEAD_DIM)
    tl.store(base + rows[:, None] * stride_n + cols[None, :], tile.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _interleave(a, b):
    """Two [R, G] tiles as one [R, 2G] tile: a in the even columns, b in the odd ones."""
    return tl.reshape(tl.join(a, b), (a.shape[0], 2 * a.shape[1]))


@triton.jit
def _keep(seed, bh, rows, start_n, N, drop_threshold, COLS: tl.constexpr):
    """Dropout's keep mask [rows, COLS] for keys start_n + arange(COLS) (start_n a multiple of
    16) of slab bh. One Philox call per (slab, query, group of 16 keys) gives 4 x 32 random bits,
    an 8-bit draw for each of the 16 keys, as FlashAttention-2 draws them: Philox is ~80 integer
    ops (20 of them mul.hi/mul.lo), which per score would cost more than the rest of the kernel,
    and the three passes (forward, dk/dv, dq) each regenerate the mask. The draws depend on
    (slab, query, key) only, not on the tiling, so the backward's differently shaped tiles
    regenerate the forward's mask. A key is dropped when its draw is below drop_threshold =
    dropout_threshold(p). mage_fast.ops.attention.dropout_mask_ref draws the same bits in PyTorch."""
    groups = start_n // 16 + tl.arange(0, COLS // 16)
    r0, r1, r2, r3 = tl.philox(seed, rows[:, None] * tl.cdiv(N, 16) + groups[None, :], bh, 0, 0)
    words = _interleave(_interleave(r0, r1), _interleave(r2, r3))
    draws = _interleave(_interleave(words & 0xFF, (words >> 8) & 0xFF), _interleave((words >> 16) & 0xFF, words >> 24))
    return draws.to(tl.int32) >= drop_threshold


@triton.jit
def _keep_scale(drop_threshold):
    """1 / (1 - p) for the p the threshold stands for, so dropout leaves E[out] unchanged."""
    return DROP_LEVELS / (DROP_LEVELS - drop_threshold)


@triton.jit
def _dropped(keep, x, drop_threshold):
    """Dropout applied to x (probabilities or their gradients): zero or rescaled."""
    return tl.where(keep, x * _keep_scale(drop_threshold), 0.0)


# ----------------------------------------------------------------------------- forward

@triton.jit
def _load_tile(base, desc, bh, H, start, stride_n, N, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """Rows start + arange(ROWS) of slab bh of q, k or v: one TMA copy through the [B, H, N, d]
    tensor descriptor when TMA (its box is ROWS x BLOCK_D: rows past N and columns past d
    arrive as zeros, as the masked loads give them), else masked pointer loads."""
    if TMA:
        return desc.load([bh // H, bh % H, start, 0]).reshape(ROWS, BLOCK_D)
    return _load_rows(base, start + tl.arange(0, ROWS), stride_n, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _fwd_step(q, m, l, acc, rows, k_base, v_base, KD, VD, H, start_n, stride_n, N, kl, qk_scale, seed, bh,
              drop_threshold, COLS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              MASK_KEYS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr):
    cols = start_n + tl.arange(0, COLS)
    k = _load_tile(k_base, KD, bh, H, start_n, stride_n, N, COLS, HEAD_DIM, BLOCK_D, TMA)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 units
    if MASK_KEYS:
        s = tl.where(cols[None, :] < kl, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, 1)  # the softmax normaliser counts dropped probabilities too
    if DROPOUT:
        p = tl.where(_keep(seed, bh, rows, start_n, N, drop_threshold, COLS), p, 0.0)
    v = _load_tile(v_base, VD, bh, H, start_n, stride_n, N, COLS, HEAD_DIM, BLOCK_D, TMA)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l, acc


@triton.jit
def _fwd_rows(q_base, k_base, v_base, QD, KD, VD, H, o_base, lse_base, start_m, stride_n, stride_on, N, kl, qk_scale,
              seed, bh, drop_threshold, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_N: tl.constexpr, TAIL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
              Q_TMA: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr):
    rows = start_m + tl.arange(0, ROWS)
    q = _load_tile(q_base, QD, bh, H, start_m, stride_n, N, ROWS, HEAD_DIM, BLOCK_D, Q_TMA)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    l = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    if WS:
        # Triton splits the key loop into a TMA-issuing warp group and computing ones (Triton >=
        # 3.4). Its Hopper pass (3.6) takes q by TMA and no second loop carrying the softmax
        # state, so the key tail runs as one masked full block (TMA zero-fills past N).
        for start_n in tl.range(0, kl, BLOCK_N, warp_specialize=True):
            m, l, acc = _fwd_step(q, m, l, acc, rows, k_base, v_base, KD, VD, H, start_n, stride_n, N, kl, qk_scale,
                                  seed, bh, drop_threshold, BLOCK_N, HEAD_DIM, BLOCK_D, True, DROPOUT, PRECISION, TMA)
    else:  # the full key blocks (through the descriptors when TMA), then the masked TAIL tiles
        n_full = kl // BLOCK_N * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            m, l, acc = _fwd_step(q, m, l, acc, rows, k_base, v_base, KD, VD, H, start_n, stride_n, N, kl, qk_scale,
                                  seed, bh, drop_threshold, BLOCK_N, HEAD_DIM, BLOCK_D, False, DROPOUT, PRECISION, TMA)
        for start_n in range(n_full, kl, TAIL):
            m, l, acc = _fwd_step(q, m, l, acc, rows, k_base, v_base, KD, VD, H, start_n, stride_n, N, kl, qk_scale,
                                  seed, bh, drop_threshold, TAIL, HEAD_DIM, BLOCK_D, True, DROPOUT, PRECISION, False)
    # A sample without keys (key length 0) gets zeros, and lse = +inf zeros its backward's probabilities.
    l_safe = tl.where(l > 0, l, 1.0)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * _keep_scale(drop_threshold)
    _store_rows(o_base, rows, stride_on, N, out, HEAD_DIM, BLOCK_D)
    tl.store(lse_base + rows, tl.where(l > 0, m + tl.log2(l_safe), float("inf")), mask=rows < N)


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, KEY_LENGTHS, SEED, QD, KD, VD, stride_b, stride_h, stride_n, stride_ob, stride_oh,
              stride_on, H, N, qk_scale, drop_threshold, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr, HAS_KL: tl.constexpr,
              DROPOUT: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr = False, WS: tl.constexpr = False):
    """QD, KD, VD: q, k, v's tensor descriptors (boxes of TMA_BLOCK rows), or None; the Hopper
    configs (TMA) copy the full tiles through them, the TAIL tiles by pointer loads."""
    tl.static_assert(not TMA or (BLOCK_M == TMA_BLOCK and BLOCK_N == TMA_BLOCK))
    bh, start_m, end_m = _program(N, BLOCK_M)
    off, kl, seed = _slab(bh, H, N, stride_b, stride_h, KEY_LENGTHS, SEED, HAS_KL, DROPOUT)
    o_base = O + _slab_offset(bh, H, stride_ob, stride_oh)
    tail = start_m
    # With TMA, rows past N arrive as zeros and are not stored, so a short program (the last: end_m
    # = N) runs one full tile too; with no branch around it, 3.6's warp specialisation compiles.
    if TMA or start_m + BLOCK_M <= end_m:
        _fwd_rows(Q + off, K + off, V + off, QD, KD, VD, H, o_base, LSE + bh * N, start_m, stride_n, stride_on, N,
                  kl, qk_scale, seed, bh, drop_threshold, BLOCK_M, HEAD_DIM, BLOCK_D, BLOCK_N, TAIL, DROPOUT,
                  PRECISION, TMA, TMA, WS)
        tail = start_m + BLOCK_M
    for start in range(tail, end_m, TAIL):
        _fwd_rows(Q + off, K + off, V + off, QD, KD, VD, H, o_base, LSE + bh * N, start, stride_n, stride_on, N,
                  kl, qk_scale, seed, bh, drop_threshold, TAIL, HEAD_DIM, BLOCK_D, BLOCK_N, TAIL, DROPOUT, PRECISION,
                  False, TMA, False)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _attn_bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_on, H, N, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    bh, start_m, end_m = _program(N, BLOCK_M)
    off = _slab_offset(bh, H, stride_ob, stride_oh)
    for start in range(start_m, end_m, BLOCK_M):  # the last program: a full block, then the folded rows
        rows = start + tl.arange(0, BLOCK_M)
        o = _load_rows(O + off, rows, stride_on, N, HEAD_DIM, BLOCK_D).to(tl.float32)
        do = _load_rows(DO + off, rows, stride_on, N, HEAD_DIM, BLOCK_D).to(tl.float32)
        tl.store(DELTA + bh * N + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _dkdv_step(k, v, dk, dv, start_n, q_base, do_base, lse_base, delta_base, start_m, stride_n, stride_on, N, kl,
               qk_scale, seed, bh, drop_threshold, ROWS: tl.constexpr, COLS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, HAS_KL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    # Transposed ([keys, queries]) so the products accumulate into this program's dk/dv rows.
    # Query rows past N load q = dO = lse = delta = 0 and so contribute nothing.
    rows = start_m + tl.arange(0, ROWS)
    cols = start_n + tl.arange(0, COLS)
    q = _load_rows(q_base, rows, stride_n, N, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base, rows, stride_on, N, HEAD_DIM, BLOCK_D)
    lse = tl.load(lse_base + rows, mask=rows < N, other=0.0)
    delta = tl.load(delta_base + rows, mask=rows < N, other=0.0)
    p = tl.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
    if HAS_KL:  # a key block may straddle the key length; keys past N are never stored
        p = tl.where(cols[:, None] < kl, p, 0.0)
    dp = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    if DROPOUT:
        keep = tl.trans(_keep(seed, bh, rows, start_n, N, drop_threshold, COLS))
        dv += tl.dot(_dropped(keep, p, drop_threshold).to(do.dtype), do, input_precision=PRECISION)
        dp = _dropped(keep, dp, drop_threshold)
    else:
        dv += tl.dot(p.to(do.dtype), do, input_precision=PRECISION)
    ds = p * (dp - delta[None, :])
    dk += tl.dot(ds.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_cols(q_base, k_base, v_base, do_base, dk_base, dv_base, lse_base, delta_base, start_n, stride_n, stride_on,
               stride_gn, N, kl, qk_scale, sm_scale, seed, bh, drop_threshold, COLS: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, TAIL: tl.constexpr,
               HAS_KL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    cols = start_n + tl.arange(0, COLS)
    k = _load_rows(k_base, cols, stride_n, N, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, cols, stride_n, N, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([COLS, BLOCK_D], tl.float32)
    dv = tl.zeros([COLS, BLOCK_D], tl.float32)
    m_end = tl.where(start_n < kl, N, 0)  # keys past the key length: no query loop, zero grads
    m_full = m_end // BLOCK_M * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk, dv = _dkdv_step(k, v, dk, dv, start_n, q_base, do_base, lse_base, delta_base, start_m, stride_n,
                            stride_on, N, kl, qk_scale, seed, bh, drop_threshold, BLOCK_M, COLS, HEAD_DIM, BLOCK_D,
                            HAS_KL, DROPOUT, PRECISION)
    for start_m in range(m_full, m_end, TAIL):
        dk, dv = _dkdv_step(k, v, dk, dv, start_n, q_base, do_base, lse_base, delta_base, start_m, stride_n,
                            stride_on, N, kl, qk_scale, seed, bh, drop_threshold, TAIL, COLS, HEAD_DIM, BLOCK_D,
                            HAS_KL, DROPOUT, PRECISION)
    _store_rows(dk_base, cols, stride_gn, N, dk * sm_scale, HEAD_DIM, BLOCK_D)
    _store_rows(dv_base, cols, stride_gn, N, dv, HEAD_DIM, BLOCK_D)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KEY_LENGTHS, SEED, stride_b, stride_h, stride_n, stride_ob,
                   stride_oh, stride_on, stride_gb, stride_gh, stride_gn, H, N, qk_scale, sm_scale, drop_threshold,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   TAIL: tl.constexpr, HAS_KL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    bh, start_n, end_n = _program(N, BLOCK_N)
    off, kl, seed = _slab(bh, H, N, stride_b, stride_h, KEY_LENGTHS, SEED, HAS_KL, DROPOUT)
    do_base = DO + _slab_offset(bh, H, stride_ob, stride_oh)
    g_off = _slab_offset(bh, H, stride_gb, stride_gh)
    tail = start_n
    if start_n + BLOCK_N <= end_n:
        _dkdv_cols(Q + off, K + off, V + off, do_base, DK + g_off, DV + g_off, LSE + bh * N, DELTA + bh * N,
                   start_n, stride_n, stride_on, stride_gn, N, kl, qk_scale, sm_scale, seed, bh, drop_threshold,
                   BLOCK_N, HEAD_DIM, BLOCK_D, BLOCK_M, TAIL, HAS_KL, DROPOUT, PRECISION)
        tail = start_n + BLOCK_N
    for start in range(tail, end_n, TAIL):
        _dkdv_cols(Q + off, K + off, V + off, do_base, DK + g_off, DV + g_off, LSE + bh * N, DELTA + bh * N,
                   start, stride_n, stride_on, stride_gn, N, kl, qk_scale, sm_scale, seed, bh, drop_threshold,
                   TAIL, HEAD_DIM, BLOCK_D, BLOCK_M, TAIL, HAS_KL, DROPOUT, PRECISION)


@triton.jit
def _dq_step(q, do, lse, delta, dq, rows, k_base, v_base, start_n, stride_n, N, kl, qk_scale, seed, bh, drop_threshold,
             COLS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_KEYS: tl.constexpr,
             DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    # Keys past N load k = v = 0 and so add nothing to dq; keys in [kl, N) must be masked.
    cols = start_n + tl.arange(0, COLS)
    k = _load_rows(k_base, cols, stride_n, N, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, cols, stride_n, N, HEAD_DIM, BLOCK_D)
    p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASK_KEYS:
        p = tl.where(cols[None, :] < kl, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if DROPOUT:
        dp = _dropped(_keep(seed, bh, rows, start_n, N, drop_threshold, COLS), dp, drop_threshold)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _dq_rows(q_base, k_base, v_base, do_base, dq_base, lse_base, delta_base, start_m, stride_n, stride_on, stride_gn,
             N, kl, qk_scale, sm_scale, seed, bh, drop_threshold, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr, DROPOUT: tl.constexpr,
             PRECISION: tl.constexpr):
    rows = start_m + tl.arange(0, ROWS)
    q = _load_rows(q_base, rows, stride_n, N, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base, rows, stride_on, N, HEAD_DIM, BLOCK_D)
    lse = tl.load(lse_base + rows, mask=rows < N, other=0.0)
    delta = tl.load(delta_base + rows, mask=rows < N, other=0.0)
    dq = tl.zeros([ROWS, BLOCK_D], tl.float32)
    n_full = kl // BLOCK_N * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_step(q, do, lse, delta, dq, rows, k_base, v_base, start_n, stride_n, N, kl, qk_scale, seed, bh,
                      drop_threshold, BLOCK_N, HEAD_DIM, BLOCK_D, False, DROPOUT, PRECISION)
    for start_n in range(n_full, kl, TAIL):
        dq = _dq_step(q, do, lse, delta, dq, rows, k_base, v_base, start_n, stride_n, N, kl, qk_scale, seed, bh,
                      drop_threshold, TAIL, HEAD_DIM, BLOCK_D, True, DROPOUT, PRECISION)
    _store_rows(dq_base, rows, stride_gn, N, dq * sm_scale, HEAD_DIM, BLOCK_D)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KEY_LENGTHS, SEED, stride_b, stride_h, stride_n, stride_ob, stride_oh,
                 stride_on, stride_gb, stride_gh, stride_gn, H, N, qk_scale, sm_scale, drop_threshold,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 TAIL: tl.constexpr, HAS_KL: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    bh, start_m, end_m = _program(N, BLOCK_M)
    off, kl, seed = _slab(bh, H, N, stride_b, stride_h, KEY_LENGTHS, SEED, HAS_KL, DROPOUT)
    do_base = DO + _slab_offset(bh, H, stride_ob, stride_oh)
    dq_base = DQ + _slab_offset(bh, H, stride_gb, stride_gh)
    tail = start_m
    if start_m + BLOCK_M <= end_m:
        _dq_rows(Q + off, K + off, V + off, do_base, dq_base, LSE + bh * N, DELTA + bh * N, start_m, stride_n,
                 stride_on, stride_gn, N, kl, qk_scale, sm_scale, seed, bh, drop_threshold, BLOCK_M, HEAD_DIM, BLOCK_D,
                 BLOCK_N, TAIL, DROPOUT, PRECISION)
        tail = start_m + BLOCK_M
    for start in range(tail, end_m, TAIL):
        _dq_rows(Q + off, K + off, V + off, do_base, dq_base, LSE + bh * N, DELTA + bh * N, start, stride_n,
                 stride_on, stride_gn, N, kl, qk_scale, sm_scale, seed, bh, drop_threshold, TAIL, HEAD_DIM,
                 BLOCK_D, BLOCK_N, TAIL, DROPOUT, PRECISION)


@triton.jit
def _dropout_mask_kernel(MASK, SEED, N, drop_threshold, BLOCK: tl.constexpr):
    """Writes the keep mask the attention kernels apply, for tests and debugging."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(SEED)
    for start_n in range(0, N, BLOCK):
        cols = start_n + tl.arange(0, BLOCK)
        keep = _keep(seed, bh, rows, start_n, N, drop_threshold, BLOCK)
        mask = (rows[:, None] < N) & (cols[None, :] < N)
        tl.store(MASK + (bh * N + rows[:, None]).to(tl.int64) * N + cols[None, :], keep.to(tl.int8), mask=mask)


# ----------------------------------------------------------------------------- launchers

def tma_config(warps, stages, warp_specialize):
    """A Hopper config: TMA_BLOCK x TMA_BLOCK tiles of q, k and v copied by TMA through their
    tensor descriptors, the key loop warp-specialized or not."""
    return triton.Config({"BLOCK_M": TMA_BLOCK.value, "BLOCK_N": TMA_BLOCK.value, "TMA": True, "WS": warp_specialize},
                         num_warps=warps, num_stages=stages)


def _compiles(kernel, config, named_args, kwargs):
    """Whether this launch compiles with config (Triton caches the binary for the launch). A
    Hopper config that this Triton cannot build (one without warp specialisation, say) is left
    out of autotuning with a warning instead of failing the launch."""
    try:
        kernel.run(*named_args.values(), **dict(kwargs, warmup=True), **config.all_kwargs())
        return True
    except Exception as error:  # the compiler's errors have no common base class
        lines = str(error).strip().splitlines()
        warnings.warn(f"attention: Hopper config {config} left out, it does not compile: "
                      f"{lines[-1] if lines else type(error).__name__}")
        return False


def _tuned(kernel, sm90, sm80, sm90_tma=()):
    """Autotuned over a few (BLOCK_M, BLOCK_N, warps, stages) on GPU, keyed on N, head dim, the
    mask/dropout variant and (automatically) dtypes; one config under the interpreter, which
    cannot benchmark and runs large blocks fastest. sm90 and sm80 list the tiles for Hopper and
    for Ampere (and anything else): sm_80's mma.sync keeps more of a tile in registers than
    Hopper's wgmma, so tiles that fit one spill on the other (benchmarks/results/compile-report.md).
    sm90_tma: (warps, stages, warp-specialized) Hopper configs that copy tiles by TMA
    (tma_config), tried where the launch passes descriptors (KD). The architecture is read from
    Triton's driver at the first launch."""
    if interpreting():
        return triton.autotune([triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)],
                               key=["N", "HEAD_DIM", "HAS_KL", "DROPOUT"])(kernel)
    tiles = list(dict.fromkeys(sm90 + sm80))
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]
    hopper = {id(c) for c, tile in zip(configs, tiles) if tile in sm90}
    ampere = {id(c) for c, tile in zip(configs, tiles) if tile in sm80}
    tma = [tma_config(*args) for args in sm90_tma]
    hopper |= {id(c) for c in tma}

    def for_this_arch(candidates, named_args, **kwargs):
        ids = hopper if triton.runtime.driver.active.get_current_target().arch >= 90 else ampere
        return [c for c in candidates if id(c) in ids and (not c.kwargs.get("TMA") or (
            named_args.get("KD") is not None and _compiles(kernel, c, named_args, kwargs)))]

    return triton.autotune(configs + tma, key=["N", "HEAD_DIM", "HAS_KL", "DROPOUT"],
                           prune_configs_by={"early_config_prune": for_this_arch})(kernel)


# The forward's Hopper variant (docs/kernels.md#attention): (warps, stages, warp-specialized) at
# 64 x 64 tiles; q, k and v copied by TMA, k and v 2-3 stages deep, into wgmma.
HOPPER_TMA = [(4, 2, False), (4, 3, False), (4, 2, True), (4, 3, True)]
# Forward: query rows per program x key step. dkdv: query step x keys per program. dq: rows per
# program x key step. 16-bit inputs (tensor-core dots): tiles a program keeps (q and its
# accumulator, or k, v, dk, dv) in registers without spilling, dropout included, at d = 48 and
# 64 as launched (tests/test_compile.py), under triton 3.6 and the newer one CI installs. That
# one's sm_80 ptxas holds a tile it could fit in 130-170 registers to 128 with a few bytes
# spilled, so the small sm_80 tiles are those neither spills: the forward's 32 x 64 at 4 warps
# (at 8 it spills), no 32 x 32 forward (at 4 or 8 warps, 1 or 2 stages, one of the two
# spills), the dq's 32 x 32 with 1 stage (with 2 it spills), no 128 x 32 dq (255 registers and
# a spill with 1 stage or 2).
_fwd = _tuned(_attn_fwd, sm90=[(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 4, 2)],
              sm80=[(128, 64, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
              sm90_tma=HOPPER_TMA)
# Each config accumulates the softmax over keys in its own order, and autotuning picks one by
# timing in each process: generation (no dropout) would then round differently across
# processes and resumes. Without dropout the forward runs one fixed config instead (one per
# architecture).
_fwd_fixed = _tuned(_attn_fwd, sm90=[(64, 64, 4, 2)], sm80=[(64, 64, 8, 2)])
_dkdv = _tuned(_attn_bwd_dkdv, sm90=[(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2)],
               sm80=[(32, 32, 4, 2), (16, 64, 4, 2)])
_dq = _tuned(_attn_bwd_dq, sm90=[(64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2)],
             sm80=[(32, 64, 8, 2), (32, 32, 4, 1)])
# fp32 ("ieee" dots on the FMA units, operands in registers): the tiles above spill 1-15 KB per
# thread; small tiles without pipelining fit (a 32 x 32 forward spills at d = 48; on sm_80 a
# 32 x 32 dk/dv spills under the newer Triton at 4 warps, and under 3.6 at 8: 16 x 32 fits).
_fwd_ieee = _tuned(_attn_fwd, sm90=[(16, 16, 4, 1), (32, 16, 4, 1)], sm80=[(16, 16, 4, 1)])
_fwd_fixed_ieee = _tuned(_attn_fwd, sm90=[(16, 16, 4, 1)], sm80=[(16, 16, 4, 1)])
_dkdv_ieee = _tuned(_attn_bwd_dkdv, sm90=[(32, 32, 4, 1), (16, 16, 4, 1)],
                    sm80=[(16, 32, 4, 1), (16, 16, 4, 1)])
_dq_ieee = _tuned(_attn_bwd_dq, sm90=[(32, 32, 4, 1), (32, 16, 4, 2)], sm80=[(32, 32, 4, 1), (32, 16, 4, 2)])
_KERNELS = {"tf32": dict(fwd=_fwd, fwd_fixed=_fwd_fixed, dkdv=_dkdv, dq=_dq),
            "ieee": dict(fwd=_fwd_ieee, fwd_fixed=_fwd_fixed_ieee, dkdv=_dkdv_ieee, dq=_dq_ieee)}
_PRE_BLOCK = 64


def dropout_threshold(dropout_p: float) -> int:
    """The kernels drop a probability when its 8-bit draw is below this: the drop probability
    is dropout_p rounded to a multiple of 2^-8 (and the rescaling uses that same value)."""
    return round(dropout_p * DROP_LEVELS.value)


def _constexprs(q, key_lengths, threshold):
    d = q.shape[-1]
    return dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), TAIL=TAIL,
                HAS_KL=key_lengths is not None, DROPOUT=threshold > 0,
                # fp32 stays true fp32 (no TF32) to match the official computation to ~1e-6.
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def blocks_per_slab(n: int, block: int) -> int:
    """Programs per (batch, head) slab for BLOCK = block: N // block, plus one for a remainder of
    at least a quarter block; a smaller remainder runs in the last program (as TAIL tiles after
    its full tile). At N = 129 with 64-row tiles the 129th row would otherwise be a third program
    that streams all of K and V for one row. The kernels' _program computes the same."""
    full, rest = divmod(n, block)
    return max(full, 1) if 4 * rest < block else full + 1


def _grid(num_slabs, n, block):
    return lambda meta: (blocks_per_slab(n, meta[block]) * num_slabs,)


def tma_descriptors(q, k, v, block_d):
    """q, k, v as [B, H, N, d] tensor descriptors with boxes of TMA_BLOCK rows x block_d (the
    head dim padded, so columns past d arrive as zeros), for the forward's Hopper configs; None
    where TMA cannot read them: other than 16-bit, or a base or a stride that is not a positive
    multiple of 16 bytes (a view at an odd offset, an expanded dimension), or a Triton without
    host-side descriptors, or MAGE_FAST_NO_TMA=1. MAGE's layouts (the fused qkv, contiguous
    [B, H, N, d]) all qualify."""
    if TensorDescriptor is None or not tma_allowed():
        return None, None, None
    for t in (q, k, v):
        if t.element_size() != 2 or t.data_ptr() % 16 or t.stride(-1) != 1 or any(
                s <= 0 or s * 2 % 16 for s in t.stride()[:-1]):
            return None, None, None
    box = [1, 1, TMA_BLOCK.value, block_d]
    return tuple(TensorDescriptor(t, list(t.shape), list(t.stride()), box) for t in (q, k, v))


def attention_forward(q, k, v, out, lse, key_lengths, seed, dropout_p, scale):
    """Fills out and lse ([B, H, N] fp32, log2 units). q, k, v: [B, H, N, d] with one set of
    strides and a unit last stride; out: [B, H, N, d], any such strides."""
    B, H, N, _ = q.shape
    threshold = dropout_threshold(dropout_p)
    meta = _constexprs(q, key_lengths, threshold)
    kernel = _KERNELS[meta["PRECISION"]]["fwd" if threshold > 0 else "fwd_fixed"]
    descriptors = tma_descriptors(q, k, v, meta["BLOCK_D"]) if kernel is _fwd else (None,) * 3  # its Hopper configs
    kernel[_grid(B * H, N, "BLOCK_M")](q, k, v, out, lse, key_lengths, seed, *descriptors, *q.stride()[:3],
                                       *out.stride()[:3], H, N, scale * LOG2E, threshold, **meta)


def attention_backward(do, q, k, v, out, lse, dq, dk, dv, key_lengths, seed, dropout_p, scale):
    """Fills dq, dk, dv (one set of strides). do and out share strides."""
    B, H, N, _ = q.shape
    threshold = dropout_threshold(dropout_p)
    meta = _constexprs(q, key_lengths, threshold)
    # With dropout too, rowsum(dP * P) = rowsum(dO * O) for the dropped-and-rescaled output O.
    delta = torch.empty_like(lse)
    _attn_bwd_preprocess[(blocks_per_slab(N, _PRE_BLOCK) * B * H,)](
        out, do, delta, *out.stride()[:3], H, N, HEAD_DIM=meta["HEAD_DIM"], BLOCK_D=meta["BLOCK_D"],
        BLOCK_M=_PRE_BLOCK)
    common = (key_lengths, seed, *q.stride()[:3], *do.stride()[:3], *dq.stride()[:3], H, N, scale * LOG2E, scale,
              threshold)
    kernels = _KERNELS[meta["PRECISION"]]
    kernels["dkdv"][_grid(B * H, N, "BLOCK_N")](q, k, v, do, dk, dv, lse, delta, *common, **meta)
    kernels["dq"][_grid(B * H, N, "BLOCK_M")](q, k, v, do, dq, lse, delta, *common, **meta)


def dropout_keep_mask(seed: torch.Tensor, batch: int, num_heads: int, n: int, dropout_p: float) -> torch.Tensor:
    """[B, H, N, N] bool: the keep mask the kernels apply for this seed (a one-element int64
    tensor), for tests and debugging."""
    mask = torch.empty((batch, num_heads, n, n), dtype=torch.int8, device=seed.device)
    block = 64
    _dropout_mask_kernel[(batch * num_heads, triton.cdiv(n, block))](mask, seed, n, dropout_threshold(dropout_p),
                                                                      BLOCK=block)
    return mask.bool()
