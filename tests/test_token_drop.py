"""Token drop and restore (kernels/token_drop.py) against the official nonzero-based code: the sets
exactly, the encoder and decoder inputs within fp32 round-off, gradients too, ties broken by
index, every output written, and a tiny model's training forward built from the pieces.
On CPU the Triton kernels run under the interpreter (conftest sets TRITON_INTERPRET=1)."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_error_bounded, poisoned_allocations, rel_err, without_host_sync
from mage_fast.backends import backend_report, interpreting
from mage_fast.configs import FAKE_CLASS_ID, MASK_ID
from mage_fast.cuda_graphs import capture
from mage_fast.ops.token_drop import embed_and_drop, embed_and_drop_ref, mask_sets, mask_sets_ref, restore, restore_ref
from mage_fast.ops.vq import vq_nearest
from mage_fast.reference import mage_vit_tiny_test
from mage_fast.reference.layers import label_smoothed_nll

pytestmark = pytest.mark.triton  # runs the kernels: under the interpreter without CUDA

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run


def tie_free_noise(batch, seed, device="cpu"):
    noise = torch.rand(batch, 256, generator=torch.Generator().manual_seed(seed))
    assert all(len(set(row.tolist())) == 256 for row in noise)
    return noise.to(device)


def embedding_params(dim, dtype, seed, device="cpu"):
    """word [2025, D], pos [257, D], LayerNorm weight and bias [D], leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2025, dim), (257, dim), (dim,), (dim,)]
    params = [torch.randn(s, generator=g) * (0.02 if len(s) == 2 else 1.0) for s in shapes]
    params[2] += 1.0
    return [p.to(device, dtype).requires_grad_() for p in params]


def inputs(batch, dim, dtype, num_masked, seed, device="cpu"):
    noise = tie_free_noise(batch, seed, device)
    keep_index, masked = mask_sets(noise, 128, num_masked)
    ids = torch.randint(0, 1024, (batch, 256), generator=torch.Generator().manual_seed(seed)).to(device)
    return ids, masked, keep_index, embedding_params(dim, dtype, seed, device)


