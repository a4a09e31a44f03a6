"""The decoding-step op (csrc/decode_step.*) against its definition, decode_step_ref (the
reference model's decoding_step): bit-identical ids, with given noise and with internal Philox."""
import math
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import without_host_sync
from mage_fast.configs import MASK_ID
from mage_fast.cuda_graphs import capture
from mage_fast.ops import decode_step as decode_step_module
from mage_fast.ops.decode_step import backend, decode_step, decode_step_ref, decode_step_with_noise
from mage_fast.reference import sample_categorical, schedule
from mage_fast.reference.decoding import choice_tau, gumbel, mask_lengths
from mage_fast.reference.rng import STREAM_GUMBEL, STREAM_SAMPLE, uniform

pytestmark = pytest.mark.skipif(backend("cpu")[0] != "c++", reason="mage_fast._C is not built")
OP = torch.ops.mage_fast


def random_case(b, n, v, dtype, known_fraction, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, n, v, generator=g) * 4).to(dtype)
    ids = torch.randint(0, v, (b, n), generator=g)
    ids[torch.rand(b, n, generator=g) >= known_fraction] = MASK_ID
    noise = tuple(torch.rand(b, n, generator=g).clamp(2.0 ** -24, 1 - 2.0 ** -24) for _ in range(2))
    seeds = torch.randint(-2**62, 2**62, (b,), generator=g)
    return [t.to(device) for t in (logits, ids, seeds, *noise)]


@pytest.mark.machine
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b,n,v,known", [(3, 256, 1024, 0.0), (4, 256, 1024, 0.6), (2, 7, 1000, 0.3), (5, 33, 37, 0.5)])
def test_given_noise_equals_reference(dtype, b, n, v, known):
    logits, ids, _, u1, u2 = random_case(b, n, v, dtype, known, seed=b * n + v)
    for step, num_iter, temp in [(0, 12, 4.5), (5, 12, 4.5), (11, 12, 4.5), (3, 20, 6.0), (2, 8, 0.0)]:
        got = decode_step_with_noise(logits, ids, u1, u2, step, num_iter, temp)
        want = decode_step_ref(logits, ids, None, step, num_iter, temp, noise=(u1, u2))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (step, num_iter)


