"""The fused attention (kernels/attention.py, mage_fast/ops/attention.py) against its float64
reference: forward and gradients over MAGE's ragged lengths (N = 129, 257) and head dims (48, 64),
key lengths, in-kernel dropout, the packed-qkv entry point, the PyTorch fallback, validation,
the torch.library registration (PTX/cubin for sm_80 and sm_90: test_compile.py).

Without CUDA the kernels run under Triton's interpreter on CPU (bf16 is GPU-only: the interpreter
miscomputes it). Tests marked gpu add bf16, full MAGE shapes, inductor and CUDA-graph replay."""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import assert_error_bounded, poisoned_allocations, rel_err
from mage_fast import backends
from mage_fast.backends import backend_report
from mage_fast.cuda_graphs import capture
from mage_fast.kernels import attention as KERNELS
from mage_fast.kernels.attention import DROP_LEVELS, dropout_keep_mask, dropout_threshold
from mage_fast.ops import attention as OPS
from mage_fast.ops.attention import attention, attention_qkv, attention_ref, dropout_mask_ref

pytestmark = pytest.mark.triton  # runs the kernels: under the interpreter without CUDA

FALLBACK = OPS._attention_pytorch
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL = "triton" if DEVICE == "cuda" else "triton-interpret"
HALF = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
FP32_TOL = 2e-6  # "well under 1e-5": the kernels measure ~4e-7 at N = 257


def _unexpected(*args, **kwargs):
    raise AssertionError("this path should not have run")


@pytest.fixture(autouse=True)
def kernels_only(monkeypatch):
    """Every test runs the Triton kernels: the PyTorch path fails it unless it asks for that path."""
    assert OPS.backend(DEVICE)[0] == KERNEL
    monkeypatch.setattr(OPS, "_attention_pytorch", _unexpected)


@pytest.fixture
def pytorch_path(monkeypatch, no_interpreter):
    """CPU tensors take the PyTorch path (as without the interpreter); the kernels must not run."""
    monkeypatch.setattr(OPS, "_attention_pytorch", FALLBACK)
    monkeypatch.setattr(OPS, "_attention_op", _unexpected)
    assert OPS.backend("cpu")[0] == "pytorch"