def grads(out, params, seed, dtype=None):
    """Gradients for a random upstream gradient, representable in `dtype` (default out's), so
    that runs at several precisions see the same one."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(dtype or out.dtype)
    return torch.autograd.grad(out, params, g.to(out.device, out.dtype))


def assert_embed_matches(ids, masked, keep_index, params):
    """The encoder input within fp32 round-off of the official code, its gradients too."""
    out, ref = embed_and_drop(ids, masked, keep_index, *params), embed_and_drop_ref(ids, masked, keep_index, *params)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-6
    got = grads(out, params, seed=1)
    for g, r, name in zip(got, grads(ref, params, seed=1), ("word", "pos", "weight", "bias")):
        assert rel_err(g, r) < 1e-5, name
    return got


def assert_embed_error_bounded(ids, masked, keep_index, params, atol):
    """Low precision: the encoder input's and the gradients' errors against float64 at most
    twice those of the official code run at the same precision (flash-attention's rule)."""
    exact_params = [p.detach().double().requires_grad_() for p in params]
    runs = [(embed_and_drop(ids, masked, keep_index, *params), params),
            (embed_and_drop_ref(ids, masked, keep_index, *params), params),
            (embed_and_drop_ref(ids, masked, keep_index, *exact_params), exact_params)]
    assert runs[0][0].dtype == params[0].dtype
    assert_error_bounded(*(out for out, _ in runs), atol=atol, what="encoder input")
    all_grads = zip(*(grads(o, p, 2, params[0].dtype) for o, p in runs))
    for name, (g, same, exact) in zip(("word", "pos", "weight", "bias"), all_grads):
        assert_error_bounded(g, same, exact, atol=atol, what=f"gradient of {name}")


def assert_restore_matches(x, keep_index, masked, pos, tol=1e-6):
    """The decoder input equal to the official code's (one add per element, the same dtype
    promotion), its gradients within tol."""
    out, ref = restore(x, keep_index, masked, pos), restore_ref(x, keep_index, masked, pos)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    for a, b in zip(grads(out, (x, pos), seed=2), grads(ref, (x, pos), seed=2)):
        assert a.dtype == b.dtype and rel_err(a, b) < tol


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, CPU tensors take the PyTorch path")
def test_the_cpu_tests_run_the_triton_kernels():
    assert interpreting() and backend_report("cpu")["token_drop"]["implementation"] == "triton-interpret"


# ---------------------------------------------------------------- mask_sets
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_masked", [128, 129, 178, 255, 256])
def test_sets_equal_the_official_thresholds(device, num_masked):
    noise = tie_free_noise(5, num_masked, device)
    ref_keep, ref_masked = mask_sets_ref(noise, 128, num_masked)
    for count in (num_masked, torch.tensor(num_masked, device=device), torch.tensor([num_masked], device=device)):
        with poisoned_allocations():
            keep_index, masked = mask_sets(noise, 128, count)
        assert keep_index.dtype == torch.int64 and keep_index.shape == (5, 129)
        assert torch.equal(keep_index, ref_keep) and torch.equal(masked, ref_masked)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_dropped,num_masked", [(128, 200), (100, 100), (1, 7)])
def test_ties_go_to_the_lower_index(device, num_dropped, num_masked):
    """Noise on 5 levels (ties everywhere): exactly num_dropped / num_masked tokens, taken in
    the stable order (value, then index), so no redraw is needed."""
    noise = torch.randint(0, 5, (4, 256), generator=torch.Generator().manual_seed(num_masked)) / 5.0
    keep_index, masked = mask_sets(noise.to(device), num_dropped, num_masked)
    for row, keep, mask in zip(noise.tolist(), keep_index.cpu(), masked.cpu()):
        order = sorted(range(256), key=lambda i: (row[i], i))
        assert keep.tolist() == [0] + sorted(1 + i for i in order[num_dropped:])
        assert mask.tolist() == [False] + [i in set(order[:num_masked]) for i in range(256)]


# ---------------------------------------------------------------- embed_and_drop
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,dim", [(3, 64), (2, 100), (1, 128)])
def test_encoder_input_and_gradients_equal_the_reference(device, batch, dim):
    ids, masked, keep_index, params = inputs(batch, dim, torch.float32, 170, seed=dim, device=device)
    with poisoned_allocations():
        got = assert_embed_matches(ids, masked, keep_index, params)
    # the gradient lands on the right rows: class token, mask token, the kept images' ids only
    touched = got[0].abs().sum(1).nonzero().flatten().tolist()
    tokens = torch.where(masked[:, 1:], MASK_ID, ids).gather(1, keep_index[:, 1:] - 1)
    assert touched == sorted({FAKE_CLASS_ID, *tokens.flatten().tolist()})


def test_encoder_input_fp16():
    assert_embed_error_bounded(*inputs(2, 64, torch.float16, 200, seed=3), atol=1e-5)


# ---------------------------------------------------------------- restore
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,dim,num_dropped,num_masked", [(3, 48, 128, 128), (2, 96, 128, 200),
                                                              (5, 100, 128, 256), (2, 64, 60, 60)])
def test_decoder_input_and_gradients_equal_the_reference(device, batch, dim, num_dropped, num_masked):
    keep_index, masked = mask_sets(tie_free_noise(batch, dim, device), num_dropped, num_masked)
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(batch, keep_index.shape[1], dim, generator=g).to(device).requires_grad_()
    pos = torch.randn(1, 257, dim, generator=g).to(device).requires_grad_()
    with poisoned_allocations():
        assert_restore_matches(x, keep_index, masked, pos)


def test_any_masked_set_follows_the_official_code():
    """masked need not come from mask_sets (dropped slots left unmasked, slot 0 masked): both
    ops still compute what the official code computes."""
    ids, _, keep_index, params = inputs(2, 32, torch.float32, 128, seed=5)
    masked = torch.rand(2, 257, generator=torch.Generator().manual_seed(6)) < 0.5
    masked[0, 0] = True
    assert_embed_matches(ids, masked, keep_index, params)
    assert_restore_matches(torch.randn(2, 129, 32, requires_grad=True), keep_index, masked,
                           torch.randn(1, 257, 32, requires_grad=True))


