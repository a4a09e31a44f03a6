"""Nearest-codebook search: d = (|z|^2 + |e|^2) - 2 z.e and its argmin in one kernel.

The official code materialises the N x K fp32 distance matrix (268 MB at MAGE-B's 65,536 x 1024)
and reads it back several times; here each program keeps a running (min, argmin) for its rows
while it walks the codebook, so the matrix is never written.

Tiling: a GEMM tiling of z [N, C] x codebook^T [C, K] with the argmin as the epilogue. A program
owns BLOCK_N rows of z and loops over the codebook in BLOCK_K codes, reducing over C in BLOCK_C
chunks with an fp32 tl.dot (input_precision="ieee": TF32 would move near-ties). The codebook
(1 MB at 1024 x 256 fp32) stays in L2, every program streams it, and z is read from HBM about once,
so the kernel is bound by the fp32 FMA rate, not by memory. |e|^2 is summed from the same codebook
tiles the dot product reads (BLOCK_K * C extra FMAs against BLOCK_N * BLOCK_K * C).

Exactness: the distance is the reference's expression in the reference's order: (|z|^2 + |e|^2)
first, then minus 2 z.e (2x is exact, so a fused multiply-add cannot change it). The three sums
over C are reduced in a different order than torch's BLAS, so two codes whose distances differ
by less than fp32 round-off (a few ulp of |z|^2 + |e|^2) can resolve differently; exactly equal
distances go to the lowest index, as torch.argmin does. NaN inputs are not checked (a host
sync): torch.argmin returns a NaN's index, here a NaN distance never wins.

PRECISION="tf32x3" (opt-in) runs z.e on the tensor cores as three TF32 products of split
operands (hi*hi + hi*lo + lo*hi, each operand's 24 bits carried as 11 + 11): about 2^-21 relative
error per product against fp32's 2^-24, so only near-ties a few ulp wider than the fp32 ones
move, at tensor-core rather than FMA throughput. The norms stay on the FMA units in fp32.
"""
import triton
import triton.language as tl

from ._runtime import interpreting


