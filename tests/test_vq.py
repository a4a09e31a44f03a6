"""vq_nearest (kernels/vq.py) against the official nearest_code: the same ids exactly on inputs
far from ties, the lowest index on exact ties, both layouts, ragged sizes, every output written.
On CPU the Triton kernel runs under the interpreter (conftest sets TRITON_INTERPRET=1)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import poisoned_allocations, without_host_sync
from mage_fast.backends import backend_report, interpreting
from mage_fast.cuda_graphs import capture
from mage_fast.ops.vq import backend, vq_nearest, vq_nearest_ref

pytestmark = pytest.mark.triton  # runs the kernels: under the interpreter without CUDA

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernel runs


def far_from_ties(n, k, c, dtype, seed, device="cpu"):
    """z [n, C] and codebook [k, C] (normal, cast to dtype) where every row's nearest code wins
    by at least 1e-4 of |z|^2 + |e|^2, ~100x the fp32 round-off of the distance, so any
    summation order gives the same argmin. Rows closer to a tie are drawn again."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(k, c, generator=g).to(device, dtype)
    z = torch.randn(2 * n, c, generator=g).to(device, dtype)
    zd, ed = z.double(), codebook.double()
    dist = zd.pow(2).sum(1, keepdim=True) + ed.pow(2).sum(1) - 2 * zd @ ed.t()
    two = dist.topk(2, dim=1, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > 1e-4 * (zd.pow(2).sum(1) + ed.pow(2).sum(1).max())
    assert clear.sum() >= n
    return z[clear][:n], codebook


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, CPU tensors take the PyTorch path")
def test_the_cpu_tests_run_the_triton_kernel():
    assert interpreting() and backend_report("cpu")["vq_nearest"]["implementation"] == "triton-interpret"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,k,c", [(129, 1024, 32), (257, 1000, 256), (1000, 1024, 256)])
def test_ids_and_vectors_equal_the_reference(device, dtype, n, k, c):
    z, codebook = far_from_ties(n, k, c, dtype, seed=n + k + c, device=device)
    with poisoned_allocations():
        ids, vectors = vq_nearest(z, codebook, return_vectors=True)
    ref = vq_nearest_ref(z, codebook)
    assert ids.dtype == torch.int64 and torch.equal(ids, ref)
    assert vectors.dtype == codebook.dtype and torch.equal(vectors, codebook[ref])


@pytest.mark.parametrize("device", DEVICES)
def test_tokenizer_layout_is_raster_order(device):
    """[B, C, H, W] -> [B, H*W] with token h*W + w, read in place; vectors back in [B, C, H, W]."""
    z, codebook = far_from_ties(2 * 16 * 16, 1024, 32, torch.float32, seed=7, device=device)
    z4 = z.view(2, 16, 16, 32).permute(0, 3, 1, 2)  # a channels-last view: strides, no copy
    with poisoned_allocations():
        ids, vectors = vq_nearest(z4, codebook, return_vectors=True)
    ref_ids, ref_vectors = vq_nearest_ref(z4, codebook, return_vectors=True)
    assert ids.shape == (2, 256) and torch.equal(ids, ref_ids)
    assert torch.equal(ids.view(-1), vq_nearest_ref(z, codebook))
    assert vectors.shape == (2, 32, 16, 16) and torch.equal(vectors, ref_vectors)


@pytest.mark.parametrize("device", DEVICES)
def test_duplicate_codebook_rows_go_to_the_lowest_index(device):
    """Exactly equal distances (a code repeated, in the same tile, a later tile and the ragged
    last tile): the first copy wins, as torch.argmin decides. Small integers, so that every
    distance is exact in fp32 whatever the summation order: two copies of a code in different
    columns of a tile must tie on any BLAS (the interpreter's tl.dot goes through numpy's, whose
    kernel, chosen by the CPU, may otherwise round equal columns one ulp apart)."""
    g = torch.Generator().manual_seed(11)
    codebook = torch.randint(-4, 5, (1000, 64), generator=g).float()
    for first, copy in [(5, 700), (300, 301), (40, 999), (900, 950)]:
        codebook[copy] = codebook[first]
    picks = torch.tensor([5, 700, 300, 301, 40, 999, 900, 950] * 20)
    # One coordinate moved by 1: distance 1 to both copies, >= 2 to every other code (checked).
    z = codebook[picks].clone()
    z[torch.arange(len(picks)), torch.randint(0, 64, (len(picks),), generator=g)] += 1
    dist = (z[:, None, :] - codebook[None]).pow(2).sum(-1)
    assert (dist.min(1).values == 1).all() and (dist == 1).sum(1).eq(2).all()
    ids = vq_nearest(z.to(device), codebook.to(device)).cpu()
    expected = torch.tensor([5, 5, 300, 300, 40, 40, 900, 900] * 20)
    assert torch.equal(vq_nearest_ref(z, codebook), expected)
    assert torch.equal(ids, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_integer_inputs_with_many_exact_ties(device):
    """Small integers: every distance is computed exactly in any order, so ties are real ties
    and the whole result must equal torch.argmin's (first index) bit for bit."""
    g = torch.Generator().manual_seed(12)
    codebook = torch.randint(0, 2, (1000, 32), generator=g).float()
    z = torch.randint(0, 2, (257, 32), generator=g).float()
    exact = (z[:, None, :] - codebook[None]).abs().sum(-1)  # squared L2 of 0/1 vectors
    assert (exact == exact.min(1, keepdim=True).values).sum(1).gt(1).float().mean() > 0.25  # many tied
    ids = vq_nearest(z.to(device), codebook.to(device)).cpu()
    assert torch.equal(ids, exact.argmin(1)) and torch.equal(ids, vq_nearest_ref(z, codebook))


def test_kernel_level_launcher():
    """The launcher itself (no dispatch): [B, S, C] rows with arbitrary strides."""
    from mage_fast.kernels.vq import vq_nearest_forward
    z, codebook = far_from_ties(300, 1000, 32, torch.float32, seed=13, device=KERNEL_DEVICE)
    rows = z.t().contiguous().t().unsqueeze(0)  # column-major rows
    ids = torch.full((300,), -1, dtype=torch.int64, device=KERNEL_DEVICE)
    vq_nearest_forward(rows, codebook, ids)
    assert torch.equal(ids, vq_nearest_ref(z, codebook))


def test_pytorch_fallback_without_the_interpreter(no_interpreter):
    impl, reason = backend("cpu")
    assert impl == "pytorch" and "TRITON_INTERPRET" in reason
    assert backend_report("cpu")["vq_nearest"]["implementation"] == "pytorch"
    z, codebook = far_from_ties(100, 1000, 32, torch.float32, seed=14)
    ids, vectors = vq_nearest(z, codebook, return_vectors=True)
    assert torch.equal(ids, vq_nearest_ref(z, codebook)) and torch.equal(vectors, codebook[ids])


def test_custom_op_registration():
    """Schema, fake (meta) implementation and tracing, as torch.compile and CUDA graphs use it."""
    z, codebook = far_from_ties(40, 100, 32, torch.float32, seed=15, device=KERNEL_DEVICE)
    torch.library.opcheck(torch.ops.mage_fast.vq_nearest.default, (z, codebook, True, "ieee"))
    compiled = torch.compile(lambda a, b: vq_nearest(a, b, return_vectors=True), backend="aot_eager", fullgraph=True)
    ids, vectors = compiled(z, codebook)
    assert torch.equal(ids, vq_nearest_ref(z, codebook)) and torch.equal(vectors, codebook[ids])


@pytest.mark.parametrize("z,codebook,match", [
    (torch.randn(4, 8).long(), torch.randn(16, 8), "z must be a float32"),
    (torch.randn(4, 8), torch.randn(16, 8).double(), "codebook must be a float32"),
    (torch.randn(2, 4, 8), torch.randn(16, 8), r"\[N, C\] or \[B, C, H, W\]"),
    (torch.randn(0, 8), torch.randn(16, 8), "non-empty"),
    (torch.randn(4, 8), torch.randn(16, 9), "C = 8"),
    (torch.randn(4, 8), torch.randn(16), "codebook must be"),
    (torch.randn(4, 8), torch.randn(0, 8), "K >= 1"),
    (torch.randn(4, 8), torch.randn(16, 8, device="meta"), "one device"),
])
def test_input_validation(z, codebook, match):
    with pytest.raises(ValueError, match=match):
        vq_nearest(z, codebook)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        vq_nearest(torch.randn(4, 8), torch.randn(16, 8), precision="tf32")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,k", [(257, 1000), (65536, 1024)])
def test_tf32x3_ids_equal_the_reference(device, n, k):
    """The tensor-core emulation of fp32 resolves every row that is clear of fp32 near-ties
    like the official fp32 computation, ragged tiles included (on CPU the interpreter's dot is
    plain fp32: this checks the plumbing; the split products run on a GPU)."""
    if device == "cpu" and n > 1000:
        pytest.skip("the training shape runs on a GPU only")
    z, codebook = far_from_ties(n, k, 256, torch.float32, seed=17, device=device)
    with poisoned_allocations():
        ids, vectors = vq_nearest(z, codebook, return_vectors=True, precision="tf32x3")
    ref = vq_nearest_ref(z, codebook)
    assert torch.equal(ids, ref) and torch.equal(vectors, codebook[ref])


@pytest.mark.gpu
def test_tf32x3_is_not_plain_tf32():
    """On a GPU, single TF32 (10-bit mantissa) products move many random rows to another code;
    tf32x3 must agree with fp32 on all but near-ties, as the ieee kernel does."""
    g = torch.Generator().manual_seed(18)
    z, codebook = (torch.randn(s, 256, generator=g).cuda() for s in (65536, 1024))
    ref = vq_nearest_ref(z, codebook)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        tf32 = (z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()).argmin(1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    cases = [("tf32", tf32), ("ieee", vq_nearest(z, codebook)), ("tf32x3", vq_nearest(z, codebook, precision="tf32x3"))]
    disagree = {name: (ids != ref).float().mean().item() for name, ids in cases}
    assert disagree["tf32x3"] <= 2 * disagree["ieee"] + 1e-4 < disagree["tf32"], disagree


@pytest.mark.gpu
def test_bf16_and_mage_b_shape_on_gpu():
    """bf16 (wrong in the interpreter, so GPU only) and the training shape: 256 images x 256 tokens."""
    for dtype, n in [(torch.bfloat16, 4096), (torch.float32, 65536)]:
        z, codebook = far_from_ties(n, 1024, 256, dtype, seed=n, device="cuda")
        ids, vectors = vq_nearest(z, codebook, return_vectors=True)
        ref = vq_nearest_ref(z, codebook)
        assert torch.equal(ids, ref) and torch.equal(vectors, codebook[ref])


@pytest.mark.gpu
def test_no_host_sync_and_graph_capture_on_gpu():
    z, codebook = far_from_ties(1000, 1024, 256, torch.float32, seed=16, device="cuda")
    expected = vq_nearest(z, codebook)  # compiles and autotunes (a sync) before the checks
    without_host_sync(lambda: vq_nearest(z, codebook))
    graph, ids = capture(lambda: vq_nearest(z, codebook))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ids, expected)


def test_benchmark_smoke_run():
    bench = Path(__file__).parents[1] / "benchmarks" / "bench_vq.py"
    proc = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True)
    assert proc.returncode == 0 and "mage_fast vq_nearest" in proc.stdout, proc.stderr[-3000:]