def strided(t):
    """t's values in a non-contiguous layout: the even columns of a tensor twice as wide
    (gradients flow back to t)."""
    out = torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


def test_non_contiguous_inputs_equal_the_reference():
    """The kernels read every tensor by flat offsets: strided views of every input (pos_embed
    sliced from a bigger tensor, or transposed and back) give the official code's results,
    forward and backward (the API hands them to the custom ops as they are)."""
    ids, masked, keep_index, params = inputs(2, 32, torch.float32, 180, seed=90)
    assert_embed_matches(*(strided(t) for t in (ids, masked, keep_index)), [strided(p) for p in params])
    g = torch.Generator().manual_seed(91)
    x = torch.randn(2, 129, 48, generator=g, requires_grad=True)
    big = torch.randn(3, 300, 96, generator=g, requires_grad=True)
    for pos in (big[1:2, 20:277, 10:58], big.transpose(1, 2).contiguous().transpose(1, 2)[:1, :257, :48]):
        assert not pos.is_contiguous()
        assert_restore_matches(strided(x), strided(keep_index), strided(masked), pos)


def test_restore_promotes_like_the_reference():
    """Under autocast the decoder embedding is fp16/bf16 and the position table fp32: the sum is fp32."""
    keep_index, masked = mask_sets(tie_free_noise(2, 8), 128, 190)
    x = torch.randn(2, 129, 32).half().requires_grad_()
    assert_restore_matches(x, keep_index, masked, torch.randn(1, 257, 32, requires_grad=True), tol=1e-3)
    assert restore(x, keep_index, masked, torch.randn(1, 257, 32)).dtype == torch.float32


def test_kernel_level_launchers():
    """The launchers themselves, without dispatch or autograd."""
    from mage_fast.kernels import token_drop as k
    from mage_fast.ops.token_drop import slot_rows
    noise = tie_free_noise(2, 10, KERNEL_DEVICE)
    keep_index, masked = k.mask_sets_forward(noise, 128, torch.tensor([150], device=KERNEL_DEVICE))
    assert torch.equal(keep_index, mask_sets_ref(noise, 128, 150)[0])
    x, pos = torch.randn(2, 129, 32, device=KERNEL_DEVICE), torch.randn(257, 32, device=KERNEL_DEVICE)
    out = k.restore_forward(x, slot_rows(keep_index), masked, pos)
    assert torch.equal(out, restore_ref(x, keep_index, masked, pos))