@triton.jit
def vq_nearest_kernel(z_ptr, codebook_ptr, ids_ptr, vectors_ptr,
                      N, K, C, S,
                      stride_zb, stride_zs, stride_zc,
                      stride_ek, stride_ec,
                      stride_qb, stride_qs, stride_qc,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                      WRITE_VECTORS: tl.constexpr, PRECISION: tl.constexpr):
    # Row n of z is (image n // S, position n % S): [N, C] (S = N) and the tokenizer's
    # [B, C, H, W] (S = H*W) are read in place, with no permute copy.
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    z_rows = z_ptr + (rows // S).to(tl.int64) * stride_zb + (rows % S).to(tl.int64) * stride_zs
    chans = tl.arange(0, BLOCK_C)

    z_norm = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        mask = row_ok[:, None] & (c0 + chans < C)[None, :]
        z = tl.load(z_rows[:, None] + (c0 + chans)[None, :] * stride_zc, mask=mask, other=0.0).to(tl.float32)
        z_norm += tl.sum(z * z, axis=1)

    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_code = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_ok = codes < K
        dot = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        e_norm = tl.zeros([BLOCK_K], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            chan_ok = c0 + chans < C
            z = tl.load(z_rows[:, None] + (c0 + chans)[None, :] * stride_zc,
                        mask=row_ok[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
            e = tl.load(codebook_ptr + codes[None, :] * stride_ek + (c0 + chans)[:, None] * stride_ec,
                        mask=code_ok[None, :] & chan_ok[:, None], other=0.0).to(tl.float32)
            dot = tl.dot(z, e, dot, input_precision=PRECISION)
            e_norm += tl.sum(e * e, axis=0)
        dist = (z_norm[:, None] + e_norm[None, :]) - 2.0 * dot
        dist = tl.where(code_ok[None, :], dist, float("inf"))
        tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_min < best  # strict: on a tie the earlier tile (lower index) keeps it
        best_code = tl.where(better, k0 + tile_arg, best_code)
        best = tl.where(better, tile_min, best)
    tl.store(ids_ptr + rows, best_code.to(tl.int64), mask=row_ok)

    if WRITE_VECTORS:  # the gather codebook[ids], written in z's layout
        q_rows = vectors_ptr + (rows // S).to(tl.int64) * stride_qb + (rows % S).to(tl.int64) * stride_qs
        for c0 in range(0, C, BLOCK_C):
            mask = row_ok[:, None] & (c0 + chans < C)[None, :]
            v = tl.load(codebook_ptr + best_code[:, None] * stride_ek + (c0 + chans)[None, :] * stride_ec, mask=mask)
            tl.store(q_rows[:, None] + (c0 + chans)[None, :] * stride_qc, v, mask=mask)


def _configs(tiles):
    if interpreting():  # one config (the interpreter cannot autotune), large tiles: fewer Python steps
        return [triton.Config({"BLOCK_N": 128, "BLOCK_K": 256, "BLOCK_C": 128})]
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_C": c}, num_warps=w, num_stages=s)
            for n, k, c, w, s in tiles]


# An fp32 "ieee" dot runs on the FMA units, each thread holding its accumulator block (32-64
# values) plus both operand fragments of a whole BLOCK_C slice in registers, so BLOCK_C stays at
# 16, the least tl.dot takes in triton 3.6 (the GPU machine's). None of these spills as
# launched, under triton 3.6 nor under the newer one CI installs, whose ptxas holds some configs
# to 128 registers with a few bytes spilled (benchmarks/results/compile-report.md;
# tests/test_compile.py fails on a spill): 64 x 128 at 4 warps spills with 3 stages and not
# with 2, at 8 warps with 2 or 3 stages on sm_90 (newer Triton) and not with 1; 64 x 64 at 4
# warps with 2 stages and not with 1; a 32-channel slice of 128 x 128 spills on sm_80 (newer
# Triton) with 1 or 2 stages, and more with 16 warps.
_IEEE_TILES = [(128, 128, 16, 8, 3), (128, 128, 16, 8, 2), (64, 128, 16, 8, 1), (64, 128, 16, 4, 2),
               (64, 64, 16, 4, 1)]
# Tensor-core tiles: the split operands (hi and lo of z and e, in the MMA layouts) take the
# registers, so BLOCK_C stays small here too: no spills as launched, and hundreds to thousands of
# bytes with BLOCK_C 64 or 256.
_TF32X3_TILES = [(128, 128, 16, 8, 2), (128, 128, 16, 8, 3), (128, 64, 16, 8, 4), (128, 64, 32, 8, 3),
                 (64, 64, 16, 4, 3)]
vq_nearest_ieee = triton.autotune(configs=_configs(_IEEE_TILES), key=["K", "C"])(vq_nearest_kernel)
vq_nearest_tf32x3 = triton.autotune(configs=_configs(_TF32X3_TILES), key=["K", "C"])(vq_nearest_kernel)
_TUNED = {"ieee": vq_nearest_ieee, "tf32x3": vq_nearest_tf32x3}


def vq_nearest_forward(z, codebook, ids, vectors=None, precision="ieee"):
    """z [B, S, C] (any strides), codebook [K, C] -> writes ids [B*S] int64 and, if given,
    vectors [B, S, C] (any strides) = codebook[ids]. precision: "ieee" or "tf32x3"."""
    n, (k, c) = z.shape[0] * z.shape[1], codebook.shape
    q = z if vectors is None else vectors  # a placeholder pointer when WRITE_VECTORS is off
    _TUNED[precision][lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        z, codebook, ids, q, n, k, c, z.shape[1],
        z.stride(0), z.stride(1), z.stride(2), codebook.stride(0), codebook.stride(1),
        q.stride(0), q.stride(1), q.stride(2), WRITE_VECTORS=vectors is not None, PRECISION=precision)