@pytest.mark.machine
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_philox_noise_equals_reference(dtype):
    logits, ids, seeds, _, _ = random_case(6, 256, 1024, dtype, 0.4, seed=1)
    n0 = torch.tensor([256, 200, 180, 256, 150, 160])
    for step in (0, 4, 9):
        got = decode_step(logits, ids, seeds, step, 10, 4.5, num_initial_unknown=n0)
        want = decode_step_ref(logits, ids, seeds, step, 10, 4.5, num_initial_unknown=n0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("num_iter", [12, 20])
def test_generation_loop_follows_the_schedule(num_iter):
    g = torch.Generator().manual_seed(num_iter)
    ids = torch.full((4, 256), MASK_ID)
    seeds = torch.arange(4) + 100
    fixed = []
    for step in range(num_iter):
        logits = torch.randn(4, 256, 1024, generator=g) * 3
        nxt, filled = decode_step(logits, ids, seeds, step, num_iter, 4.5)
        known = ids != MASK_ID
        assert torch.equal(nxt[known], ids[known]) and torch.equal(filled[known], ids[known])
        assert (filled != MASK_ID).all() and filled.max() < 1024
        left = (nxt == MASK_ID).sum(1) if step < num_iter - 1 else torch.zeros(4, dtype=torch.long)
        fixed.append(((ids == MASK_ID).sum(1) - left).tolist())
        ids = nxt
    assert fixed == [[k] * 4 for k in schedule(num_iter)]


def test_strided_logits_are_read_in_place():
    """The model's logits are a [:, 1:, :1024] slice of [B, 257, 2025]: no copy needed."""
    full = torch.randn(3, 257, 2025, generator=torch.Generator().manual_seed(8)) * 3
    logits = full[:, 1:, :1024]
    assert not logits.is_contiguous()
    _, ids, seeds, _, _ = random_case(3, 256, 1024, torch.float32, 0.3, seed=8)
    got = decode_step(logits, ids, seeds, 1, 12, 4.5)
    want = decode_step(logits.contiguous(), ids, seeds, 1, 12, 4.5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.machine
def test_ids_do_not_depend_on_the_batch():
    logits, ids, seeds, _, _ = random_case(5, 256, 1024, torch.float32, 0.3, seed=9)
    full = decode_step(logits, ids, seeds, 2, 12, 4.5)
    for rows in ([3], [4, 1], [0, 2, 3]):
        part = decode_step(logits[rows], ids[rows], seeds[rows], 2, 12, 4.5)
        assert torch.equal(part[0], full[0][rows]) and torch.equal(part[1], full[1][rows])


def test_draws_follow_softmax():
    """Chi-square of 16,384 Philox draws over 64 classes against softmax(logits)."""
    v, b, n = 64, 64, 256
    row = torch.randn(v, generator=torch.Generator().manual_seed(3))
    logits = row.expand(b, n, v).contiguous()
    ids = torch.full((b, n), MASK_ID)
    _, filled = decode_step(logits, ids, torch.arange(b) * 7919, 0, 12, 4.5)
    counts = torch.bincount(filled.flatten(), minlength=v).double()
    expected = torch.softmax(row.double(), 0) * counts.sum()
    keep = expected >= 5
    chi2 = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert dof - 6 * math.sqrt(2 * dof) < chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)


def test_nothing_unknown_changes_nothing():
    ids = torch.randint(0, 1024, (2, 256))
    nxt, filled = decode_step(torch.randn(2, 256, 1024), ids, torch.tensor([1, 2]), 0, 12, 4.5)
    assert torch.equal(nxt, ids) and torch.equal(filled, ids)


def tied_case(variant, step, num_iter=12, b=3, n=256, v=64):
    """(logits, ids, op arguments): every unknown position gets exactly the same confidence.
    Given noise: one logits row and one u_sample everywhere (the same draw, the same log p), and
    tau 0 (temperature 0, random u_gumbel) or one u_gumbel everywhere; Philox: flat logits, so
    every draw has log p = -log V, at temperature 0. Unknown: all, about half, five of 256."""
    g = torch.Generator().manual_seed(step)
    row = torch.zeros(v) if variant == "philox" else torch.randn(v, generator=g) * 4
    logits = row.expand(b, n, v).contiguous()
    ids = torch.randint(0, v, (b, n), generator=g)
    ids[0] = MASK_ID
    ids[1, torch.rand(n, generator=g) < 0.5] = MASK_ID
    ids[2, torch.randperm(n, generator=g)[:5]] = MASK_ID
    if variant == "philox":
        seeds = torch.arange(b) + 40
        noise, temp = (uniform(seeds, step, n, STREAM_SAMPLE), uniform(seeds, step, n, STREAM_GUMBEL)), 0.0
        args = (seeds, step, num_iter, temp)
    else:
        u_gumbel = torch.full((b, n), 0.61) if variant == "equal gumbel noise" else torch.rand(b, n, generator=g)
        noise, temp = (torch.full((b, n), 0.37), u_gumbel), 0.0 if variant == "temperature 0" else 4.5
        args = (*noise, step, num_iter, temp)
    unknown = ids == MASK_ID
    confidence = sample_categorical(logits, noise[0])[1] + choice_tau(step, num_iter, temp) * gumbel(noise[1])
    assert all(len(set(c[u].tolist())) == 1 for c, u in zip(confidence, unknown)), "the confidences must tie"
    return logits, ids, args


@pytest.mark.machine
@pytest.mark.parametrize("variant", ["temperature 0", "equal gumbel noise", "philox"])
@pytest.mark.parametrize("step", [0, 5, 10])
def test_tied_confidence_goes_to_the_lower_position(variant, step):
    """Exactly mask_len of the tied unknown positions are re-masked, the lowest positions (the
    reference's stable order), and the op equals the reference bit for bit."""
    logits, ids, args = tied_case(variant, step)
    if variant == "philox":
        got, want = decode_step(logits, ids, *args), decode_step_ref(logits, ids, *args)
    else:
        got = decode_step_with_noise(logits, ids, *args)
        want = decode_step_ref(logits, ids, None, *args[2:], noise=args[:2])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    unknown = ids == MASK_ID
    lengths = mask_lengths(unknown.sum(-1), torch.full((3,), 256), step, 12)
    assert 0 < lengths.min() and (lengths < unknown.sum(-1)).all()  # some tied positions stay
    for nxt, u, length in zip(got[0], unknown, lengths.tolist()):
        assert (nxt == MASK_ID).nonzero().flatten().tolist() == u.nonzero().flatten()[:length].tolist()


def _args(**change):
    args = dict(logits=torch.randn(2, 256, 1024), ids=torch.full((2, 256), MASK_ID), seeds=torch.tensor([1, 2]),
                step=0, num_iter=12, choice_temperature=4.5, num_initial_unknown=None)
    args.update(change)
    return args


@pytest.mark.parametrize("change,error,match", [
    (dict(logits=torch.randn(2, 256, 1024).double()), TypeError, "float32, float16 or bfloat16"),
    (dict(logits=torch.randn(2, 256)), ValueError, "batch, positions, classes"),
    (dict(logits=torch.randn(2, 1024, 256).transpose(1, 2)), ValueError, "contiguous along the classes"),
    (dict(logits=torch.randn(2, 256, 1025)), ValueError, "classes"),
    (dict(ids=torch.full((2, 256), MASK_ID, dtype=torch.int32)), TypeError, "ids"),
    (dict(ids=torch.full((2, 255), MASK_ID)), ValueError, "ids must have shape"),
    (dict(ids=torch.full((256, 2), MASK_ID).t()), ValueError, "contiguous"),
    (dict(seeds=torch.tensor([1, 2, 3])), ValueError, "seeds must have shape"),
    (dict(seeds=torch.tensor([1.0, 2.0])), TypeError, "seeds"),
    (dict(step=12), ValueError, "step < num_iter"),
    (dict(num_iter=0), ValueError, "num_iter"),
    (dict(choice_temperature=-1.0), ValueError, "choice_temperature"),
    (dict(choice_temperature=float("nan")), ValueError, "choice_temperature"),
    (dict(num_initial_unknown=torch.tensor([256])), ValueError, "num_initial_unknown"),
    # a meta tensor among CPU ones: the op dispatches to its fake implementation only
    (dict(seeds=torch.tensor([1, 2], device="meta")), ValueError, "seeds is on meta but logits are on cpu"),
    (dict(num_initial_unknown=torch.tensor([256, 256], device="meta")), ValueError,
     "num_initial_unknown is on meta but logits are on cpu"),
    (dict(logits=torch.randn(2, 256, 1024, device="meta")), ValueError, "ids is on cpu but logits are on meta"),
])
@pytest.mark.parametrize("path", ["op", "pytorch"])
def test_bad_input_raises_a_clear_error(change, error, match, path, monkeypatch):
    """From the op, and from the PyTorch path that stands in for it where it is not built."""
    with pytest.raises(error, match=match):
        _entry(path, monkeypatch)(**_args(**change))


def _entry(path, monkeypatch):
    """The extension op, or the PyTorch path that stands in for it ("pytorch": forced here)."""
    if path == "pytorch":
        monkeypatch.setattr(decode_step_module, "backend", lambda device_type: ("pytorch", "forced by the test"))
    return OP.decode_step if path == "op" else decode_step


def test_pytorch_path_checks_given_noise():
    logits, ids, _, u1, u2 = random_case(2, 256, 1024, torch.float32, 0.5, seed=5)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(decode_step_module, "backend", lambda device_type: ("pytorch", "forced by the test"))
        with pytest.raises(TypeError, match="u_sample must be torch.float32"):
            decode_step_with_noise(logits, ids, u1.double(), u2, 0, 12, 4.5)
        with pytest.raises(ValueError, match="u_gumbel must have shape"):
            decode_step_with_noise(logits, ids, u1, u2[:1], 0, 12, 4.5)
        assert torch.equal(decode_step_with_noise(logits, ids, u1, u2, 0, 12, 4.5)[0],
                           OP.decode_step_with_noise(logits, ids, u1, u2, 0, 12, 4.5, None, MASK_ID)[0])


def test_opcheck_and_compile():
    args = tuple(_args().values())
    torch.library.opcheck(OP.decode_step.default, args)
    logits, ids, _, u1, u2 = random_case(2, 256, 1024, torch.float32, 0.5, seed=4)
    torch.library.opcheck(OP.decode_step_with_noise.default, (logits, ids, u1, u2, 1, 12, 4.5, None))
    compiled = torch.compile(lambda x, i, s: decode_step(x, i, s, 1, 12, 4.5), backend="aot_eager", fullgraph=True)
    seeds = torch.tensor([3, 4])
    expected = decode_step(logits, ids, seeds, 1, 12, 4.5)
    assert all(torch.equal(a, b) for a, b in zip(compiled(logits, ids, seeds), expected))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile(arch, tmp_path):
    """The .cu files include no torch header, so nvcc compiles them without CUDA torch."""
    cmd = ["nvcc", "-std=c++17", "-O3", "--fmad=false", f"-arch={arch}", "-c", "csrc/decode_step_kernel.cu",
           "-o", str(tmp_path / "decode_step.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=__file__.rsplit("/tests/", 1)[0])
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- GPU
gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_is_bit_identical_to_cpu(dtype):
    assert backend("cuda")[0] == "cuda", backend("cuda")
    logits, ids, seeds, u1, u2 = random_case(64, 256, 1024, dtype, 0.5, seed=5)
    n0 = torch.randint(150, 257, (64,))
    for step in (0, 6, 11):
        cpu = decode_step(logits, ids, seeds, step, 12, 4.5, num_initial_unknown=n0)
        cuda = decode_step(logits.cuda(), ids.cuda(), seeds.cuda(), step, 12, 4.5, num_initial_unknown=n0.cuda())
        assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())
        cpu = decode_step_with_noise(logits, ids, u1, u2, step, 12, 4.5)
        cuda = decode_step_with_noise(logits.cuda(), ids.cuda(), u1.cuda(), u2.cuda(), step, 12, 4.5)
        assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())


@gpu
@pytest.mark.parametrize("path", ["op", "pytorch"])
def test_cpu_and_cuda_inputs_raise_a_clear_error(path, monkeypatch):
    assert backend("cuda")[0] == "cuda", backend("cuda")
    call = _entry(path, monkeypatch)
    with pytest.raises(ValueError, match="ids is on cuda:0 but logits are on cpu"):
        call(**_args(ids=torch.full((2, 256), MASK_ID, device="cuda")))
    with pytest.raises(ValueError, match="seeds is on cpu but logits are on cuda:0"):
        call(**_args(logits=torch.randn(2, 256, 1024, device="cuda"), ids=torch.full((2, 256), MASK_ID, device="cuda")))


@gpu
def test_cuda_graph_capture_and_replay():
    logits, ids, seeds, _, _ = [t.cuda() for t in random_case(16, 256, 1024, torch.bfloat16, 0.2, seed=6)]
    static_logits, static_ids = logits.clone(), ids.clone()
    graph, out = capture(lambda: decode_step(static_logits, static_ids, seeds, 3, 12, 4.5))
    for trial in range(3):
        new_logits = torch.randn_like(logits) * 3
        static_logits.copy_(new_logits)
        graph.replay()
        want = decode_step(new_logits, ids, seeds, 3, 12, 4.5)
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])


@gpu
def test_no_host_sync():
    logits, ids, seeds, _, _ = [t.cuda() for t in random_case(8, 256, 1024, torch.float32, 0.2, seed=7)]
    without_host_sync(lambda: decode_step(logits, ids, seeds, 0, 12, 4.5))


def test_benchmark_script_runs(tmp_path):
    root = __file__.rsplit("/tests/", 1)[0]
    proc = subprocess.run([sys.executable, "bench_decode_step.py", "--smoke"], cwd=f"{root}/benchmarks",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mage_fast op" in proc.stdout and "official step" in proc.stdout