# ---------------------------------------------------------------- the pieces together
def test_tiny_training_forward_from_the_pieces(images):
    """Tokenize, sets, encoder input, encoder, restore, decoder, loss of the tiny reference
    model built from these ops: the decoder input, the loss and the gradients equal the
    reference forward's (eval mode, given mask ratio and tie-free noise)."""
    torch.manual_seed(0)
    model = mage_vit_tiny_test().eval()
    ratio, noise = 0.7, tie_free_noise(2, 21)
    seen = {}
    hook = model.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].detach()))
    ref_loss = model(images, mask_ratio=ratio, noise=noise)
    hook.remove()
    params = [model.token_emb.word_embeddings.weight, model.token_emb.position_embeddings.weight,
              model.token_emb.LayerNorm.weight, model.token_emb.LayerNorm.bias, model.decoder_pos_embed_learned,
              model.blocks[0].attn.qkv.weight]
    ref_grads = torch.autograd.grad(ref_loss, params)

    with torch.no_grad():
        gt = vq_nearest(model.vqgan.encoder(images), model.vqgan.quantize.embedding.weight)
    assert torch.equal(gt, model.tokenize(images))
    num_dropped, num_masked = model.token_counts(ratio)
    keep_index, masked = mask_sets(noise, num_dropped, torch.tensor(num_masked))
    emb = model.token_emb
    x = embed_and_drop(gt, masked, keep_index, emb.word_embeddings.weight, emb.position_embeddings.weight,
                       emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
    for block in model.blocks:
        x = block(x)
    x = restore(model.decoder_embed(model.norm(x)), keep_index, masked, model.decoder_pos_embed_learned)
    assert rel_err(x, seen["x"]) < 1e-5
    for block in model.decoder_blocks:
        x = block(x)
    logits = model.mlm_layer(model.decoder_norm(x), emb.word_embeddings.weight.detach())[:, 1:, :1024]
    weight = masked[:, 1:].float()
    loss = (label_smoothed_nll(logits.reshape(-1, 1024), gt.reshape(-1)) * weight.reshape(-1)).sum() / weight.sum()
    assert math.isclose(loss.item(), ref_loss.item(), rel_tol=1e-5)
    for g, r in zip(torch.autograd.grad(loss, params), ref_grads):
        assert rel_err(g, r) < 1e-4


# ---------------------------------------------------------------- dispatch, registration, checks
def test_pytorch_fallback_without_the_interpreter(no_interpreter):
    assert backend_report("cpu")["token_drop"]["implementation"] == "pytorch"
    noise = tie_free_noise(3, 30)
    keep_index, masked = mask_sets(noise, 128, torch.tensor(190))
    ref_keep, ref_masked = mask_sets_ref(noise, 128, 190)
    assert torch.equal(keep_index, ref_keep) and torch.equal(masked, ref_masked)
    ids, masked, keep_index, params = inputs(3, 64, torch.float32, 190, seed=31)
    assert_embed_matches(ids, masked, keep_index, params)
    assert_restore_matches(torch.randn(3, 129, 48, requires_grad=True), keep_index, masked,
                           torch.randn(1, 257, 48, requires_grad=True))


def test_custom_op_registrations():
    """Schemas, fake implementations, autograd registrations, and a traced graph."""
    ids, masked, keep_index, params = inputs(2, 32, torch.float32, 180, seed=40, device=KERNEL_DEVICE)
    noise, count = tie_free_noise(2, 41, KERNEL_DEVICE), torch.tensor(180, device=KERNEL_DEVICE)
    x = torch.randn(2, 129, 48, device=KERNEL_DEVICE, requires_grad=True)
    pos = torch.randn(257, 48, device=KERNEL_DEVICE, requires_grad=True)
    ops = torch.ops.mage_fast
    torch.library.opcheck(ops.mask_sets.default, (noise, 128, count))
    torch.library.opcheck(ops.embed_and_drop.default, (ids, masked, keep_index, *params, 1e-6))
    torch.library.opcheck(ops.restore.default, (x, keep_index, masked, pos))

    def step(noise, count, x, pos):
        keep, mask = mask_sets(noise, 128, count)
        return restore(x, keep, mask, pos).square().sum()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(noise, count, x, pos.unsqueeze(0)), step(noise, count, x, pos.unsqueeze(0)))


def _bad(**change):
    ids, masked, keep_index, params = inputs(2, 32, torch.float32, 180, seed=50)
    args = dict(ids=ids, masked=masked, keep_index=keep_index, word_embeddings=params[0],
                position_embeddings=params[1], ln_weight=params[2], ln_bias=params[3])
    return {**args, **change}


@pytest.mark.parametrize("change,match", [
    (dict(ids=torch.randint(0, 1024, (2, 255))), r"ids must have shape \[\*, 256\]"),
    (dict(ids=torch.rand(2, 256)), "ids must be a tensor of torch.int32"),
    (dict(ids=torch.full((2, 256), 1024)), "codebook ids"),
    (dict(masked=torch.zeros(2, 257, dtype=torch.int64)), "masked must be a tensor of torch.bool"),
    (dict(masked=torch.zeros(3, 257, dtype=torch.bool)), r"masked must have shape \[2, 257\]"),
    (dict(keep_index=torch.zeros(2, 300, dtype=torch.int64)), "at most 257"),
    (dict(keep_index=torch.arange(1, 130).expand(2, 129)), "ascending slots"),
    (dict(keep_index=torch.arange(129).flip(0).expand(2, 129)), "ascending slots"),
    (dict(word_embeddings=torch.randn(2000, 32)), "2025 rows"),
    (dict(position_embeddings=torch.randn(257, 32).double()), "position_embeddings must be a tensor of torch.float32"),
    (dict(ln_bias=torch.randn(31)), r"ln_bias must have shape \[32\]"),
    (dict(ln_weight=torch.randn(32, device="meta")), "must be on cpu"),
])
def test_embed_input_validation(change, match):
    with pytest.raises(ValueError, match=match):
        embed_and_drop(**_bad(**change))


