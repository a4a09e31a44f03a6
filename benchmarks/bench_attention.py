"""Fused attention (mage_fast.ops.attention) against every SDPA backend that runs, FlexAttention,
xformers and the official materialised fp32 attention, at MAGE's shapes in bf16: forward and
forward+backward ms, TFLOP/s (forward 4*B*H*N^2*d, forward+backward 3.5x that), of_bound: the
least time our kernels' work allows over the measured time (mage_fast.roofline.of_bound of
mage_fast.bench.flops.attention_work: the tensor-core FLOPs they execute, head dim and N padded and
the backward's recomputation counted, the exp2 count and the least HBM bytes, each at the device's
peak; docs/kernels.md#attention-roofline; null where the device has no known roofline),
and our speed-up over the fastest SDPA backend (speedup, with that backend as baseline) and over the
official attention (vs_official): their ms / our ms, same run and device; above 1 means ours is
faster. err: each forward output's relative error against an fp32 reference.

    python benchmarks/bench_attention.py [--batch 64 256]   # on a GPU; writes benchmarks/results/
    python benchmarks/bench_attention.py --smoke            # CPU, tiny shapes: proves the script runs
"""
import torch

from common import bench_ms, device_record, finish, setup
from mage_fast.bench.flops import attention_work
from mage_fast.roofline import of_bound

# (workload, heads, tokens, head dim): MAGE-B encoder 12 x 64, decoder 16 x 48; MAGE-L 16 x 64.
# Training encoders see the 129 kept tokens, decoders and generation all 257.
SHAPES = [("B-enc-train", 12, 129, 64), ("B-enc-gen", 12, 257, 64), ("B-dec", 16, 257, 48),
          ("B-dec-129", 16, 129, 48), ("L-enc-train", 16, 129, 64), ("L-enc-gen/dec", 16, 257, 64)]
SMOKE_SHAPES = [("smoke", 2, 33, 48)]
COLUMNS = ["workload", "B", "H", "N", "d", "mode", "impl", "ms", "tflops", "of_bound", "err", "baseline",
           "speedup", "vs_official", "note"]


def implementations(smoke):
    """name -> make(q, k, v) -> (inputs, fn): fn(*inputs) gives [B, H, N, d] (a view is fine).
    SDPA backends are pinned one at a time."""
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    from mage_fast.ops.attention import attention, attention_qkv
    from mage_fast.reference.layers import attention_official

    def sdpa(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return run

    def ours_qkv(q, k, v):
        # What a transformer block hands over: the fused qkv Linear output, and [B, N, D] back
        # (viewed as [B, H, N, d] for the comparison: no copy).
        b, h, n, d = q.shape
        qkv = torch.cat([t.transpose(1, 2).reshape(b, n, h * d) for t in (q, k, v)], dim=-1)
        return [qkv], lambda x: attention_qkv(x, h).unflatten(-1, (h, d)).transpose(1, 2)

    def unpacked(fn):
        return lambda q, k, v: ([q, k, v], fn)

    def official(q, k, v):
        # As in training: scores in fp32 (autocast off inside), probs @ v under bf16 autocast.
        with torch.autocast(q.device.type, dtype=torch.bfloat16, enabled=q.dtype == torch.bfloat16):
            return attention_official(q, k, v, q.shape[-1] ** -0.5, nn.Identity())

    impls = {"mage_fast": unpacked(attention), "mage_fast qkv": ours_qkv}
    impls.update({f"sdpa-{b.name.lower()}": unpacked(sdpa(b)) for b in (
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)})
    # Compiling FlexAttention on CPU takes minutes: the smoke run uses it eagerly. On a GPU it is
    # compiled once per shape and mode (12 here): past dynamo's default limit of 8 recompiles it
    # would silently run eagerly, so the limit is raised.
    torch._dynamo.config.recompile_limit = 64
    impls["flex"] = unpacked(flex_attention if smoke else torch.compile(flex_attention, dynamic=False))
    try:
        import xformers.ops as xops
        impls["xformers"] = unpacked(lambda q, k, v: xops.memory_efficient_attention(
            *(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2))
    except Exception as e:  # not installed, or built for another torch or CUDA: a row says so
        impls["xformers"] = e
    impls["official-fp32"] = unpacked(official)
    return impls


def measure(make, q, k, v, do, mode):
    """(ms dict, forward output) in `mode`: the ms of the forward, or of forward+backward."""
    inputs, fn = make(q, k, v)
    inputs = [t.detach().requires_grad_(mode == "fwd+bwd") for t in inputs]
    run = (lambda: fn(*inputs)) if mode == "fwd" else (lambda: torch.autograd.grad(fn(*inputs), inputs, do))
    out = fn(*inputs)
    run()  # compiles and autotunes outside the timing
    return bench_ms(run), out


def bench_shape(impls, workload, b, h, n, d, dtype, device, record):
    from mage_fast.ops.attention import attention_ref
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, d, generator=g, device=device).to(dtype) for _ in range(4))
    reference = attention_ref(q.float(), k.float(), v.float())
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        work = attention_work(b, h, n, d, backward=mode == "fwd+bwd")
        flop = work["flop"]
        group = []
        for name, make in impls.items():
            row = dict(workload=workload, B=b, H=h, N=n, d=d, mode=mode, impl=name)
            if isinstance(make, Exception):
                row["note"] = f"unavailable: {make}"
            else:
                try:
                    timing, out = measure(make, q, k, v, do, mode)
                    tflops = flop / (timing["ms"] * 1e-3) / 1e12
                    row.update(timing, tflops=tflops, of_bound=of_bound(record["roofline"], work, timing["ms"]),
                               err=(out.float() - reference).norm().item() / reference.norm().item())
                except Exception as e:  # a backend without a kernel for this shape, or failing to compile
                    row["note"] = f"refused: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
            group.append(row)
        ms = {r["impl"]: r["ms"] for r in group if "ms" in r}
        best_sdpa = min((name for name in ms if name.startswith("sdpa-")), key=ms.get, default=None)
        for r in group:
            if r["impl"].startswith("mage_fast") and "ms" in r:
                if best_sdpa:
                    r["baseline"], r["speedup"] = best_sdpa, ms[best_sdpa] / r["ms"]
                r["vs_official"] = ms["official-fp32"] / r["ms"] if "official-fp32" in ms else None
        rows += group
    return rows


def main():
    args = setup(__doc__, "attention", lambda p: p.add_argument(
        "--batch", type=int, nargs="+", default=[64], help="batch sizes (default: 64)"))
    cuda = torch.cuda.is_available()
    from mage_fast.ops.attention import backend
    device = "cuda" if cuda else "cpu"
    # bf16 is what MAGE trains in; the interpreter miscomputes bf16, so the smoke run uses fp32.
    dtype = torch.bfloat16 if cuda else torch.float32
    record = device_record()
    print(f"{record['device']}: attention runs as {backend(device)}")
    impls = implementations(args.smoke)
    rows = []
    for b in ([1] if args.smoke else args.batch):
        for workload, h, n, d in (SMOKE_SHAPES if args.smoke else SHAPES):
            rows += bench_shape(impls, workload, b, h, n, d, dtype, device, record)
    finish("attention", rows, COLUMNS, args, record)


if __name__ == "__main__":
    main()