def randn(*shape, dtype=torch.float32, seed=0, device=DEVICE):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def key_lengths_for(batch, n, device=DEVICE):
    """All keys for sample 0; about 2/3 of them for the others: full key blocks, then masked tails."""
    return torch.tensor([n] + [max(1, 2 * n // 3 - i) for i in range(batch - 1)], device=device)


def outputs_and_grads(fn, inputs, grad_out):
    """fn(*inputs) and the gradients of its inputs for grad_out, with every torch.empty NaN-filled."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    with poisoned_allocations():
        out = fn(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_out)
    return (out, *grads)


def check(got, exact, same_precision, what):
    """fp32: relative error well under 1e-5 against float64. fp16/bf16: flash-attention's rule,
    at most twice the error of the same-precision PyTorch computation. Where the exact result is
    zero (score gradients when a row has a single key) only rounding may remain."""
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    if not exact.any():
        assert got.abs().max() <= 1e-5, f"{what}: {got.abs().max():.2e} where 0 is exact"
    elif got.dtype == torch.float32:
        assert rel_err(got, exact) < FP32_TOL, f"{what}: relative error {rel_err(got, exact):.2e}"
    else:
        assert_error_bounded(got, same_precision, exact, what=what)


def check_against_reference(fn, b, h, n, d, dtype, key_lengths=None, dropout_mask=None, dropout_p=0.0, scale=None):
    """fn(q, k, v) and its gradients against attention_ref (float64, and in the input precision)."""
    q, k, v, do = (randn(b, h, n, d, dtype=dtype, seed=s) for s in range(4))
    ref = dict(key_lengths=key_lengths, scale=scale, dropout_mask=dropout_mask, dropout_p=dropout_p)
    got = outputs_and_grads(fn, (q, k, v), do)
    exact = outputs_and_grads(lambda *x: attention_ref(*x, **ref), [t.double() for t in (q, k, v)], do.double())
    same = outputs_and_grads(lambda *x: attention_ref(*x, **ref, upcast=False), (q, k, v), do)
    for name, *results in zip(("out", "dq", "dk", "dv"), got, exact, same):
        check(*results, f"{name} {dtype} B={b} H={h} N={n} d={d}")


# ----------------------------------------------------------------------------- the kernels

@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("n,d", [(n, d) for n in (1, 7, 129, 257) for d in (48, 64)])
@pytest.mark.parametrize("ragged", [False, True], ids=["all-keys", "key-lengths"])
def test_forward_and_gradients(dtype, n, d, ragged):
    kl = key_lengths_for(2, n) if ragged else None
    check_against_reference(lambda *x: attention(*x, key_lengths=kl), 2, 2, n, d, dtype, key_lengths=kl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_class_conditional_decoder_length(dtype):
    """N = 258, the class-conditional decoder's 257 slots and its label token: even, not a
    power of two, past a 128-row block boundary by two, at MAGE-B's decoder head dim."""
    check_against_reference(lambda *x: attention(*x), 2, 2, 258, 48, dtype)


@pytest.mark.parametrize("d", [32, 80, 96, 128])
def test_other_head_dims(d):
    kl = key_lengths_for(2, 129)
    check_against_reference(lambda *x: attention(*x, key_lengths=kl), 2, 2, 129, d, torch.float16, key_lengths=kl)


def test_scale_and_key_lengths_past_n():
    """An explicit scale is used as given; key lengths above N mean N."""
    kl = torch.tensor([7, 100], device=DEVICE)
    check_against_reference(lambda *x: attention(*x, key_lengths=kl, scale=0.3), 2, 3, 7, 64, torch.float32,
                            key_lengths=kl, scale=0.3)


def test_a_sample_without_keys_gets_zeros():
    """Key length 0 or below: zero output and gradients, as the PyTorch path (SDPA) gives; the
    other samples are untouched."""
    kl = torch.tensor([0, 5, -3], device=DEVICE)
    q, k, v, do = (randn(3, 2, 7, 64, seed=s) for s in range(4))
    got = outputs_and_grads(lambda *x: attention(*x, key_lengths=kl), (q, k, v), do)
    pytorch = outputs_and_grads(lambda *x: FALLBACK(*x, kl, 0.0, 64 ** -0.5), (q, k, v), do)
    exact = outputs_and_grads(lambda *x: attention_ref(*x, key_lengths=kl[1:2]),
                              [t[1:2].double() for t in (q, k, v)], do[1:2].double())
    for name, g, p, e in zip(("out", "dq", "dk", "dv"), got, pytorch, exact):
        assert torch.isfinite(g).all() and not g[[0, 2]].any() and not p[[0, 2]].any(), name
        check(g[1:2], e, None, f"{name} of the sample with keys")


@pytest.mark.parametrize("same_strides", [True, False])
def test_strided_inputs(same_strides):
    """Views (as SDPA callers pass them) are read through their strides; q, k, v with different
    strides are copied to one layout first."""
    q, k, v, do = (randn(2, 7, 3, 32, seed=s).transpose(1, 2) for s in range(4))
    k = k if same_strides else k.contiguous()
    got = outputs_and_grads(attention, (q, k, v), do)
    exact = outputs_and_grads(attention_ref, [t.double() for t in (q, k, v)], do.double())
    for name, g, e in zip(("out", "dq", "dk", "dv"), got, exact):
        check(g, e, None, f"{name} strided")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,h,n,d", [(64, 12, 129, 64), (64, 12, 257, 64), (64, 16, 257, 48), (256, 16, 129, 64),
                                     (256, 16, 257, 48), (64, 16, 257, 64)])  # MAGE-B, MAGE-L
def test_full_mage_shapes(dtype, b, h, n, d):
    kl = key_lengths_for(b, n)
    check_against_reference(lambda *x: attention(*x, key_lengths=kl), b, h, n, d, dtype, key_lengths=kl)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("n,d,dropout_p", [(7, 64, 0.0), (129, 48, 0.1)])
def test_qkv_entry_point_equals_4d(dtype, n, d, dropout_p):
    """[B, N, 3D] in, [B, N, D] out, d[B, N, 3D] back: bit-identical to the 4-D op on views."""
    b, h = 2, 3
    kl = key_lengths_for(b, n)
    qkv, do = randn(b, n, 3 * h * d, dtype=dtype), randn(b, n, h * d, dtype=dtype, seed=1)
    options = dict(key_lengths=kl, dropout_p=dropout_p, seed=7)

    def four_d(x):
        q, k, v = x.unflatten(-1, (3, h, d)).permute(2, 0, 3, 1, 4)
        return attention(q, k, v, **options).transpose(1, 2).reshape(b, n, h * d)

    out, dqkv = outputs_and_grads(lambda x: attention_qkv(x, h, **options), [qkv], do)
    assert out.shape == (b, n, h * d) and out.is_contiguous() and dqkv.shape == qkv.shape
    want = outputs_and_grads(four_d, [qkv], do)
    assert torch.equal(out, want[0]) and torch.equal(dqkv, want[1])


def test_qkv_with_a_strided_last_dim():
    """A qkv whose last dim is not contiguous is read through a copy; its gradient still comes
    back right (in a contiguous tensor)."""
    b, n, h, d = 2, 7, 2, 16
    qkv = randn(b, 3 * h * d, n).transpose(1, 2)
    assert qkv.stride(-1) != 1
    do = randn(b, n, h * d, seed=1)
    got = outputs_and_grads(lambda x: attention_qkv(x, h), [qkv], do)

    def exact(x):
        q, k, v = x.unflatten(-1, (3, h, d)).permute(2, 0, 3, 1, 4)
        return attention_ref(q, k, v).transpose(1, 2).reshape(b, n, h * d)

    want = outputs_and_grads(exact, [qkv.double()], do.double())
    for name, g, e in zip(("out", "dqkv"), got, want):
        check(g, e, None, f"{name} strided qkv")


# ----------------------------------------------------------------------------- dropout

def test_dropout_mask_statistics():
    """The drop fraction is p rounded to a multiple of 1/256; draws are independent across seeds,
    slabs, queries and the 16 keys that share one Philox call (two independent fair masks agree
    half the time)."""
    seed = torch.tensor([1234], device=DEVICE)
    for p in (0.1, 0.5):
        keep = dropout_keep_mask(seed, 2, 3, 129, p)
        p_dropped = dropout_threshold(p) / DROP_LEVELS.value
        assert abs((~keep).double().mean().item() - p_dropped) < 5 * math.sqrt(p * (1 - p) / keep.numel())
    assert torch.equal(keep, dropout_keep_mask(seed, 2, 3, 129, 0.5))
    other = dropout_keep_mask(seed + 1, 2, 3, 129, 0.5)
    for a, b in [(keep, other), (keep[0, 0], keep[1, 2]), (keep[..., :-1, :], keep[..., 1:, :]),
                 (keep[..., 0:128:2], keep[..., 1:128:2]), (keep[..., 0:128:16], keep[..., 15:128:16]),
                 (keep[..., 0:128:16], keep[..., 16:129:16])]:
        assert abs((a == b).double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / a.numel())


@pytest.mark.parametrize("seed,n", [(1234, 129), (-2**62 + 7, 257), (2**40 + 3, 258)])
def test_kernel_dropout_mask_is_the_reference_mask(seed, n):
    """The kernels' Philox draws, bit for bit, as dropout_mask_ref draws them in PyTorch."""
    got = dropout_keep_mask(torch.tensor([seed], device=DEVICE), 2, 3, n, 0.3).cpu()
    assert torch.equal(got, dropout_mask_ref(seed, 2, 3, n, 0.3))


def test_dropout_determinism():
    """The same seed (int or device tensor) gives the same output and gradients; another seed
    another mask; p = 0 ignores the seed; seed=None follows torch's CPU generator."""
    q, k, v, do = (randn(2, 2, 16, 32, seed=s) for s in range(4))

    def run(**kw):
        return outputs_and_grads(lambda *x: attention(*x, **kw), (q, k, v), do)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    first = run(dropout_p=0.1, seed=5)
    assert same(first, run(dropout_p=0.1, seed=5))
    assert same(first, run(dropout_p=0.1, seed=torch.tensor([5], device=DEVICE)))
    assert not torch.equal(first[0], run(dropout_p=0.1, seed=6)[0])
    assert same(run(), run(dropout_p=0.0, seed=5))
    torch.manual_seed(0)
    drawn = run(dropout_p=0.1)
    torch.manual_seed(0)
    assert same(drawn, run(dropout_p=0.1))
    assert not torch.equal(drawn[0], run(dropout_p=0.1)[0])


def assert_dropout_moments(fn, p, p_dropped, slabs, n=7, d=64):
    """Over `slabs` copies of one (batch, head) slab (independent masks), the output's mean is the
    dropout-free output and its variance sum_j P_ij^2 v_j^2 p/(1-p). The elements of a row share
    their mask, so only the largest z-score is tested; the variance-ratio bound is ~5 of its
    standard deviations (simulated)."""
    q, k, v = (randn(1, 1, n, d, seed=s) * 2 for s in range(3))
    out = fn(*(t.expand(slabs, 1, n, d) for t in (q, k, v)), dropout_p=p).double()[:, 0]
    probs = ((q.double() @ k.double().transpose(-2, -1)) * d ** -0.5).softmax(-1)[0, 0]
    mean, var = attention_ref(q.double(), k.double(), v.double())[0, 0], probs ** 2 @ v.double()[0, 0] ** 2
    var = var * p_dropped / (1 - p_dropped)
    z = (out.mean(0) - mean) / (var / slabs).sqrt()
    assert z.abs().max() < 5.5, z
    assert abs(out.var(0).sum() / var.sum() - 1) < 5.5 / math.sqrt(slabs)


def test_dropout_output_mean_and_variance():
    assert_dropout_moments(lambda *x, dropout_p: attention(*x, dropout_p=dropout_p, seed=3), 0.1,
                           dropout_threshold(0.1) / DROP_LEVELS.value, slabs=256)


# ----------------------------------------------------------------------------- the Hopper variant

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
# Under the interpreter one TMA config (its stages and warps mean nothing there), with and
# without the warp-specialized loop; on a Hopper GPU each config of the autotune set.
HOPPER_CONFIGS = KERNELS.HOPPER_TMA if HOPPER else [(4, 1, False), (4, 1, True)]
needs_hopper = pytest.mark.skipif(DEVICE == "cuda" and not HOPPER, reason="TMA needs sm_90")


@pytest.fixture(params=HOPPER_CONFIGS, ids=lambda c: "w{}-s{}{}".format(*c[:2], "-ws" if c[2] else ""))
def hopper_variant(request, monkeypatch):
    """The dropout forward runs only this Hopper config (q, k, v copied through tensor
    descriptors); the test fails unless the launch really passed descriptors and ran it."""
    monkeypatch.setattr(KERNELS._fwd, "configs", [KERNELS.tma_config(*request.param)])
    made = []
    real = KERNELS.tma_descriptors

    def recording(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(KERNELS, "tma_descriptors", recording)
    yield
    assert made and all(None not in descriptors for descriptors in made)
    assert KERNELS._fwd.best_config.kwargs["TMA"]


@needs_hopper
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("b,n,d,ragged", [(2, 129, 48, True), (1, 258, 64, False), (2, 7, 48, True)])
def test_hopper_variant_against_reference(hopper_variant, dtype, b, n, d, ragged):
    """With dropout (the forward that has the Hopper configs), against the reference under the
    kernels' own mask: ragged N, head dim 48 (the descriptors' box pads it to 64), key lengths,
    and N = 7, a program shorter than its tile (TMA zero-fills the rows past N)."""
    h, seed = 1, 11
    kl = key_lengths_for(b, n) if ragged else None
    mask = dropout_mask_ref(seed, b, h, n, 0.1).to(DEVICE)
    check_against_reference(lambda *x: attention(*x, key_lengths=kl, dropout_p=0.1, seed=seed), b, h, n, d, dtype,
                            key_lengths=kl, dropout_mask=mask, dropout_p=dropout_threshold(0.1) / DROP_LEVELS.value)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's equality; a GPU's MMAs may differ")
def test_hopper_variant_reads_what_pointer_loads_read(monkeypatch):
    """Under the interpreter the TMA config (64 x 64 tiles, as the interpreter's default) gives
    the default config's output and log-sum-exp bit for bit at N = 257, d = 48, from the fused
    qkv: the same tiles, the head-dim padding as zeros, the same dropout mask."""
    b, h, n, d = 2, 2, 257, 48
    q, k, v = randn(b, n, 3 * h * d, dtype=torch.float16).unflatten(-1, (3, h, d)).permute(2, 0, 3, 1, 4)
    seed, kl = torch.tensor([5], device=DEVICE), key_lengths_for(b, n)

    def forward():
        out, lse = torch.full_like(q, float("nan")), torch.full((b, h, n), float("nan"), device=DEVICE)
        KERNELS.attention_forward(q, k, v, out, lse, kl, seed, 0.1, d ** -0.5)
        return out, lse

    want = forward()
    monkeypatch.setattr(KERNELS._fwd, "configs", [KERNELS.tma_config(4, 1, False)])
    got = forward()
    assert KERNELS._fwd.best_config.kwargs["TMA"] and torch.isfinite(got[0]).all()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_tma_descriptors_only_where_tma_can_read(monkeypatch):
    """Descriptors for MAGE's layouts (the fused qkv at head dims 48 and 64, contiguous
    [B, H, N, d]); none for fp32, a base off 16 bytes, an expanded (stride 0) dimension or
    under MAGE_FAST_NO_TMA=1, whose launches autotune over the other configs."""
    for d in (48, 64):
        qkv = torch.zeros(2, 129, 3 * 4 * d, dtype=torch.float16)
        descriptors = KERNELS.tma_descriptors(*qkv.unflatten(-1, (3, 4, d)).permute(2, 0, 3, 1, 4).unbind(0), 64)
        assert all(x.block_shape == [1, 1, 64, 64] and x.shape == [2, 4, 129, d] for x in descriptors)
    x = torch.zeros(2, 4, 129, 48, dtype=torch.bfloat16)
    assert None not in KERNELS.tma_descriptors(x, x, x, 64)
    odd = torch.zeros(x.numel() + 1, dtype=torch.bfloat16)[1:].view(x.shape)
    for k in (x.float(), odd, x[:1].expand(2, 4, 129, 48)):
        assert KERNELS.tma_descriptors(x, k, x, 64) == (None, None, None)
    monkeypatch.setenv("MAGE_FAST_NO_TMA", "1")
    assert KERNELS.tma_descriptors(x, x, x, 64) == (None, None, None)


def test_a_hopper_config_that_does_not_compile_is_left_out():
    """Pruning compiles each Hopper config for the launch (a warmup: nothing runs); one that
    fails is dropped with a warning naming the compiler's last line, and autotuning goes on."""
    class Kernel:
        def __init__(self, error=None):
            self.error, self.calls = error, []

        def run(self, *args, **kwargs):
            self.calls.append((args, kwargs))
            if self.error:
                raise self.error

    config, named = KERNELS.tma_config(4, 2, True), {"Q": "q", "K": "k"}
    good = Kernel()
    assert KERNELS._compiles(good, config, named, {"grid": (1,)})
    assert good.calls == [(("q", "k"), dict(grid=(1,), warmup=True, **config.all_kwargs()))]
    failing = Kernel(RuntimeError("error: pipeline failed\nPassManager::run failed"))
    with pytest.warns(UserWarning, match="does not compile: PassManager::run failed"):
        assert not KERNELS._compiles(failing, config, named, {"grid": (1,)})


# ----------------------------------------------------------------------------- the PyTorch path

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pytorch_path_matches_reference(pytorch_path, dtype):
    kl = key_lengths_for(2, 129, device="cpu")
    q, k, v, do = (randn(2, 2, 129, 48, dtype=dtype, seed=s, device="cpu") for s in range(4))
    got = outputs_and_grads(lambda *x: attention(*x, key_lengths=kl), (q, k, v), do)
    exact = outputs_and_grads(lambda *x: attention_ref(*x, kl), [t.double() for t in (q, k, v)], do.double())
    same = outputs_and_grads(lambda *x: attention_ref(*x, kl, upcast=False), (q, k, v), do)
    for name, *results in zip(("out", "dq", "dk", "dv"), got, exact, same):
        check(*results, f"pytorch path {name} {dtype}")
    qkv = torch.cat([t.transpose(1, 2).flatten(2) for t in (q, k, v)], dim=-1)
    torch.testing.assert_close(attention_qkv(qkv, 2, key_lengths=kl), got[0].transpose(1, 2).flatten(2))


def test_pytorch_path_dropout_moments(pytorch_path):
    torch.manual_seed(0)  # the PyTorch path draws its mask from torch's generator
    assert_dropout_moments(lambda *x, dropout_p: attention(*(t.cpu() for t in x), dropout_p=dropout_p).to(x[0].device),
                           0.1, 0.1, slabs=4096)


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's bf16 rule")
def test_interpreter_runs_bf16_in_pytorch(monkeypatch):
    monkeypatch.setattr(OPS, "_attention_pytorch", FALLBACK)
    monkeypatch.setattr(OPS, "_attention_op", _unexpected)
    q, k, v = (randn(1, 2, 7, 16, dtype=torch.bfloat16, seed=s) for s in range(3))
    assert rel_err(attention(q, k, v), attention_ref(q.double(), k.double(), v.double())) < 1e-2


def test_backend_report(monkeypatch):
    assert backend_report(DEVICE)["attention"]["implementation"] == KERNEL
    assert OPS.backend("cuda")[0] == "triton" and OPS.backend("mps")[0] == "pytorch"
    monkeypatch.setattr(backends, "triton_version", lambda: None)
    for device_type in ("cuda", "cpu"):
        impl, reason = OPS.backend(device_type)
        assert impl == "pytorch" and "Triton does not import" in reason


_x = torch.zeros(2, 2, 7, 16)
_BAD_CALLS = {
    "rank": (lambda: attention(_x[0], _x, _x), "4-D"),
    "shapes": (lambda: attention(_x, _x[:, :, :5], _x), "shapes differ"),
    "dtypes": (lambda: attention(_x, _x.half(), _x), "share dtype and device"),
    "devices": (lambda: attention(_x, _x.to("meta"), _x), "share dtype and device"),
    "float64": (lambda: attention(*[_x.double()] * 3), "not supported"),
    "head dim 20": (lambda: attention(*[torch.zeros(1, 1, 4, 20)] * 3), "head dim 20"),
    "head dim 256": (lambda: attention(*[torch.zeros(1, 1, 4, 256)] * 3), "head dim 256"),
    "key_lengths shape": (lambda: attention(_x, _x, _x, key_lengths=torch.tensor([7])), "shape \\[2\\]"),
    "key_lengths list": (lambda: attention(_x, _x, _x, key_lengths=[7, 7]), "key_lengths"),
    "key_lengths dtype": (lambda: attention(_x, _x, _x, key_lengths=torch.tensor([7.0, 7.0])), "int32/int64"),
    "key_lengths device": (lambda: attention(_x, _x, _x, key_lengths=torch.ones(2, dtype=torch.int64, device="meta")),
                           "int32/int64 on cpu"),
    "dropout 1": (lambda: attention(_x, _x, _x, dropout_p=1.0), "dropout_p"),
    "dropout -0.1": (lambda: attention(_x, _x, _x, dropout_p=-0.1), "dropout_p"),
    "dropout rounds to 1": (lambda: attention(_x, _x, _x, dropout_p=1 - 2**-9), "8-bit"),
    "seed 2 elements": (lambda: attention(_x, _x, _x, dropout_p=0.1, seed=torch.tensor([1, 2])), "seed"),
    "seed float": (lambda: attention(_x, _x, _x, dropout_p=0.1, seed=torch.tensor([1.0])), "seed"),
    "seed device": (lambda: attention(_x, _x, _x, dropout_p=0.1, seed=torch.ones(1, dtype=torch.int64, device="meta")),
                    "seed"),
    "seed range": (lambda: attention(_x, _x, _x, dropout_p=0.1, seed=2**64), "int64"),
    "qkv rank": (lambda: attention_qkv(_x, 2), "3-D"),
    "qkv width": (lambda: attention_qkv(torch.zeros(2, 7, 100), 2), "num_heads"),
    "qkv heads": (lambda: attention_qkv(torch.zeros(2, 7, 96), 0), "num_heads"),
}


@pytest.mark.parametrize("call,message", _BAD_CALLS.values(), ids=_BAD_CALLS.keys())
def test_invalid_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- torch.library, compile, graphs

def test_registered_op_passes_opcheck():
    """Schema, fake (meta) kernel, autograd registration and AOT dispatch, for both layouts."""
    op = torch.ops.mage_fast.attention_fwd.default
    q, k, v = (randn(2, 2, 7, 16, seed=s).requires_grad_() for s in range(3))
    seed = torch.tensor([3], device=DEVICE)
    torch.library.opcheck(op, (q, k, v, 2, key_lengths_for(2, 7), seed, 0.1, 0.25))
    torch.library.opcheck(op, (randn(2, 7, 96).requires_grad_(), None, None, 2, None, None, 0.0, 0.25))


class FusedAttentionBlock(nn.Module):
    """MAGE's attention sub-block on the fused op: qkv Linear -> attention_qkv -> proj Linear."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.qkv, self.proj = num_heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, key_lengths, seed):
        return self.proj(attention_qkv(self.qkv(x), self.num_heads, key_lengths=key_lengths, dropout_p=0.1, seed=seed))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(0)
    block = FusedAttentionBlock(96, 2).to(DEVICE)
    compiled = torch.compile(block, backend=backend, fullgraph=True)
    x, do = randn(2, 129, 96), randn(2, 129, 96, seed=1)
    args = (key_lengths_for(2, 129), torch.tensor([11], device=DEVICE))

    def run(fn):
        x_ = x.clone().requires_grad_()
        out = fn(x_, *args)
        return (out, *torch.autograd.grad(out, [x_, *block.parameters()], do))

    for a, b in zip(run(compiled), run(block)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager():
    """Capture forward + backward once; replays with new inputs and a new seed written into the
    seed tensor match eager calls with that seed."""
    b, h, n, d = 8, 12, 257, 64
    qkv = randn(b, n, 3 * h * d, dtype=torch.bfloat16).requires_grad_()
    do, kl = randn(b, n, h * d, dtype=torch.bfloat16, seed=1), key_lengths_for(b, n)
    seed = torch.tensor([0], device=DEVICE)

    def step():
        out = attention_qkv(qkv, h, key_lengths=kl, dropout_p=0.1, seed=seed)
        return (out, *torch.autograd.grad(out, qkv, do))

    graph, static = capture(step)
    replayed = []
    for s in (1, 2):
        with torch.no_grad():
            qkv.copy_(randn(b, n, 3 * h * d, dtype=torch.bfloat16, seed=10 + s))
            seed.fill_(s)
        graph.replay()
        eager = step()
        assert all(torch.equal(x, y) for x, y in zip(static, eager))
        replayed.append(static[0].clone())
    assert not torch.equal(replayed[0], replayed[1])


# ----------------------------------------------------------------------------- benchmark script

def test_benchmark_script_smoke(tmp_path):
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_attention.py")
    proc = subprocess.run([sys.executable, script, "--smoke", "--results-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "mage_fast qkv" in proc.stdout and list(tmp_path.glob("*attention*.json")), proc.stdout[-2000:]


def test_attention_work_counts_padding_and_recomputation():
    """The bound bench_attention.py reports against: N = 257 runs as 256 + 16 rows and columns,
    d = 48 as 64, 9 matmuls forward + backward (4 useful-work units of 2 N^2 d forward, 14 with
    the backward), exp2 in each of the three passes, a Philox call per 16 padded scores a pass."""
    from mage_fast.bench.flops import attention_work
    w = attention_work(2, 3, 257, 48, backward=True)
    assert w["flop"] == 14 * 6 * 257**2 * 48 and w["executed_flop"] == 18 * 6 * 272**2 * 64
    assert w["exp2"] == 3 * 6 * 272**2 and w["philox"] == 3 * 6 * 272**2 // 16
    assert w["nbytes"] == 12 * 6 * 257 * 48 * 2
    fwd = attention_work(2, 3, 129, 64, backward=False)
    assert fwd["executed_flop"] == 4 * 6 * 144**2 * 64 and fwd["exp2"] == 6 * 144**2