@pytest.mark.parametrize("args,match", [
    ((torch.rand(2, 255), 128, 150), r"noise must have shape \[\*, 256\]"),
    ((torch.rand(2, 256).long(), 128, 150), "noise must be a tensor of"),
    ((torch.rand(2, 256), 0, 150), "num_dropped must be an int in"),
    ((torch.rand(2, 256), 128.0, 150), "num_dropped must be an int in"),
    ((torch.rand(2, 256), 128, 100), r"num_masked must be in \[num_dropped, 256\]"),
    ((torch.rand(2, 256), 128, 257), r"num_masked must be in"),
    ((torch.rand(2, 256), 128, torch.tensor(300)), r"num_masked must be in"),
    ((torch.rand(2, 256), 128, 150.0), "num_masked must be an int or"),
    ((torch.rand(2, 256), 128, torch.tensor([150, 151])), "num_masked must have shape"),
    ((torch.rand(2, 256), 128, torch.tensor(150, dtype=torch.int32)), "num_masked must be a tensor of torch.int64"),
])
def test_mask_sets_input_validation(args, match):
    with pytest.raises(ValueError, match=match):
        mask_sets(*args)


@pytest.mark.parametrize("x,pos,match", [
    (torch.randn(2, 128, 32), torch.randn(1, 257, 32), "one row per kept slot"),
    (torch.randn(2, 129, 32).long(), torch.randn(1, 257, 32), "x must be a tensor of"),
    (torch.randn(2, 129, 32), torch.randn(257, 32), r"pos_embed must have shape \[1, 257, 32\]"),
    (torch.randn(3, 129, 32), torch.randn(1, 257, 32), r"masked must have shape \[3, 257\]"),
])
def test_restore_input_validation(x, pos, match):
    keep_index, masked = mask_sets(tie_free_noise(2, 60), 128, 150)
    with pytest.raises(ValueError, match=match):
        restore(x, keep_index, masked, pos)


# ---------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mage_b_shapes_on_gpu(dtype):
    """Batch 256, D 768 (MAGE-B), bf16 included (wrong in the interpreter, so GPU only)."""
    ids, masked, keep_index, params = inputs(256, 768, dtype, 180, seed=70, device="cuda")
    assert_embed_error_bounded(ids, masked, keep_index, params, atol=1e-5)
    x = torch.randn(256, 129, 768, device="cuda", dtype=dtype, requires_grad=True)
    pos = torch.randn(1, 257, 768, device="cuda", requires_grad=True)
    assert_restore_matches(x, keep_index, masked, pos, tol=1e-2 if dtype == torch.bfloat16 else 1e-6)


@pytest.mark.gpu
def test_no_host_sync_and_graph_capture_on_gpu():
    """The whole drop/restore path, forward and backward, with the mask count on the device:
    no host sync (sync debug mode 'error'), and it can be captured in a CUDA graph."""
    ids, _, _, params = inputs(8, 128, torch.float32, 180, seed=80, device="cuda")
    noise, count = tie_free_noise(8, 81, "cuda"), torch.tensor([180], device="cuda")
    x = torch.randn(8, 129, 96, device="cuda", requires_grad=True)
    pos = torch.randn(1, 257, 96, device="cuda", requires_grad=True)

    def step():
        keep_index, masked = mask_sets(noise, 128, count)
        enc = embed_and_drop(ids, masked, keep_index, *params)
        dec = restore(x, keep_index, masked, pos)
        return torch.autograd.grad(enc.square().sum() + dec.square().sum(), [*params, x, pos])

    expected = step()
    without_host_sync(step)
    graph, captured = capture(step)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, expected):
        assert rel_err(a, b) < 1e-6


def test_benchmark_smoke_run():
    bench = Path(__file__).parents[1] / "benchmarks" / "bench_token_drop.py"
    proc = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True)
    assert proc.returncode == 0 and "restore fwd+bwd" in proc.stdout, proc.stderr[-3000:]
